"""Failover and reconnect times of real agent processes (3 agents, private network namespace).

    sudo .venv/bin/python bench/raft_failover.py [--rounds 10] [--vanish-rounds 3]

failover:  SIGKILL the leader; time until the survivors agree on a new leader, and until a
           write (network.create through a survivor) is acknowledged. Median of --rounds.
crash:     the same, but the leader's host "crashes": its packets are blackholed first, then it
           is SIGKILLed, so no FIN/RST reaches anyone and only the election timeout notices.
           Median of --crash-rounds.
vanish:    the lowest-addressed member (its peers connect to it) loses "power": its packets are
           blackholed, then it is SIGKILLed (no FIN/RST reaches anyone). Time until the peers
           drop their connections to it; it "reboots" after 8 s: time from its restart until
           every link to it is up again.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from tests.agent.daemon.agentctl import Agent, Cluster, Netns, wait_for  # noqa: E402

# --untuned: the agent with PySyncObj's sockets as shipped (keepalive 16 s idle + 5 x 3 s on outgoing
# connections only, no TCP_USER_TIMEOUT)
UNTUNED = (
    "import sys, cantainer_agent.consensus.pysyncobj.transport as t, cantainer_agent.consensus.pysyncobj as r; "
    "t.tune_socket = lambda fd: None; "
    "mc = r.make_conf; r.make_conf = lambda *a, **k: (lambda c: (setattr(c, 'tcp_keepalive', (16, 3, 5)), c)[1])"
    "(mc(*a, **k)); from cantainer_agent.__main__ import main; sys.argv[0] = 'cantainer_agent'; sys.exit(main())"
)


def failover_round(cluster: Cluster, k: int) -> tuple[float, float]:
    leader = cluster.wait_healthy()
    survivors = [a for a in cluster.agents if a is not leader]
    t0 = time.monotonic()
    os.kill(leader.pid, signal.SIGKILL)
    wait_for(lambda: (lambda new: new is not None and new is not leader)(cluster.leader_among(survivors)), 20,
             "new leader", interval=0.005)
    elected = time.monotonic() - t0
    wait_for(lambda: survivors[k % 2].api("network.create", {"cidr": f"10.77.{k}.0/24"}, timeout=10), 20,
             "first write", interval=0.005)
    written = time.monotonic() - t0
    wait_for(lambda: not os.path.exists(f"/proc/{leader.pid}") or
             open(f"/proc/{leader.pid}/stat").read().split()[2] == "Z", 5, "death")
    leader.start(cluster.env)
    return elected, written


def crash_round(cluster: Cluster, netns: Netns, k: int) -> tuple[float, float]:
    """Like failover_round, but the leader's host loses power: nothing it sends arrives any more."""
    leader = cluster.wait_healthy()
    survivors = [a for a in cluster.agents if a is not leader]
    netns.vanish(leader.address)
    t0 = time.monotonic()
    os.kill(leader.pid, signal.SIGKILL)
    try:
        wait_for(lambda: (lambda new: new is not None and new is not leader)(cluster.leader_among(survivors)), 20,
                 "new leader", interval=0.005)
        elected = time.monotonic() - t0
        wait_for(lambda: survivors[k % 2].api("network.create", {"cidr": f"10.78.{k}.0/24"}, timeout=10), 20,
                 "first write", interval=0.005)
        written = time.monotonic() - t0
        wait_for(lambda: not os.path.exists(f"/proc/{leader.pid}") or
                 open(f"/proc/{leader.pid}/stat").read().split()[2] == "Z", 5, "death")
    finally:
        netns.heal(leader.address)
    leader.start(cluster.env)
    return elected, written


def vanish_round(cluster: Cluster, netns: Netns) -> tuple[float, float]:
    cluster.wait_healthy()
    victim = min(cluster.agents, key=lambda a: a.raft_addr)  # the others connect to it
    others = [a for a in cluster.agents if a is not victim]
    netns.vanish(victim.address)
    victim.kill9()
    t0 = time.monotonic()
    wait_for(lambda: all(victim.raft_addr not in a.status()["raft"]["connected"] for a in others), 60,
             "peers notice", interval=0.02)
    detected = time.monotonic() - t0
    time.sleep(8)  # the host reboots
    netns.heal(victim.address)
    victim.start(cluster.env)
    t1 = time.monotonic()
    wait_for(lambda: all(victim.raft_addr in a.status()["raft"]["connected"] for a in others)
             and len(victim.status()["raft"]["connected"]) == len(others), 120, "reconnected", interval=0.02)
    return detected, time.monotonic() - t1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--crash-rounds", type=int, default=5)
    ap.add_argument("--vanish-rounds", type=int, default=3)
    ap.add_argument("--untuned", action="store_true", help="baseline: raft sockets not tuned")
    args = ap.parse_args()
    if args.untuned:
        Agent.launcher = [sys.executable, "-c", UNTUNED]
    if os.geteuid() != 0:
        sys.exit("needs root (private network namespace)")
    netns = Netns()
    root = Path(tempfile.mkdtemp(prefix="raft-failover-"))
    cluster = Cluster(root, 3, base=60, netns=netns)
    try:
        cluster.start()
        elected, written = [], []
        for k in range(args.rounds):
            e, w = failover_round(cluster, k)
            elected.append(e)
            written.append(w)
        print(f"failover after SIGKILL of the leader, {args.rounds} rounds: new leader p50 "
              f"{statistics.median(elected) * 1000:.0f} ms (min {min(elected) * 1000:.0f}, max "
              f"{max(elected) * 1000:.0f}); first acknowledged write p50 {statistics.median(written) * 1000:.0f} ms "
              f"(max {max(written) * 1000:.0f})")
        crashed = [crash_round(cluster, netns, k) for k in range(args.crash_rounds)]
        if crashed:
            print(f"failover after the leader's host crashed, {args.crash_rounds} rounds: new leader p50 "
                  f"{statistics.median(e for e, _ in crashed) * 1000:.0f} ms; first acknowledged write p50 "
                  f"{statistics.median(w for _, w in crashed) * 1000:.0f} ms")
        detected, reconnected = [], []
        for _ in range(args.vanish_rounds):
            d, r = vanish_round(cluster, netns)
            detected.append(d)
            reconnected.append(r)
        if detected:
            print(
                f"vanished peer, {args.vanish_rounds} rounds: connections dropped after "
                f"{', '.join(f'{d:.1f}' for d in detected)} s; "
                f"reconnected {', '.join(f'{r:.1f}' for r in reconnected)} s after its restart"
            )
    finally:
        cluster.cleanup()
        netns.delete()


if __name__ == "__main__":
    main()
