"""How the CLI shows things: tables that never cut key fields (and the time helpers of timefmt.py).

Tables: key columns (names, addresses, CIDRs) are never cut; columns marked shrinkable (a command)
give way first, ellipsised; when even that does not fit, each row wraps into a block of
"FIELD value" lines. Piped output (no terminal) is not width-limited at all. A cell shows control
characters escaped (``\n``, ``\x1b``): a command's newline never breaks a row, and what a
container was started with never reaches the terminal as escape sequences.
"""
from __future__ import annotations

import shutil
import sys

from cantainer.timefmt import age, parse_since, rfc3339

__all__ = ["age", "parse_since", "rfc3339", "table", "print_table", "json_times", "print_json", "terminal_width",
           "state_text", "ports_text"]

GAP = 2
MIN_SHRUNK = 12  # a shrinkable column keeps at least this much (or its header)
TIME_KEYS = frozenset({"created_at", "started_at", "finished_at", "unknown_since", "last_seen", "joined_at",
                       "reported_at", "heartbeat", "updated_at", "since", "at", "exited_at"})


def terminal_width() -> int | None:
    """The terminal's width, or None when stdout is not a terminal (pipes are not width-limited)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def table(header: list[str], rows: list[list], shrink: tuple[str, ...] = (), width: int | None = None) -> list[str]:
    """Aligned columns. Within *width*: *shrink* columns give way (ellipsised); if the rest still
    does not fit, each row becomes a block ("NAME" value, then "FIELD value" pairs flowed to the
    width). Key fields are never cut. *width* None: no limit."""
    cells = [[printable(str(value)) for value in row] for row in rows]
    widths = [max([len(header[i])] + [len(row[i]) for row in cells]) for i in range(len(header))]
    excess = sum(widths) + GAP * (len(header) - 1) - (width or 0)
    if width is not None and excess > 0:
        for i, name in enumerate(header):
            if name in shrink:
                give = min(excess, max(0, widths[i] - max(MIN_SHRUNK, len(name))))
                widths[i] -= give
                excess -= give
        if excess > 0:
            return _blocks(header, cells, width, shrink)
    lines = []
    for row in [header] + cells:
        fitted = [_ellipsis(value, w) for value, w in zip(row, widths, strict=True)]
        lines.append((" " * GAP).join(value.ljust(w) for value, w in zip(fitted, widths, strict=True)).rstrip())
    return lines


def printable(text: str) -> str:
    """*text* with each control character (C0, DEL, C1) written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _ellipsis(value: str, width: int) -> str:
    return value if len(value) <= width else value[:max(0, width - 1)] + "…"


def _blocks(header: list[str], cells: list[list[str]], width: int, shrink: tuple[str, ...]) -> list[str]:
    """Each row: its first field alone, then "FIELD value" pairs indented, flowed to *width*; a
    shrinkable field longer than a line is ellipsised, any other is shown whole."""
    lines = []
    for row in cells:
        lines.append(row[0])
        line = ""
        for name, value in zip(header[1:], row[1:], strict=True):
            if name in shrink:
                value = _ellipsis(value, max(MIN_SHRUNK, width - GAP - len(name) - 1))
            field = f"{name} {value}"
            if line and len(line) + GAP + len(field) > width:
                lines.append(line)
                line = ""
            line = f"{line}{' ' * GAP}{field}" if line else f"  {field}"
        if line:
            lines.append(line)
    return lines


def print_table(header: list[str], rows: list[list], shrink: tuple[str, ...] = ()) -> None:
    for line in table(header, rows, shrink, terminal_width()):
        print(line)


def json_times(value):
    """A copy of a JSON document with its epoch times (TIME_KEYS) as RFC 3339 strings."""
    if isinstance(value, dict):
        return {key: rfc3339(item) if key in TIME_KEYS and isinstance(item, (int, float)) and
                not isinstance(item, bool) else json_times(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_times(item) for item in value]
    return value


def print_json(document) -> None:
    import json

    print(json.dumps(json_times(document), indent=2, sort_keys=True))


def state_text(container: dict, now: float | None = None) -> str:
    """A container's STATE in words: the state, the exit code, its health, why (an OOM kill, `down`, its
    host down for how long), and for a service task being replaced, that it is retiring."""
    state, code, reason = container["state"], container.get("exit_code"), container.get("reason")
    if state == "unknown":
        return f"unknown (host {container['host']} down {age(container.get('unknown_since'), now)})"
    text = state if code is None else f"{state} ({code})"
    health = container.get("health")
    if health and state == "running":
        text = f"{text} ({health['status']})"
    if container.get("retiring"):
        text = f"{text}, retiring"
    return f"{text}, {reason}" if reason else text


def ports_text(container: dict) -> str:
    """docker ps's PORTS: published ports (0.0.0.0:8080->80/tcp), then exposed ones not published, or -."""
    from cantainer_agent.cluster.ports import format_port

    published = container.get("publish") or []
    shown = [format_port(port) for port in published]
    taken = {f"{port['container_port']}/{port['protocol']}" for port in published}
    shown += [port for port in container.get("ports") or [] if port not in taken]
    return ", ".join(shown) or "-"
