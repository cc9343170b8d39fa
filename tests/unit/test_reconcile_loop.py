"""The control loop runs reconcilers on trigger, survives a failing one, and can be waited on."""
from __future__ import annotations

import threading

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
