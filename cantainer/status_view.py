"""The status view: the document `status --json` prints, as plain text tables (output.table).

Names, addresses and CIDRs are never cut: only the columns marked shrinkable (agent, bundle,
overlay entries, command) give way, ellipsised; if a table still does not fit the width, its rows
wrap into blocks ("name", then "field value" pairs). Without a width (piped output) nothing is
limited. Values from hosts are shown as they are. No rich: 1000 containers render in milliseconds,
and the common CLI path stays light (`status --watch` shows these lines in rich's live display).
"""
from __future__ import annotations

import time

from cantainer.cli.output import age, state_text, table


def _ago(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return "-"
    seconds = max(0.0, now - timestamp)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{age(timestamp, now)} ago"


def _overlay(summary: dict | None) -> str:
    """programmed/expected FDB+neighbour entries, and pending changes while there are any."""
    if not summary:
        return "-"
    text = f"{summary['programmed']}/{summary['expected']}"
    healthy = summary["programmed"] == summary["expected"] and summary["pending"] == 0
    return text if healthy else f"{text} ({summary['pending']} pending)"


def _flow(parts: list[str], width: int | None) -> list[str]:
    """Parts three spaces apart, on as few lines as *width* allows (never cut)."""
    lines = [parts[0]]
    for part in parts[1:]:
        if width is not None and len(lines[-1]) + 3 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] += "   " + part
    return lines


def _section(title: str, header: list[str], rows: list[list[str]], shrink: tuple[str, ...], width: int | None,
             empty: str = "") -> list[str]:
    if not rows and empty:
        return [title, f"  {empty}"]
    return [title, *table(header, rows, shrink, width)]


def render_status(doc: dict, width: int | None = None, now: float | None = None) -> list[str]:
    """The status view's lines for a terminal *width* columns wide (None: no limit, e.g. piped)."""
    now = time.time() if now is None else now
    up = sum(1 for n in doc["nodes"] if n.get("state") == "up")
    header = _flow([f"cluster {doc['cluster']}", f"leader {doc.get('leader') or '—'}", f"term {doc.get('term', '—')}",
                    f"commit index {doc.get('commit_index', '—')}", f"nodes up {up}/{len(doc['nodes'])}",
                    f"(answered by {doc.get('answered_by') or '—'})"], width)
    nodes = [[node["name"], node.get("address", ""), node.get("role", "?"), node.get("state", "?"),
              node.get("version") or "-", node.get("bundle") or "-", _ago(node.get("last_seen"), now),
              _overlay(node.get("overlay"))] for node in doc["nodes"]]
    networks = [[net.get("name", ""), net.get("cidr", ""), str(net.get("vni", "")),
                 ", ".join(net.get("hosts", [])) or "-", str(net.get("containers", ""))]
                for net in doc.get("networks", [])]
    containers = [[ctr.get("name", ""), ctr.get("host", ""), ctr.get("network", ""), ctr.get("ip", ""),
                   state_text(ctr, now), " ".join(ctr.get("command", [])) or "-"] for ctr in doc.get("containers", [])]
    volumes = [[vol.get("name", ""), vol.get("host", "") + (" (down)" if vol.get("host_down") else ""),
                ", ".join(vol.get("containers", [])) or "-"] for vol in doc.get("volumes", [])]
    return [
        *header, "",
        *_section("NODES", ["NAME", "ADDRESS", "ROLE", "STATE", "AGENT", "BUNDLE", "LAST SEEN", "OVERLAY ENTRIES"],
                  nodes, ("AGENT", "BUNDLE", "OVERLAY ENTRIES"), width), "",
        *_section("NETWORKS", ["NAME", "CIDR", "VNI", "HOSTS", "CONTAINERS"], networks, (), width,
                  "no networks yet"), "",
        *_section("CONTAINERS", ["NAME", "HOST", "NETWORK", "IP", "STATE", "COMMAND"], containers, ("COMMAND",),
                  width, "no containers yet"),
        *(["", *_section("VOLUMES", ["NAME", "HOST", "CONTAINERS"], volumes, ("CONTAINERS",), width)]
          if volumes else []),
    ]
