"""A raft node starts promptly: its tick thread ticks as soon as the transport is ready (PySyncObj's
own slept a fixed 0.1 s first), and a founding peer that was not listening yet when this node first
tried it is tried again within START_RETRY, not after the configured connection retry (0.5 s). Both
are shown by mechanism: a recorded sleep, and a retry configured far beyond the test's wait."""
from __future__ import annotations

import threading
import time

from cantainer_agent.consensus.pysyncobj import SyncTuning
from tests.agent.consensus.test_first_election import NEVER, WAIT, free_addr, leader_of
from tests.agent.raftkit import raft_node


def test_the_tick_thread_ticks_without_sleeping_first(tmp_path, monkeypatch):
    slept: list[tuple[str, float]] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        slept.append((threading.current_thread().name, seconds))
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", recording_sleep)
    node = raft_node(tmp_path, free_addr(), tuning=NEVER, elect_early=True)
    node.start()
    try:
        assert leader_of([node], time.monotonic() + WAIT) is not None
    finally:
        monkeypatch.setattr(time, "sleep", real_sleep)
        node.stop(handover_timeout=0)
    tick_sleeps = [seconds for name, seconds in slept if "tick" in name.lower()]
    assert 0.1 not in tick_sleeps, slept  # PySyncObj's fixed pause before the first tick


def test_a_founding_peer_not_listening_yet_is_retried_soon(tmp_path):
    # PySyncObj connects from the larger address to the smaller: start the larger first, alone.
    addrs = sorted(free_addr() for _ in range(2))
    slow_retry = SyncTuning(election_min=300.0, election_max=301.0, connection_retry=300.0,
                            extra=(("connectionTimeout", 301.0),))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dialer = raft_node(tmp_path / "b", addrs[1], partners=[addrs[0]], tuning=slow_retry)
    dialer.start()
    listener = None
    try:
        time.sleep(0.5)  # its first attempt is refused: nobody listens on addrs[0] yet
        listener = raft_node(tmp_path / "a", addrs[0], partners=[addrs[1]], tuning=slow_retry, elect_early=True)
        listener.start()
        # a leader needs both connected: with only the configured retry that is 300 s away
        assert leader_of([dialer, listener], time.monotonic() + WAIT) == addrs[0]
    finally:
        for node in (dialer, listener):
            if node is not None:
                node.stop(handover_timeout=0)


def test_a_peer_that_connects_to_the_leader_learns_of_it_at_once(tmp_path):
    """The leader greets a peer whose connection comes up with an append round in the same tick
    (AgentSyncObj.peer_connected), not at its next heartbeat: here 60 s away, beyond the test's wait."""
    addrs = [free_addr() for _ in range(3)]
    no_heartbeat = SyncTuning(election_min=300.0, election_max=301.0, append_period=60.0, leader_fallback=200.0,
                              extra=(("connectionTimeout", 301.0),))
    nodes = []
    for index, addr in enumerate(addrs):
        (tmp_path / str(index)).mkdir()
        nodes.append(raft_node(tmp_path / str(index), addr, partners=[a for a in addrs if a != addr],
                               tuning=no_heartbeat, elect_early=index == 0))  # one candidate: no split vote
    try:
        for node in nodes[:2]:  # a majority elects; the third starts after that
            node.start()
        leader = leader_of(nodes[:2], time.monotonic() + WAIT)
        assert leader == addrs[0]
        nodes[2].start()
        assert leader_of(nodes, time.monotonic() + WAIT) == leader
    finally:
        for node in nodes:
            node.stop(handover_timeout=0)
