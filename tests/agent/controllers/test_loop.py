"""The control loop: one snapshot per pass for every controller, triggers folding into one pass,
retries with back-off, a lower CPU priority — checked by what the loop decided, never by the clock."""
from __future__ import annotations

import os
import threading
import time

from cantainer_agent.controllers.loop import NICE, RETRY_MIN, ControllerLoop


class Counting:
    name = "counting"

    def __init__(self, fail_first: int = 0) -> None:
        self.snapshots: list[object] = []
        self.fail_first = fail_first
        self.seen = threading.Event()

    @property
    def passes(self) -> int:
        return len(self.snapshots)

    def sync(self, snapshot: object) -> None:
        self.snapshots.append(snapshot)
        self.seen.set()
        if self.passes <= self.fail_first:
            raise RuntimeError("boom")


def reader():
    count = iter(range(10**6))
    return lambda: {"pass": next(count)}


def test_every_controller_gets_the_same_snapshot_and_a_failure_does_not_stop_the_others():
    failing, healthy = Counting(fail_first=1), Counting()
    loop = ControllerLoop("test", [failing, healthy], reader(), period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)
        assert failing.passes >= 1 and healthy.passes >= 1
        assert failing.snapshots[0] is healthy.snapshots[0]  # one read per pass, shared
        assert loop.run_once_and_wait(timeout=5)
        assert healthy.snapshots[-1] is not healthy.snapshots[0]  # a new pass reads again
    finally:
        loop.stop()


def test_a_failing_controller_is_retried_before_the_period_with_back_off():
    failing = Counting(fail_first=3)
    loop = ControllerLoop("test", [failing], reader(), period=60)
    loop.start()
    try:
        loop.trigger()
        # No trigger after the first: only the loop's own retries (0.2, 0.4, 0.8 s) can run passes 2-4
        # within the 60 s period.
        deadline = time.monotonic() + 20
        while failing.passes < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failing.passes == 4
        assert loop._failures == {}  # the fourth pass succeeded: the failure record is gone
    finally:
        loop.stop()
    assert RETRY_MIN < 60


def test_a_snapshot_that_cannot_be_read_is_retried_and_no_controller_sees_a_pass_without_one():
    attempts = []

    def read():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("raft stalled")
        return {"ok": True}

    counting = Counting()
    loop = ControllerLoop("test", [counting], read, period=60)
    loop.start()
    try:
        loop.trigger()
        assert counting.seen.wait(10)  # the retry after the failed read
        assert counting.snapshots[0] == {"ok": True, "changes": None, "commits_only": False}
        assert len(attempts) >= 2
    finally:
        loop.stop()


def test_period_is_a_safety_net():
    counting = Counting()
    loop = ControllerLoop("test", [counting], reader(), period=0.05)
    loop.start()
    try:
        assert counting.seen.wait(2)
    finally:
        loop.stop()


class Busy(Counting):
    """A pass that computes (CPU) or waits for `seconds`, measuring its own thread CPU time."""

    def __init__(self, computes: bool, seconds: float = 0.2) -> None:
        super().__init__()
        self.computes, self.seconds = computes, seconds
        self.cpu: list[float] = []

    def sync(self, snapshot: object) -> None:
        started = time.thread_time()
        super().sync(snapshot)
        if self.computes:
            until = time.thread_time() + self.seconds
            while time.thread_time() < until:
                pass
        else:
            threading.Event().wait(self.seconds)
        self.cpu.append(time.thread_time() - started)


def test_triggers_during_a_pass_fold_into_one_pass_spaced_by_the_cpu_it_used():
    busy = Busy(computes=True)
    loop = ControllerLoop("test", [busy], reader(), period=60)
    loop.start()
    try:
        loop.trigger()
        assert busy.seen.wait(5)
        for _ in range(50):  # e.g. 50 commits arriving while the pass runs
            loop.trigger()
        assert loop.run_once_and_wait(timeout=10)
        assert busy.passes == 2  # 50 triggers, one pass
        # Back-to-back passes would leave the rest of the agent (the raft tick) no CPU in a burst:
        # the loop spaces them by the CPU the last pass used.
        assert loop.last_gap >= busy.cpu[0] >= 0.2  # the gap before pass 2 covers pass 1's CPU
    finally:
        loop.stop()


def test_time_a_pass_spends_waiting_does_not_space_the_next():
    waiting = Busy(computes=False, seconds=0.5)
    loop = ControllerLoop("test", [waiting], reader(), period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)
        assert loop.run_once_and_wait(timeout=5)
        # New containers' entries on other hosts must not wait for a pass that sat on a raft commit:
        # the gap follows the pass's CPU time, not the half second it waited.
        assert loop.last_gap < waiting.seconds / 2
    finally:
        loop.stop()


def test_passes_run_at_a_lower_cpu_priority_than_the_rest_of_the_agent():
    class Nice:
        name = "nice"
        value = None

        def sync(self, _snapshot: object) -> None:
            self.value = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    probe = Nice()
    loop = ControllerLoop("test", [probe], reader(), period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)
    finally:
        loop.stop()
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert probe.value == min(19, ours + NICE) and ours != probe.value


def test_a_pass_woken_only_by_commits_says_so_and_any_other_pass_is_full():
    counting = Counting(fail_first=0)
    changes = iter([None, {("networks", "x")}, {("networks", "y")}, set(), set(), set()])
    loop = ControllerLoop("test", [counting], lambda: {"changes": next(changes)}, period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)  # the first pass (and a trigger) is full
        assert counting.snapshots[-1]["commits_only"] is False
        loop.notify_commit()
        deadline = time.monotonic() + 5
        while counting.passes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counting.snapshots[-1] == {"changes": {("networks", "x")}, "commits_only": True}
        assert loop.run_once_and_wait(timeout=5)  # trigger(): something happened here, full
        assert counting.snapshots[-1] == {"changes": {("networks", "y")}, "commits_only": False}
    finally:
        loop.stop()
