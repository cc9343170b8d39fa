"""What callers of the overlay need without netlink: the lock over a host's overlay changes and the
overlay's error. Kept apart from kernel.py so that importing them does not import pyroute2 (~0.15 s
of CPU, which the agent would otherwise pay at every start before it is ready)."""
from __future__ import annotations

import collections
import threading
from typing import Iterable

from ..errors import AgentError

REMEMBERED = 64  # changes whose links are remembered (a reconciler further behind observes all links)


class KernelGuard:
    """One reconcile / attach / detach at a time on a host's overlay (an attach running between a
    reconcile's observe and apply would see its fresh veth deleted as an orphan), and the number
    of changes made outside reconcile passes, with the links each touched when it says so. The
    agent owns one; tests make their own."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.changes = 0
        self._recent: collections.deque[tuple[int, frozenset[str] | None]] = collections.deque(maxlen=REMEMBERED)

    def __enter__(self) -> "KernelGuard":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def changed(self, links: Iterable[str] | None = None) -> None:
        """Record a change made outside a reconcile pass (call while holding the guard): to the
        links named *links* only — their existence and settings, nothing else (no address, route
        or entry of another link) — or, without *links*, to anything."""
        self.changes += 1
        self._recent.append((self.changes, None if links is None else frozenset(links)))

    def links_changed_since(self, seen: int) -> frozenset[str] | None:
        """The links changed after change number *seen*; None when a change did not name them, or
        is no longer remembered."""
        names: set[str] = set()
        recent = [links for number, links in self._recent if number > seen]
        if seen < 0 or len(recent) != self.changes - seen:
            return None
        for links in recent:
            if links is None:
                return None
            names |= links
        return frozenset(names)


class OverlayError(AgentError):
    """A request the overlay cannot carry out; the message names the cause."""
