"""Rich rendering of a cluster status document (the same document `status --json` prints).

Names, addresses and CIDRs are never cut: only the columns marked shrinkable (agent, bundle,
overlay entries, command) give way, ellipsised; if a table still does not fit the width, its rows
wrap into blocks ("name", then "field value" pairs). Without a width (piped output) nothing is
limited. Values from hosts are rendered as text, never as markup.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cantainer.cli.output import GAP, age, state_text

STATE_STYLE = {"up": "green", "down": "red", "not-member": "yellow", "running": "green", "unknown": "red"}
ROLE_STYLE = {"leader": "bold magenta", "follower": "cyan", "standby": "blue", "candidate": "yellow"}
MIN_SHRUNK = 8


@dataclass(frozen=True)
class Column:
    name: str
    shrink: bool = False  # may be cut (ellipsised) to fit; every other column is shown whole


def _ago(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return "-"
    seconds = max(0.0, now - timestamp)
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{age(timestamp, now)} ago"


def _overlay(summary: dict | None) -> Text:
    """programmed/expected FDB+neighbour entries; red while they differ or changes are pending."""
    if not summary:
        return Text("-")
    text = f"{summary['programmed']}/{summary['expected']}"
    healthy = summary["programmed"] == summary["expected"] and summary["pending"] == 0
    return Text(text, style="green") if healthy else Text(f"{text} ({summary['pending']} pending)", style="red")


def _styled(value: str, styles: dict[str, str]) -> Text:
    return Text(value, style=styles.get(value.split(" ", 1)[0].rstrip(","), ""))


def _table(title: str, columns: list[Column], rows: list[list[Text]], width: int | None, caption: str = ""):
    """A rich table that fits *width* without cutting key columns, or rows as blocks if it cannot."""
    natural = [max([len(c.name)] + [len(row[i].plain) for row in rows]) for i, c in enumerate(columns)]
    limits = list(natural)
    excess = sum(natural) + 3 * len(columns) + 1 - (width or 0)  # padding 1+1 and a border per column
    if width is not None and excess > 0:
        for i, column in enumerate(columns):
            if column.shrink:
                give = min(excess, max(0, natural[i] - max(MIN_SHRUNK, len(column.name))))
                limits[i] -= give
                excess -= give
        if excess > 0:
            return _blocks(title, columns, rows, width, caption)
    table = Table(title=title, expand=width is not None, caption=caption or None)
    for column, natural_width, limit in zip(columns, natural, limits, strict=True):
        if column.shrink:
            table.add_column(column.name, no_wrap=True, overflow="ellipsis", max_width=limit)
        else:
            table.add_column(column.name, no_wrap=True, min_width=natural_width)
    for row in rows:
        table.add_row(*row)
    return table


def _blocks(title: str, columns: list[Column], rows: list[list[Text]], width: int, caption: str) -> Group:
    """Too narrow for a table: each row is its first field, then "field value" pairs flowed to *width*."""
    lines: list[Text] = [Text(title, style="bold")]
    for row in rows:
        lines.append(Text(row[0].plain, style="bold"))
        line = Text("  ")
        for column, value in zip(columns[1:], row[1:], strict=True):
            room = width - 2 - len(column.name) - 1
            if column.shrink and len(value.plain) > room:  # it may be cut: keep it on one line
                value = Text(value.plain[:max(MIN_SHRUNK, room) - 1] + "…", style=value.style)
            field = Text.assemble((column.name, "dim"), " ", value)
            if len(line.plain) > 2 and len(line.plain) + GAP + len(field.plain) > width:
                lines.append(line)
                line = Text("  ")
            if len(line.plain) > 2:
                line.append(" " * GAP)
            line.append_text(field)
        if len(line.plain) > 2:
            lines.append(line)
    if caption:
        lines.append(Text(caption, style="dim"))
    return Group(*lines)


def render_status(doc: dict, width: int | None = None, now: float | None = None) -> Group:
    """The status view for a console *width* columns wide (None: no limit, e.g. piped)."""
    now = time.time() if now is None else now
    up = sum(1 for n in doc["nodes"] if n.get("state") == "up")
    header = Text.assemble(
        "cluster ", (str(doc["cluster"]), "bold"), "   leader ", (str(doc.get("leader") or "—"), "bold magenta"),
        f"   term {doc.get('term', '—')}   commit index {doc.get('commit_index', '—')}   nodes up {up}/"
        f"{len(doc['nodes'])}   (answered by {doc.get('answered_by') or '—'})")
    node_columns = [Column("name"), Column("address"), Column("role"), Column("state"), Column("agent", True),
                    Column("bundle", True), Column("last seen"), Column("overlay entries", True)]
    node_rows = []
    for node in doc["nodes"]:
        state, role = node.get("state", "?"), node.get("role", "?")
        # Text, not markup: values come from hosts, and a role without a style once rendered as
        # "[]none[/]" — a MarkupError that crashed `status` exactly when a host had not joined yet.
        node_rows.append([Text(node["name"]), Text(node.get("address", "")), Text(role, style=ROLE_STYLE.get(role, "")),
                          Text(state, style=STATE_STYLE.get(state, "")), Text(node.get("version") or "-"),
                          Text(node.get("bundle") or "-"), Text(_ago(node.get("last_seen"), now)),
                          _overlay(node.get("overlay"))])
    network_columns = [Column("cidr"), Column("vni"), Column("hosts"), Column("containers")]
    network_rows = [[Text(net.get("cidr", "")), Text(str(net.get("vni", ""))), Text(", ".join(net.get("hosts", []))),
                     Text(str(net.get("containers", "")))] for net in doc.get("networks", [])]
    container_columns = [Column("name"), Column("host"), Column("network"), Column("ip"), Column("state"),
                         Column("command", True)]
    container_rows = [[Text(ctr.get("name", "")), Text(ctr.get("host", "")), Text(ctr.get("network", "")),
                       Text(ctr.get("ip", "")), _styled(state_text(ctr, now), STATE_STYLE),
                       Text(" ".join(ctr.get("command", [])))] for ctr in doc.get("containers", [])]
    return Group(
        Panel(header, title="cantainer status", expand=width is not None),
        _table("nodes", node_columns, node_rows, width),
        _table("networks", network_columns, network_rows, width, "" if network_rows else "no networks yet"),
        _table("containers", container_columns, container_rows, width,
               "" if container_rows else "no containers yet"),
    )
