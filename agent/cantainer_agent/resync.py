"""When a controller reads the kernel in full again, to find what changed behind its back.

Between two full reads a controller trusts its record of what it programmed (every change it
makes goes through that record). A read is due ``RESYNC_MIN`` seconds after the last one, or
later when reading is dear: a pass that read in full spends at most ``RESYNC_CPU_SHARE`` of a CPU
on such passes (its CPU / the share = the wait). Every host pays it, at rest too: the idle target
of a whole 30-host cluster is 0.3 cores. A pass that fails to read leaves the last good read's time.
Why these numbers: docs/design/agent.md ("Reading the kernel").
"""
from __future__ import annotations

import time
from typing import Callable

RESYNC_MIN = 15.0
RESYNC_CPU_SHARE = 0.001


class Resync:
    """The clock of one controller's full reads (one thread uses it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        self._clock, self._cpu = clock, cpu
        self._read_at = float("-inf")
        self._wait = RESYNC_MIN
        self._started: tuple[float, float] | None = None

    def due(self) -> bool:
        """Must this pass read in full (never read well, or the wait since the last good read is over)?"""
        return self._clock() - self._read_at >= self._wait

    def start(self) -> None:
        """A full-reading pass begins (its CPU counts from here)."""
        self._started = (self._clock(), self._cpu())

    def forget(self) -> None:
        """What the last read saw can no longer be trusted (a change failed): the next pass reads."""
        self._read_at = float("-inf")

    def done(self) -> None:
        """That pass succeeded: trust its view until the next read is due."""
        if self._started is not None:
            at, cpu = self._started
            self._read_at, self._wait = at, max(RESYNC_MIN, (self._cpu() - cpu) / RESYNC_CPU_SHARE)
            self._started = None
