"""Rows of a benchmark run: building them, the rich table, bench/results.json and the `up` plot.

A row is ``{"name", "value", "unit", "anchor", "anchor_value", "ratio"}``. For times the ratio is
``anchor_value / value`` (> 1: we are faster); for throughput (units ending in ``/s``) it is
``value / anchor_value`` (> 1: we do more). Rows without an anchor have ``ratio`` None.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Iterable

KEYS = ("name", "value", "unit", "anchor", "anchor_value", "ratio")


def is_throughput(unit: str) -> bool:
    return str(unit).endswith("/s")


def ratio(value, unit: str, anchor_value) -> float | None:
    if value is None or anchor_value is None or not value or not anchor_value:
        return None
    return anchor_value / value if not is_throughput(unit) else value / anchor_value


def row(name: str, value, unit: str, anchor: str | None = None, anchor_value=None) -> dict:
    value = None if value is None else round(float(value), 3)
    anchor_value = None if anchor_value is None else round(float(anchor_value), 3)
    r = ratio(value, unit, anchor_value)
    return {"name": name, "value": value, "unit": unit, "anchor": anchor, "anchor_value": anchor_value,
            "ratio": None if r is None else round(r, 3)}


def normalize(rows: Iterable[dict]) -> list[dict]:
    """Rows from other modules: make sure every key exists and the ratio follows the rule above."""
    out = []
    for r in rows:
        r = dict(r)
        for key in KEYS:
            r.setdefault(key, None)
        if r["ratio"] is None:
            computed = ratio(r["value"], r["unit"] or "", r["anchor_value"])
            r["ratio"] = None if computed is None else round(computed, 3)
        out.append(r)
    return out


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the maximum)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def write_json(rows: list[dict], path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=1)
        handle.write("\n")
    os.replace(tmp, path)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(rows: list[dict], title: str, notes: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("benchmark")
    table.add_column("ours", justify="right")
    table.add_column("unit")
    table.add_column("anchor")
    table.add_column("anchor value", justify="right")
    table.add_column("ratio", justify="right")
    for r in rows:
        rt = r.get("ratio")
        shown = "-" if rt is None else (f"[green]{rt:.2f}[/]" if rt >= 1 else f"[red]{rt:.2f}[/]")
        table.add_row(r["name"], _fmt(r["value"]), r["unit"] or "", r["anchor"] or "-", _fmt(r["anchor_value"]), shown)
    import sys

    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    console.print("ratio > 1: we are faster (times: anchor/ours) or do more (throughput: ours/anchor)")
    for note in notes or []:
        console.print(f"note: {note}")


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (for the README's Performance section)."""
    lines = ["| benchmark | ours | anchor | ratio |", "|---|---|---|---|"]
    for r in rows:
        unit = r["unit"] or ""
        anchor = f"{r['anchor']}: {_fmt(r['anchor_value'])} {unit}" if r.get("anchor") else "–"
        ratio = "–" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['name']} | {_fmt(r['value'])} {unit} | {anchor} | {ratio} |")
    return "\n".join(lines)


_HOSTS = re.compile(r"(\d+)\s*hosts?\b")
_RERUN = re.compile(r"re-?run|nothing|no-?op|again|warm", re.I)


def up_points(rows: list[dict]) -> list[tuple[int, float, float | None, str, str | None]]:
    """(hosts, ours, anchor value, unit, anchor) of the cold `up` rows that name a host count."""
    points = []
    for r in rows:
        name = r.get("name") or ""
        m = _HOSTS.search(name)
        if not re.search(r"\bup\b", name) or not m or _RERUN.search(name) or r.get("value") is None:
            continue
        points.append((int(m.group(1)), r["value"], r.get("anchor_value"), r.get("unit") or "", r.get("anchor")))
    return sorted(points)


if __name__ == "__main__":  # python -m bench.results [results.json ...]: a Markdown table of saved runs
    import sys

    merged = [r for path in (sys.argv[1:] or ["bench/results.json"]) for r in json.load(open(path, encoding="utf-8"))]
    print(markdown(normalize(merged)))

