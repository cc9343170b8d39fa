"""Waiting for a leader (a join that comes during the first election) costs the tick thread nothing:
dozens of waiting joins used to poll `status` in it every 20 ms and kept founding voters from electing."""
from __future__ import annotations

import threading
import time

from cantainer_agent.join.server import LEADER_WAIT, JoinService
from tests.agent.consensus.test_first_election import NEVER, WAIT, free_addr, leader_of
from tests.agent.raftkit import raft_node


def test_waiters_make_no_call_into_the_tick_thread_and_wake_when_a_leader_is_known(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = sorted(free_addr() for _ in range(2))
    voter = raft_node(tmp_path / "a", first, partners=[second], tuning=NEVER, elect_early=True)
    voter.start()
    peer = None
    try:
        calls = []
        real = voter.run_in_tick
        voter.run_in_tick = lambda fn, timeout=2.0: (calls.append(fn), real(fn, timeout))[1]
        assert voter.wait_for_leader(0.3) is False  # its partner is not there: no majority, no leader
        woke: list[float] = []
        waiters = [threading.Thread(target=lambda: woke.append(voter.wait_for_leader(WAIT) and time.monotonic()))
                   for _ in range(20)]
        for waiter in waiters:
            waiter.start()
        answers: list[tuple[dict, float]] = []  # and a join, as the join port serves it, waiting for the election
        join = JoinService(lambda: voter, "c", "n1", voters=1)
        params = {"cluster": "c", "node": "n9", "raft_addr": "127.0.0.1:1", "join_addr": "127.0.0.1:2"}
        joining = threading.Thread(target=lambda: answers.append((join.handle("join", params), time.monotonic())))
        joining.start()
        time.sleep(0.3)
        assert calls == []  # 22 waits so far, not one call into the tick thread
        asked = time.monotonic()
        peer = raft_node(tmp_path / "b", second, partners=[first], tuning=NEVER)
        peer.start()
        elected = leader_of([voter, peer], time.monotonic() + WAIT)
        for waiter in [*waiters, joining]:
            waiter.join(WAIT)
        assert elected == first and len(woke) == 20 and all(woke)
        assert max(woke) - min(woke) < 1.0  # all woken by the same leader, not each by its timeout
        answer, answered = answers[0]
        assert answer["ok"] and answer["result"]["role"] == "standby", answer
        assert answered - asked < LEADER_WAIT - 0.3  # answered once there was a leader, not at the wait's end
    finally:
        for node in (voter, peer):
            if node is not None:
                node.stop(handover_timeout=0)
