"""Benchmarks side by side with their anchors.

    sudo .venv/bin/python -m bench [--quick] [--only start,raft,up,overlay,scale,image,service] [--out …]

Prints a rich table and writes the rows to bench/results.json (see bench/results.py for the row
format and the ratio rule) and, when `up` rows exist, a PNG of `up` time against host count
(bench/up_vs_hosts.png). Each group is measured in this run, its anchor beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "agent")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench.results import normalize, print_table, row, write_json  # noqa: E402

GROUPS = ("start", "raft", "up", "overlay", "network", "scale", "image", "service")


# -- raft: reuses bench/raft_bench.py (writes/s) and bench/raft_failover.py (failover) ---------------
def raft_rows(quick: bool, notes: list[str]) -> list[dict]:
    from bench import raft_bench

    writes, threads, runs = (300, 8, 1) if quick else (2000, 8, 3)
    ours, base = [], []
    for _ in range(runs):  # alternate: the machine's load drifts
        ours.append(raft_bench.writes_per_second(False, writes, threads))
        base.append(raft_bench.writes_per_second(True, writes, threads))
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    anchor = "PySyncObj FileJournal+TCPTransport (no fsync)"
    rows = [
        row(f"raft committed writes/s, sequential ({writes} writes, median of {runs})",
            med(ours, "sequential"), "writes/s", anchor, med(base, "sequential")),
        row(f"raft committed writes/s, {threads} threads ({writes} writes, median of {runs})",
            med(ours, "concurrent"), "writes/s", anchor, med(base, "concurrent")),
    ]
    if os.geteuid() != 0:
        notes.append("raft failover needs root (private network namespace): skipped")
        return rows
    rows.extend(_raft_failover(3 if quick else 10, 3 if quick else 5, notes))
    return rows


def _raft_failover(rounds: int, crash_rounds: int, notes: list[str]) -> list[dict]:
    from bench.raft_failover import Cluster, Netns, crash_round, failover_round

    netns = Netns()
    root = Path(tempfile.mkdtemp(prefix="cantainer-bench-failover-"))
    try:
        cluster = Cluster(root, 3, base=60, netns=netns)
        try:
            cluster.start()
            elected, written = [], []
            for k in range(rounds):
                e, w = failover_round(cluster, k)
                elected.append(e)
                written.append(w)
            crashed = [crash_round(cluster, netns, k) for k in range(crash_rounds)]
        finally:
            cluster.cleanup()
    finally:
        netns.delete()
        shutil.rmtree(root, ignore_errors=True)
    # The anchor: the same failover noticed only by the election timeout (the leader's host
    # crashed: no FIN/RST reaches anyone), measured on the same cluster in the same run.
    crash_elected = 1000 * statistics.median(e for e, _ in crashed)
    crash_written = 1000 * statistics.median(w for _, w in crashed)
    anchor = f"the leader's host crashing instead (election timeout; n={crash_rounds})"
    return [
        row(f"raft failover after leader SIGKILL: new leader p50 (n={rounds})", 1000 * statistics.median(elected),
            "ms", anchor, crash_elected),
        row(f"raft failover after leader SIGKILL: first acked write p50 (n={rounds})",
            1000 * statistics.median(written), "ms", anchor, crash_written),
        row(f"raft failover after the leader's host crashed: new leader p50 (n={crash_rounds})", crash_elected, "ms"),
    ]


# -- up vs Ansible (bench/up_vs_ansible.py, written separately) ------------------------------------
def up_rows(quick: bool, notes: list[str]) -> list[dict]:
    try:
        from bench import up_vs_ansible
    except ImportError as exc:
        notes.append(f"bench/up_vs_ansible.py not importable ({exc}): no `up` rows")
        return []
    return list(up_vs_ansible.measure(quick))


def start_rows(quick: bool, notes: list[str]) -> list[dict]:
    from bench import container_start

    return container_start.measure(quick, notes=notes)


def overlay_rows(quick: bool, notes: list[str]) -> list[dict]:
    if os.geteuid() != 0:
        notes.append("overlay needs root (the lab): skipped")
        return []
    from bench import overlay_bench

    return overlay_bench.measure(quick)


def network_rows(quick: bool, notes: list[str]) -> list[dict]:
    if os.geteuid() != 0:
        notes.append("network needs root (the lab): skipped")
        return []
    from bench import network_bench

    return network_bench.measure(quick)


def scale_rows(quick: bool, notes: list[str]) -> list[dict]:
    if os.geteuid() != 0:
        notes.append("scale needs root (the lab): skipped")
        return []
    from bench import scale_bench

    return scale_bench.measure(quick)


def image_rows(quick: bool, notes: list[str]) -> list[dict]:
    if os.geteuid() != 0:
        notes.append("image needs root (the lab): skipped")
        return []
    from bench import image_bench

    return image_bench.measure(quick)


def service_rows(quick: bool, notes: list[str]) -> list[dict]:
    if os.geteuid() != 0:
        notes.append("service needs root (the lab): skipped")
        return []
    from bench import service_bench

    return service_bench.measure(quick)


MEASURE = {"start": start_rows, "raft": raft_rows, "up": up_rows, "overlay": overlay_rows, "network": network_rows,
           "scale": scale_rows, "image": image_rows, "service": service_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and hosts (a few minutes)")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)}")
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    ap.add_argument("--plot", default=str(REPO / "bench" / "up_vs_hosts.png"))
    args = ap.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in MEASURE]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    if os.geteuid() != 0:
        print("note: not root — container start and raft failover are skipped (run with sudo)", file=sys.stderr)
    started = time.time()
    rows: list[dict] = []
    notes: list[str] = []
    failed = False
    for group in groups:
        t0 = time.monotonic()
        try:
            rows.extend(normalize(MEASURE[group](args.quick, notes)))
        except Exception as exc:  # noqa: BLE001 - one broken group must not lose the others' rows
            failed = True
            traceback.print_exc()
            notes.append(f"group {group} failed: {type(exc).__name__}: {exc}")
        notes.append(f"{group}: {time.monotonic() - t0:.0f} s")
        write_json(rows, args.out)  # keep what we have so far
    from bench.plot import plot_up

    notes.append(plot_up(rows, args.plot))
    notes.append(f"results written to {args.out}")
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(started))
    title = (f"cantainer benchmarks{' (quick)' if args.quick else ''} — {when} UTC, {platform.node()}, "
             f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print_table(rows, title, notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
