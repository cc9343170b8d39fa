"""Rich rendering of a cluster status document (the same document `status --json` prints)."""
from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"up": "green", "down": "red", "not-member": "yellow"}
ROLE_STYLE = {"leader": "bold magenta", "follower": "cyan", "standby": "blue", "candidate": "yellow"}


def _ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _overlay(summary: dict | None) -> Text:
    """programmed/expected FDB+neighbour entries; red while they differ or changes are pending."""
    if not summary:
        return Text("-")
    text = f"{summary['programmed']}/{summary['expected']}"
    healthy = summary["programmed"] == summary["expected"] and summary["pending"] == 0
    return Text(text, style="green") if healthy else Text(f"{text} ({summary['pending']} pending)", style="red")


def render_status(doc: dict) -> Group:
    up = sum(1 for n in doc["nodes"] if n.get("state") == "up")
    header = (f"cluster [bold]{doc['cluster']}[/]   leader [bold magenta]{doc.get('leader') or '—'}[/]   "
              f"term {doc.get('term', '—')}   commit index {doc.get('commit_index', '—')}   "
              f"nodes up {up}/{len(doc['nodes'])}   (answered by {doc.get('answered_by') or '—'})")
    nodes = Table(title="nodes", expand=True)
    for column in ("name", "address", "role", "state", "agent", "bundle", "last seen", "overlay entries"):
        nodes.add_column(column)
    for node in doc["nodes"]:
        state, role = node.get("state", "?"), node.get("role", "?")
        # Text, not markup: values come from hosts, and a role without a style once rendered as
        # "[]none[/]" — a MarkupError that crashed `status` exactly when a host had not joined yet.
        nodes.add_row(node["name"], node.get("address", ""), Text(role, style=ROLE_STYLE.get(role, "")),
                      Text(state, style=STATE_STYLE.get(state, "")), node.get("version") or "-",
                      (node.get("bundle") or "-")[:12], _ago(node.get("last_seen")), _overlay(node.get("overlay")))
    parts = [Panel(header, title="cantainer status", expand=True), nodes]
    networks = Table(title="networks", expand=True)
    for column in ("cidr", "vni", "hosts", "containers"):
        networks.add_column(column)
    for net in doc.get("networks", []):
        networks.add_row(
            net.get("cidr", ""),
            str(net.get("vni", "")),
            ", ".join(net.get("hosts", [])),
            str(net.get("containers", "")),
        )
    containers = Table(title="containers", expand=True)
    for column in ("name", "host", "network", "ip", "state", "command"):
        containers.add_column(column)
    for ctr in doc.get("containers", []):
        containers.add_row(ctr.get("name", ""), ctr.get("host", ""), ctr.get("network", ""), ctr.get("ip", ""),
                           ctr.get("state", ""), " ".join(ctr.get("command", [])))
    if not doc.get("networks"):
        networks.caption = "no networks yet"
    if not doc.get("containers"):
        containers.caption = "no containers yet"
    parts += [networks, containers]
    return Group(*parts)
