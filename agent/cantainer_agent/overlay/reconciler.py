"""Level-triggered reconciliation of one host's overlay: observe → desired → diff → apply.

:class:`OverlayReconciler` (the agent's) observes the kernel fully every few seconds and in between
diffs against the view its last pass left (``plan.fold``), like a controller's informer cache; a
change made outside a pass (attach/detach, counted by the :class:`~.kernel.KernelGuard`) touches
links only, so the view's links are read again and its entries kept. A pass whose desired state did
not change ends at once; :meth:`OverlayReconciler.reconcile_entries` diffs only the FDB/neighbour
entries a change named (a remote container came or went), against that view.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..resync import Resync
from . import plan as P
from .guard import KernelGuard, OverlayError
from .kernel import apply, iproute, observe, observe_changed_links, observe_links
from .model import DesiredHost, FdbEntry, NeighEntry, Observed

log = logging.getLogger(__name__)

DesiredSource = Union[DesiredHost, Callable[[Observed], DesiredHost]]
# A full observe when the reconciler's Resync says so (resync.py: at most every RESYNC_MIN seconds and
# RESYNC_CPU_SHARE of a CPU; the observe and the diff after it count): with ~1000 remote containers an
# observe costs ~0.05 s of CPU and its diff as much again, so a host re-reads the kernel every
# ~100 s and trusts its exact folded view (plan.fold) in between. Entries removed behind our back
# are restored within that time.


@dataclass
class ReconcileResult:
    actions: list[P.Action] = field(default_factory=list)
    failures: list[tuple[P.Action, Exception]] = field(default_factory=list)
    skipped: tuple[str, ...] = ()
    desired: DesiredHost | None = None
    observed: Observed | None = None  # the kernel after the pass (observed again, or folded)
    # a pass that diffed a few entries only: the desired state, built when someone asks for it
    desired_source: Callable[[], DesiredHost] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    def desired_state(self) -> DesiredHost | None:
        if self.desired is None and self.desired_source is not None:
            self.desired = self.desired_source()
        return self.desired

    @functools.cached_property
    def health(self) -> dict:
        """P.health after the pass, against the same desired state. Computed on first use: at
        ~1000 containers it costs as much as the pass (and only heartbeats read it)."""
        desired = self.desired_state()
        if desired is None or self.observed is None:
            return {}
        return P.health(desired, self.observed)


def reconcile(ipr: IPRoute, desired: DesiredSource, guard: KernelGuard, observed: Observed | None = None,
              last: ReconcileResult | None = None, indices: dict[str, int] | None = None) -> ReconcileResult:
    """One level-triggered pass: observe, then read the desired state, diff, apply.

    A callable *desired* gets what was observed: a container attached after the desired state
    was read is observed without being desired, and would be deleted as an orphan — the caller
    can see that and read the desired state again.
    *observed* (OverlayReconciler's cache) replaces the observe; with *last*, the pass that
    produced that cache, an unchanged desired state ends the pass at once. *indices*: kernel.apply's.
    """
    with guard:
        if observed is None:
            observed = observe(ipr)
        want = desired(observed) if callable(desired) else desired
        if last is not None and observed is last.observed and last.ok and want == last.desired_state():
            return ReconcileResult([], [], want.skipped, want, observed)
        actions = P.diff(want, observed)
        failures = apply(ipr, actions, indices)
        after = observed if not actions else (None if failures else P.fold(observed, actions))
        if after is None:
            after = observe(ipr)
    for reason in want.skipped:
        log.warning("overlay: ignored inconsistent desired state: %s", reason)
    return ReconcileResult(actions, failures, want.skipped, want, after)


class OverlayReconciler:
    """Adapter for the agent's reconcile loop (``name`` + ``reconcile()``).

    ``desired(observed)`` is called on every pass, after observing; ``netns`` (tests) names the network
    namespace to program, default the agent's own.
    """

    name = "overlay"

    def __init__(
        self, desired: Callable[[Observed], DesiredHost], guard: KernelGuard, netns: str | None = None,
        *, keep_socket: bool = False, resync: Resync | None = None,
    ) -> None:
        self._desired = desired
        self._guard = guard
        self._netns = netns
        self.last: ReconcileResult | None = None
        self._resync = resync if resync is not None else Resync()  # when to observe the kernel in full again
        self._kernel_changes_seen = -1
        self._entries: P.EntryIndex | None = None  # the entries of _entries_of, by key
        self._entries_of: Observed | None = None
        # statistics (tests); links_named: of the links_observe, those that read only the links a change named
        self.passes = {"full_observe": 0, "links_observe": 0, "links_named": 0, "entries": 0, "full": 0}
        self._keep_socket = keep_socket
        self._ipr: IPRoute | None = None  # keep_socket: opened at the first pass, used by one thread only
        # device -> ifindex for kernel.apply, as long as the view of the kernel is trusted: every
        # remote container's two entries looked their VXLAN device up again (2 of an entry pass's 4 requests)
        self._indices: dict[str, int] = {}

    def _cached_observation(self, ipr: IPRoute | None = None) -> Observed | None:
        """The kernel as the last pass left it, while that view can be trusted: the pass fully
        succeeded and the last full observe is recent. A container attached or detached since
        changed links only (outside a pass): with *ipr* the links are read again and the entries
        kept; without, there is no trusted view. Under the guard."""
        last = self.last
        if last is None or not last.ok or last.observed is None or self._resync.due():
            return None
        if self._guard.changes == self._kernel_changes_seen:
            return last.observed
        if ipr is None:
            return None
        names = self._guard.links_changed_since(self._kernel_changes_seen)
        if names is not None:  # those links, and the bridges they were ports of
            names |= {last.observed.links[n].master for n in names if n in last.observed.links} - {None}
            observed = observe_changed_links(ipr, names, last.observed)
            self.passes["links_named"] += 1
        else:
            fresh = observe_links(ipr)
            devices = fresh.links
            observed = fresh.replace(fdb=frozenset(e for e in last.observed.fdb if e.dev in devices),
                                     neigh=frozenset(e for e in last.observed.neigh if e.dev in devices))
        self._kernel_changes_seen = self._guard.changes
        self._indices = {}  # links came or went
        self.passes["links_observe"] += 1
        # the view, without its desired state: the next pass diffs even if the desired state is unchanged
        self.last = dataclasses.replace(last, observed=observed, desired=None, desired_source=None)
        return observed

    @contextlib.contextmanager
    def _netlink(self) -> Iterator[IPRoute]:
        """With *keep_socket*, the reconciler's own netlink socket, kept between passes (opening an
        IPRoute costs more than a pass that changes two entries) and reopened after an error on it;
        else one per pass."""
        if not self._keep_socket:
            with iproute(None, self._netns) as ipr:
                yield ipr
            return
        if self._ipr is None:
            self._ipr = IPRoute(netns=self._netns, flags=0) if self._netns else IPRoute()
        try:
            yield self._ipr
        except (OSError, NetlinkError, EOFError):
            self.close()
            raise

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            finally:
                self._ipr = None

    def reconcile(self) -> ReconcileResult:
        with self._netlink() as ipr, self._guard:
            observed = self._cached_observation(ipr)
            fresh = observed is None
            if fresh:
                self._resync.start()
                observed = observe(ipr)
                self.passes["full_observe"] += 1
                self._indices = {}
            result = reconcile(ipr, self._desired, self._guard, observed, self.last, self._indices)
            self.passes["full"] += 1
            last = self.last
            if (last is not None and not result.actions and result.observed is last.observed
                    and result.desired is last.desired_state()):
                result = last  # nothing changed: keep its health, computed once (heartbeats read it)
            if fresh:  # after the pass: one that stopped early (replica not ready) left the old view, still aged
                self._kernel_changes_seen = self._guard.changes
                self._resync.done()
        return self._finish(result)

    def reconcile_entries(self, want_fdb: dict[tuple[str, str], FdbEntry],
                          want_neigh: dict[tuple[str, str], NeighEntry], keys: set[tuple[str, str, str]],
                          desired: Callable[[], DesiredHost]) -> ReconcileResult | None:
        """Only the entries *keys* name (``("fdb", dev, mac)`` / ``("neigh", dev, ip)``), against
        the cached view — when nothing but remote containers changed. Returns None, doing nothing,
        when there is no trusted view without reading the kernel (call :meth:`reconcile` then).
        *desired* gives the whole desired state, built only if someone asks (health)."""
        with self._guard:
            observed = self._cached_observation()
            if observed is None:
                return None
            if self._entries_of is not observed:
                self._entries, self._entries_of = P.EntryIndex(observed), observed
            actions = P.diff_entries(want_fdb, want_neigh, keys, self._entries)
            failures: list = []
            if actions:
                with self._netlink() as ipr:
                    failures = apply(ipr, actions, self._indices)
            after = observed
            if failures:
                self._resync.forget()  # observe the kernel again next time
                self._entries_of = None
                self._indices = {}
            elif actions:
                self._entries.apply(actions)
                after = self._entries_of = self._entries.observed(observed)
        self.passes["entries"] += 1
        return self._finish(ReconcileResult(actions, failures, (), None, after, desired_source=desired))

    def _finish(self, result: ReconcileResult) -> ReconcileResult:
        self.last = result
        if result.failures:
            self._indices = {}
            raise OverlayError(
                f"{len(result.failures)} of {len(result.actions)} overlay changes failed, first: "
                f"{result.failures[0][0]}: {result.failures[0][1]}"
            )
        return result

    def health(self) -> dict:
        with iproute(None, self._netns) as ipr:
            observed = observe(ipr)
        return P.health(self._desired(observed), observed)
