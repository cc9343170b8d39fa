"""The control loop runs reconcilers on trigger, survives a failing one, and can be waited on."""
from __future__ import annotations

import threading
import time

from cantainer_agent.reconcile import ReconcileLoop


class Counting:
    name = "counting"

    def __init__(self, fail_first: bool = False) -> None:
        self.passes = 0
        self.fail_first = fail_first
        self.seen = threading.Event()

    def reconcile(self) -> None:
        self.passes += 1
        self.seen.set()
        if self.fail_first and self.passes == 1:
            raise RuntimeError("boom")


def test_trigger_runs_every_reconciler_and_a_failure_does_not_stop_the_loop():
    failing, healthy = Counting(fail_first=True), Counting()
    loop = ReconcileLoop([failing, healthy], period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)
        assert failing.passes == 1 and healthy.passes == 1
        assert loop.run_once_and_wait(timeout=5)
        assert failing.passes == 2 and healthy.passes == 2
    finally:
        loop.stop()


def test_period_is_a_safety_net():
    counting = Counting()
    loop = ReconcileLoop([counting], period=0.05)
    loop.start()
    try:
        assert counting.seen.wait(2)
    finally:
        loop.stop()



class Slow(Counting):
    """A pass that computes for `seconds` of CPU (or waits them) and records when it started and ended."""

    def __init__(self, computes: bool, seconds: float = 0.2) -> None:
        super().__init__()
        self.computes, self.seconds = computes, seconds
        self.spans: list[tuple[float, float]] = []

    def reconcile(self) -> None:
        started = time.monotonic()
        super().reconcile()
        if self.computes:
            until = time.thread_time() + self.seconds
            while time.thread_time() < until:
                pass
        else:
            threading.Event().wait(self.seconds)
        self.spans.append((started, time.monotonic()))


def test_triggers_fold_into_one_pass_that_waits_as_long_as_the_last_one_computed():
    slow = Slow(computes=True)
    loop = ReconcileLoop([slow], period=60)
    loop.start()
    try:
        loop.trigger()
        assert slow.seen.wait(5)
        for _ in range(50):  # e.g. 50 commits arriving while the pass runs
            loop.trigger()
        assert loop.run_once_and_wait(timeout=5)
        assert slow.passes == 2
        (_, first_end), (second_start, _) = slow.spans
        # Back-to-back passes would leave the rest of the agent (the raft tick) no CPU in a burst.
        assert second_start - first_end >= 0.19
    finally:
        loop.stop()


def test_time_a_pass_spends_waiting_does_not_delay_the_next():
    waiting = Slow(computes=False, seconds=1.0)
    loop = ReconcileLoop([waiting], period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)
        assert loop.run_once_and_wait(timeout=5)
        (_, first_end), (second_start, _) = waiting.spans
        # New containers' entries on other hosts must not wait for a pass that sat on a raft commit.
        assert second_start - first_end < 0.9  # (a loaded CPU may delay the thread; not by 0.9 s)
    finally:
        loop.stop()



def test_passes_run_at_a_lower_cpu_priority_than_the_rest_of_the_agent():
    import os

    from cantainer_agent.reconcile import NICE

    class Nice:
        name = "nice"
        value = None

        def reconcile(self) -> None:
            self.value = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    probe = Nice()
    loop = ReconcileLoop([probe], period=60)
    loop.start()
    try:
        assert loop.run_once_and_wait(timeout=5)
    finally:
        loop.stop()
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert probe.value == min(19, ours + NICE) and ours != probe.value
