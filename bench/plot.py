"""PNG of `up` time against host count (ours and the anchor), from result rows.

    .venv/bin/python -m bench.plot [bench/results.json] [bench/up_vs_hosts.png]

matplotlib comes with the ``bench`` extra (``pip install -e '.[bench]'``); without it the plot is
skipped with a note.
"""

from __future__ import annotations

import json
import os
import re
import sys

try:
    from bench.results import up_points
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.results import up_points


def plot_up(rows: list[dict], path: str) -> str:
    """Write the plot; return a sentence saying what happened (for the run's notes)."""
    points = up_points(rows)
    if not points:
        return "no `up` rows with a host count: no plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): plot skipped"
    hosts = [p[0] for p in points]
    unit = points[0][3]
    anchor = next((p[4] for p in points if p[4]), "anchor")
    anchor = re.sub(r"\s*\d+\s*hosts?\b", "", anchor).strip() or "anchor"  # one label for every host count
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(hosts, [p[1] for p in points], "o-", label="cantainer up")
    with_anchor = [p for p in points if p[2] is not None]
    if with_anchor:
        ax.plot([p[0] for p in with_anchor], [p[2] for p in with_anchor], "s--", label=anchor)
    ax.set_xlabel("hosts")
    ax.set_ylabel(f"time ({unit})")
    ax.set_title("`up` (cold) against host count")
    ax.set_xticks(hosts)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot written to {path}"


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results.json")
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "up_vs_hosts.png")
    with open(src, encoding="utf-8") as handle:
        print(plot_up(json.load(handle), dst))
