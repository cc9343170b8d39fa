"""The raft group when peers vanish, freeze or are cut off, with real agent processes in a
private network namespace.

Stand-ins for the network failures (no iptables here; see agentctl.Netns): policy-routing
``blackhole`` rules before the ``local`` table. ``vanish`` drops everything a member *sends*
(its ACKs, SYN-ACKs, FINs, RSTs): with a SIGKILL that is a host losing power. ``cut`` drops both
directions: a partition. ``SIGSTOP`` freezes a process while its kernel keeps the TCP connections
up: a hung agent (raft timeouts must handle it, TCP cannot).
"""

from __future__ import annotations

import signal
import time

import pytest

from cantainer_agent import protocol

from .agentctl import wait_for
from .test_raft_durability import converged, create

pytestmark = pytest.mark.root


def connected_to(agent, target) -> bool:
    return target.raft_addr in agent.status()["raft"]["connected"]


def test_vanished_peer_is_dropped_fast_and_reconnected_after_reboot(netns, make_cluster):
    cluster = make_cluster(3, base=40, netns=netns).start()
    victim = min(cluster.agents, key=lambda a: a.raft_addr)  # its peers are the ones that connect to it
    others = [a for a in cluster.agents if a is not victim]
    netns.vanish(victim.address)
    victim.kill9()  # power loss: no FIN or RST reaches anyone
    # Both waits end well before what PySyncObj's sockets as shipped need (keepalive 16 s + 5 x 3 s, no
    # TCP_USER_TIMEOUT: ~31 s each); the durations themselves are benchmarks (bench/raft_failover.py).
    wait_for(lambda: not any(connected_to(a, victim) for a in others), 15, "peers dropping the dead connections")
    time.sleep(4)  # "reboot"; PySyncObj as shipped would now sit in SYN retransmission back-off
    netns.heal(victim.address)
    victim.start(cluster.env)
    wait_for(lambda: all(connected_to(a, victim) for a in others), 15, "peers reconnecting to the rebooted member")
    cluster.wait_healthy()


def test_partitioned_leader_refuses_writes_and_rejoins_without_divergence(netns, make_cluster):
    cluster = make_cluster(3, base=50, netns=netns).start()
    expected = {}
    for k in range(1, 4):
        net = create(cluster.agents[k % 3], k)
        expected[net["cidr"]] = net["vni"]
    leader = cluster.wait_healthy()
    majority = [a for a in cluster.agents if a is not leader]
    netns.cut(leader.address)
    # the majority elects a new leader and carries on
    new = wait_for(lambda: (lambda new: new if new is not None and new is not leader else None)(
        cluster.leader_among(majority)), 15, "a new leader in the majority")
    assert new in majority
    for k in range(4, 7):
        net = wait_for(lambda k=k: create(majority[k % 2], k), 10, f"write {k} in the majority")
        expected[net["cidr"]] = net["vni"]
    # the cut node steps down and refuses writes with a clear error, within a few seconds
    wait_for(lambda: leader.status()["raft"]["role"] != "leader", 5, "the cut leader to step down")
    with pytest.raises(protocol.ProtocolError) as err:
        create(leader, 99)
    # refused before it reached any log ("unavailable": nothing was done), not left hanging
    assert err.value.code == protocol.UNAVAILABLE and "cut off from the majority" in str(err.value), err.value
    assert leader.status()["raft"]["role"] != "leader"
    # heal: it rejoins as a follower, with exactly the majority's entries
    netns.heal(leader.address)
    wait_for(lambda: converged(cluster, expected), 20, "the healed member converging")
    assert cluster.wait_healthy() in cluster.agents  # one leader again, known to all
    net = create(leader, 7)  # and it serves (forwards) writes again
    expected[net["cidr"]] = net["vni"]
    wait_for(lambda: converged(cluster, expected), 10, "all members after the heal")


def test_frozen_leader_is_replaced_and_rejoins(netns, make_cluster):
    cluster = make_cluster(3, base=70, netns=netns).start()
    expected = {}
    net = create(cluster.agents[0], 1)
    expected[net["cidr"]] = net["vni"]
    leader = cluster.wait_healthy()
    rest = [a for a in cluster.agents if a is not leader]
    leader.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: (lambda new: new is not None and new is not leader)(cluster.leader_among(rest)), 15,
                 "a new leader while the old one is frozen")
        for k in range(2, 5):
            net = wait_for(lambda k=k: create(rest[k % 2], k), 10, f"write {k}")
            expected[net["cidr"]] = net["vni"]
    finally:
        leader.signal(signal.SIGCONT)
    wait_for(lambda: converged(cluster, expected), 20, "the thawed member converging")
    cluster.wait_healthy()
