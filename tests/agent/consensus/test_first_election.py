"""Who calls the first election (elect_early): a lone voter and the first of the initial voters stand at
once, the others wait out their timeout. The election timeout is set far beyond the test's waits, so a
leader can only appear through the mechanism under test (no timing is asserted)."""
from __future__ import annotations

import socket
import time

from cantainer_agent.consensus.pysyncobj import SyncTuning
from tests.agent.raftkit import raft_node, register

NEVER = SyncTuning(election_min=300.0, election_max=301.0,  # no election by timeout during a test
                   extra=(("connectionTimeout", 301.0),))  # PySyncObj wants it >= the election timeout
WAIT = 20.0  # generous: the machine may be busy; a leader through the timeout would take 300 s


def free_addr() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def leader_of(nodes, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        leaders = {n.status()["leader"] for n in nodes}
        if len(leaders) == 1 and None not in leaders:
            return leaders.pop()
        time.sleep(0.05)
    return None


def test_a_lone_voter_leads_at_once_instead_of_after_its_election_timeout(tmp_path):
    addr = free_addr()
    node = raft_node(tmp_path, addr, tuning=NEVER, elect_early=True)
    node.start()
    try:
        assert leader_of([node], time.monotonic() + WAIT) == addr
        register(node, "h1")  # and it commits
    finally:
        node.stop(handover_timeout=0)


def test_without_elect_early_a_lone_voter_waits_for_its_timeout(tmp_path):
    node = raft_node(tmp_path, free_addr(), tuning=NEVER)
    node.start()
    try:
        time.sleep(2.0)  # long enough for the early path (it takes a tick or two); the timeout is 300 s
        assert node.status()["leader"] is None
    finally:
        node.stop(handover_timeout=0)


def test_initial_voters_started_together_elect_the_first_one_once_it_reaches_a_majority(tmp_path):
    addrs = [free_addr() for _ in range(3)]
    nodes = [raft_node(tmp_path / str(i), addr, partners=[a for a in addrs if a != addr], tuning=NEVER,
                       elect_early=i == 0) for i, addr in enumerate(addrs)]
    for path in (tmp_path / str(i) for i in range(3)):
        path.mkdir()
    try:
        nodes[0].start()  # alone it cannot win: it waits for a majority before it stands
        time.sleep(1.0)
        assert nodes[0].status()["role"] == "follower" and nodes[0].status()["term"] == 0
        nodes[1].start()
        assert leader_of(nodes[:2], time.monotonic() + WAIT) == addrs[0]
        nodes[2].start()
        assert leader_of(nodes, time.monotonic() + WAIT) == addrs[0]
        register(nodes[2], "h3")  # forwarded to the leader, committed by all three
    finally:
        for node in nodes:
            node.stop(handover_timeout=0)
