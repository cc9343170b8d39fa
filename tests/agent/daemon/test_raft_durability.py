"""Crash safety of the raft group with real agent processes.

The agents run inside a private network namespace (see conftest.py): the writes used here create
networks, and each agent turns networks into kernel devices — those must not land on this
machine. Every write is acknowledged by the API only once committed; after SIGKILLs and restarts
every acknowledged network must be there, with the same VNI, on every member.

SIGKILL tests process crashes (the page cache survives); that entries are fsynced before they are
acknowledged is checked in tests/unit/test_agent_raft_cluster.py (ordering invariants) and
tests/unit/test_agent_raft_journal.py (power-loss model of the journal file).
"""

from __future__ import annotations

import random

import pytest

from .agentctl import wait_for

pytestmark = pytest.mark.root

ROUNDS = 20


def create(agent, k: int) -> dict:
    return agent.api("network.create", {"cidr": f"10.{k // 250}.{k % 250}.0/24"})


def networks(agent) -> dict[str, int]:
    return {n["cidr"]: n["vni"] for n in agent.api("network.ls")}


def converged(cluster, expected: dict[str, int]):
    views = [networks(a) for a in cluster.agents]
    if all(v == expected for v in views):
        return views
    missing = [sorted(set(expected) - set(v)) for v in views]
    extra = [sorted(set(v) - set(expected)) for v in views]
    assert not any(extra), f"unexpected networks {extra}"
    for v in views:  # what is there must be what was acknowledged (same VNI)
        for cidr, vni in v.items():
            assert expected[cidr] == vni, (cidr, vni, expected[cidr])
    return None if any(missing) else views


@pytest.mark.slow
def test_sigkill_all_right_after_a_committed_write(netns, make_cluster):
    cluster = make_cluster(3, base=20, netns=netns).start()
    rng = random.Random(6)
    expected: dict[str, int] = {}
    for k in range(1, ROUNDS + 1):
        via = rng.choice(cluster.agents)  # a follower forwards to the leader
        net = wait_for(lambda via=via, k=k: create(via, k), 15, f"write {k} via {via.name}")
        expected[net["cidr"]] = net["vni"]
        cluster.kill_all()  # right after the acknowledgement
        cluster.start_all_parallel()
        try:
            wait_for(lambda: converged(cluster, expected), 20, f"round {k}: all members have all writes")
        except AssertionError:
            raise AssertionError(f"round {k}\n{cluster.logs()}") from None
    assert len(set(expected.values())) == ROUNDS  # VNIs decided in raft: never handed out twice


@pytest.mark.slow
def test_simultaneous_restart_never_overwrites_committed_entries(netns, make_cluster):
    """PySyncObj PR #202: all members restart together, two come back first, elect a leader and
    commit; the third, whose log ends with entries of the highest *old* term, starts late. With
    term and vote not persisted it could win the next election and overwrite the new entries."""
    cluster = make_cluster(3, base=30, netns=netns).start()
    expected: dict[str, int] = {}
    k = 0
    for rnd in range(4):
        for _ in range(3):
            k += 1
            net = create(cluster.agents[k % 3], k)
            expected[net["cidr"]] = net["vni"]
        cluster.kill_all()
        late = cluster.agents[rnd % 3]
        early = [a for a in cluster.agents if a is not late]
        cluster.start_all_parallel(early)
        for _ in range(3):
            k += 1
            net = wait_for(lambda early=early, k=k: create(early[k % 2], k), 15, f"write {k} with one member down")
            expected[net["cidr"]] = net["vni"]
        late.start(cluster.env)
        try:
            wait_for(lambda: converged(cluster, expected), 20, f"round {rnd}: late member caught up")
        except AssertionError:
            raise AssertionError(f"round {rnd}\n{cluster.logs()}") from None
        terms = {a.name: a.status()["term"] for a in cluster.agents}
        assert len(set(terms.values())) == 1, terms
