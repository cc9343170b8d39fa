"""What callers of the overlay need without netlink: the lock over a host's overlay changes and the
overlay's error. Kept apart from kernel.py so that importing them does not import pyroute2 (~0.15 s
of CPU, which the agent would otherwise pay at every start before it is ready)."""
from __future__ import annotations

import threading

from ..errors import AgentError


class KernelGuard:
    """One reconcile / attach / detach at a time on a host's overlay (an attach running between a
    reconcile's observe and apply would see its fresh veth deleted as an orphan), and the number
    of changes made outside reconcile passes. The agent owns one; tests make their own."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.changes = 0

    def __enter__(self) -> "KernelGuard":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def changed(self) -> None:
        """Record a change made outside a reconcile pass (call while holding the guard)."""
        self.changes += 1


class OverlayError(AgentError):
    """A request the overlay cannot carry out; the message names the cause."""
