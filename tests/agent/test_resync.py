"""resync.Resync: when a controller reads the kernel in full again (pure: clocks passed in)."""
from __future__ import annotations

from cantainer_agent.resync import RESYNC_CPU_SHARE, RESYNC_MIN, Resync


class Clocks:
    def __init__(self) -> None:
        self.wall, self.cpu = 500.0, 10.0


def make() -> tuple[Resync, Clocks]:
    clocks = Clocks()
    return Resync(clock=lambda: clocks.wall, cpu=lambda: clocks.cpu), clocks


def test_a_cheap_read_is_trusted_for_the_minimum_time_from_its_start():
    resync, clocks = make()
    assert resync.due()  # never read
    resync.start()
    clocks.wall += 0.5
    clocks.cpu += 0.002
    resync.done()
    clocks.wall += RESYNC_MIN - 0.5 - 0.01
    assert not resync.due()
    clocks.wall += 0.01
    assert resync.due()


def test_a_dear_read_waits_long_enough_to_cost_at_most_the_share():
    resync, clocks = make()
    resync.start()
    clocks.cpu += 0.1  # 0.1 s of CPU: at 0.1 % of a CPU, the next read 100 s later
    resync.done()
    wait = 0.1 / RESYNC_CPU_SHARE
    assert wait > RESYNC_MIN
    clocks.wall += wait - 1
    assert not resync.due()
    clocks.wall += 1
    assert resync.due()


def test_a_read_that_never_finished_is_not_trusted():
    resync, clocks = make()
    resync.done()  # a pass that read nothing: nothing to trust
    assert resync.due()
    resync.start()  # this pass fails: done() is never called
    clocks.cpu += 0.001
    assert resync.due()


def test_a_forgotten_read_is_due_at_once():
    """A controller whose change failed cannot trust what it last read: the next pass reads again."""
    resync, _clocks = make()
    resync.start()
    resync.done()
    assert not resync.due()
    resync.forget()
    assert resync.due()
