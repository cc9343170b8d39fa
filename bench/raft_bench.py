"""Raft write throughput of the agent's RaftNode: 3 members in 3 processes on 127.0.0.1.

    .venv/bin/python bench/raft_bench.py [--baseline] [--writes 2000] [--threads 8]

Measures sync writes/s through the leader (each call returns once the entry is committed and
applied), sequential (one caller) and concurrent (``--threads`` callers). ``--baseline`` runs
the same RaftNode with PySyncObj's own FileJournal and TCPTransport (no fsync, no socket
tuning): the figure before the durable journal. Not a test: numbers depend on the disk (fdatasync) and CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent"))

SECRET = b"bench-secret-0123456789abcdef"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _heartbeat(node) -> None:
    node.apply("heartbeat", {"name": "bench", "ts": time.time()})


def _child(addr: str, peers: list[str], data_dir: str, baseline: bool, conn) -> None:
    from cantainer_agent.cluster.state import ClusterState
    from cantainer_agent.consensus import RaftConfig, RaftNode
    from cantainer_agent.consensus.pysyncobj import SyncTuning

    seams: dict = {}
    tuning = SyncTuning()
    if baseline:  # PySyncObj's own FileJournal (no fsync) and TCPTransport, through the node's seams
        from pysyncobj.transport import TCPTransport

        seams = {"storage": lambda d: os.path.join(d, "raft.journal"),
                 "transport": lambda *a, journal=None: TCPTransport(*a)}
        tuning = SyncTuning(extra=(("fullDumpFile", os.path.join(data_dir, "raft.dump")),))
    if os.environ.get("RAFT_BENCH_NOSYNC"):  # isolate the cost of fdatasync (diagnostics only)
        from cantainer_agent.consensus.pysyncobj import journal

        journal.os = type("NoSyncOs", (), {"__getattr__": lambda self, n: getattr(os, n),
                                          "fdatasync": staticmethod(lambda fd: None)})()
    node = RaftNode(RaftConfig(cluster="bench", self_addr=addr, data_dir=data_dir, secret=SECRET,
                               partners=tuple(peers), tuning=tuning), fsm=ClusterState, **seams)
    node.start()
    conn.send("started")
    while True:
        msg = conn.recv()
        if msg[0] == "role":
            try:
                conn.send(node.snapshot()["role"])
            except Exception as exc:  # noqa: BLE001
                conn.send(f"error {exc}")
        elif msg[0] == "bench":
            _, writes, threads = msg
            node.apply("register_node", {"name": "bench", "address": "127.0.0.1", "raft_addr": node.self_addr,
                                         "join_addr": "127.0.0.1:1", "version": "b", "bundle": "b", "ts": time.time()})
            results = {}
            t0 = time.perf_counter()
            for _ in range(writes):
                _heartbeat(node)
            results["sequential"] = writes / (time.perf_counter() - t0)
            per = writes // threads

            def worker(per: int = per) -> None:
                for _ in range(per):
                    _heartbeat(node)

            ts = [threading.Thread(target=worker) for _ in range(threads)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            results["concurrent"] = per * threads / (time.perf_counter() - t0)
            journal = getattr(getattr(node, "_spec", None), "journal", None)
            results["log_syncs"] = getattr(journal, "syncs", None)
            results["sync_ms"] = 1000 * journal.sync_seconds / max(1, journal.syncs) if journal else None
            conn.send(results)
        elif msg[0] == "syncstats":
            journal = getattr(getattr(node, "_spec", None), "journal", None)
            conn.send((journal.syncs, 1000 * journal.sync_seconds / max(1, journal.syncs)) if journal else None)
        elif msg[0] == "stop":
            node.stop()
            conn.send("stopped")
            return


@contextlib.contextmanager
def trio(baseline: bool):
    """Three RaftNodes in three processes on loopback; yields (leader connection, all connections).

    The nodes are stopped and their directories removed on exit, whatever happens."""
    root = tempfile.mkdtemp(prefix="raft-bench-")
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(3)]
    ctx = mp.get_context("fork")
    procs, conns = [], []
    try:
        for i, addr in enumerate(addrs):
            parent, child = ctx.Pipe()
            d = os.path.join(root, f"n{i}")
            os.makedirs(d)
            p = ctx.Process(target=_child, args=(addr, [a for a in addrs if a != addr], d, baseline, child))
            p.start()
            procs.append(p)
            conns.append(parent)
        for c in conns:
            if not c.poll(30) or c.recv() != "started":
                raise RuntimeError("raft node did not start")
        leader = None
        deadline = time.monotonic() + 20
        while leader is None and time.monotonic() < deadline:
            for c in conns:
                c.send(("role",))
            roles = [c.recv() for c in conns]
            if roles.count("leader") == 1:
                leader = conns[roles.index("leader")]
            else:
                time.sleep(0.1)
        if leader is None:
            raise RuntimeError("no raft leader within 20 s")
        time.sleep(0.5)
        yield leader, conns
        for c in conns:
            c.send(("stop",))
            c.recv()
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()  # by PID (multiprocessing.Process)
                p.join(5)
        shutil.rmtree(root, ignore_errors=True)


def writes_per_second(baseline: bool, writes: int, threads: int) -> dict:
    """One run: a fresh trio, `writes` sync writes sequentially, then from `threads` threads.

    Returns {"sequential", "concurrent"} in writes/s (and the leader's fsync statistics)."""
    import logging

    # The baseline logs PySyncObj's "truncating already-applied log entries" under concurrent writes
    # (known, see bench/README.md); keep it out of the table. The children inherit this at fork.
    quiet = logging.getLogger("pysyncobj.syncobj")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)  # it is logged as critical
    try:
        with trio(baseline) as (leader, _conns):
            leader.send(("bench", writes, threads))
            return leader.recv()
    finally:
        quiet.setLevel(level)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    with trio(args.baseline) as (leader, conns):
        leader.send(("bench", args.writes, args.threads))
        res = leader.recv()
        kind = "baseline (PySyncObj FileJournal, no fsync)" if args.baseline else "durable journal (fdatasync)"
        print(f"{kind}: sequential {res['sequential']:.0f} writes/s, {args.threads} threads "
              f"{res['concurrent']:.0f} writes/s, leader log syncs {res['log_syncs']}")
        if not args.baseline:
            for c in conns:
                c.send(("syncstats",))
            print("  per node (fdatasync calls, mean ms):", [c.recv() for c in conns])


if __name__ == "__main__":
    main()
