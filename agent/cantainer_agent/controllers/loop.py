"""The agent's control loops: level-triggered, one snapshot of the cluster state per pass.

Every controller has one shape, ``sync(snapshot)`` (Kubernetes' sample-controller): it compares the
desired state in the snapshot with what it observes (kernel, /proc, disk) and applies the minimal
difference. It is idempotent, so running it too often is harmless and running it after a missed
event repairs everything. The loop owns the rest: one thread, so its controllers never race each
other; a pass when triggered (a raft commit, a container exit, an API write) and at least every
``period``; triggers during a pass fold into one next pass, spaced by the CPU the last pass used
(at least ``min_gap``); a failing controller is retried with back-off and logged once per new error.
A pass woken only by commits (:meth:`notify_commit`) says so in the snapshot (``commits_only``), so a
controller may look at nothing but the snapshot's ``changes`` (controllers/view.py); any other pass
(periodic, :meth:`trigger`, a retry) is a full one.
The thread runs at nice +``NICE``: on a starved host the raft tick and the API go first. Why these
numbers: docs/design/agent.md ("reconcile cost").
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Protocol

from ..errors import AgentError

log = logging.getLogger(__name__)

NICE = 10  # added to the loop thread's nice value (Linux: per thread)
RETRY_MIN = 0.2  # seconds before a failed controller is retried, doubling up to the period


class Controller(Protocol):
    name: str

    def sync(self, snapshot: dict) -> None: ...


def _lower_priority() -> None:
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + NICE)
    except OSError as exc:  # raising nice is always allowed; this is a sandbox or not Linux
        log.debug("controller thread keeps its priority: %s", exc)


class ControllerLoop:
    """Runs *controllers* in one thread; *read* returns the snapshot a pass hands to each."""

    def __init__(self, name: str, controllers: list[Controller], read: Callable[[], dict],
                 period: float | Callable[[], float] = 5.0, min_gap: float = 0.02, nice: bool = True) -> None:
        """*period* may be a function: asked before each wait (e.g. shorter on the raft leader)."""
        self.name = name
        self._controllers = controllers
        self._read = read
        self._period_of = period if callable(period) else (lambda: period)
        self._min_gap = min_gap
        self._nice = nice
        self._wake = threading.Event()
        self._event = True  # something other than a commit asked for a pass (the first pass is full)
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._generation = 0  # completed passes, for callers that wait for one
        self._running = False
        self._failures: dict[str, tuple[str, int]] = {}  # controller -> (last error, consecutive failures)
        self.last_gap = 0.0  # seconds the loop held back the latest pass (the CPU the one before used)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def _period(self) -> float:
        return self._period_of()

    def trigger(self) -> None:
        """A full pass soon (something happened on this host: a container exited, the API acted)."""
        self._event = True
        self._wake.set()

    def notify_commit(self) -> None:
        """A pass soon: the replicated state changed (controllers may look at the changes only)."""
        self._wake.set()

    def run_once_and_wait(self, timeout: float = 10.0) -> bool:
        """Trigger a pass and wait until a pass that started after this call has finished."""
        with self._done:
            # A pass already running may have read the state before our caller's change.
            target = self._generation + (2 if self._running else 1)
        self.trigger()
        deadline = time.monotonic() + timeout
        with self._done:
            while self._generation < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._done.wait(left):
                    return False
        return True

    def _run(self) -> None:
        if self._nice:
            _lower_priority()
        took, wait, retry = 0.0, self._period, None
        while not self._stop.is_set():
            woken = self._wake.wait(wait)
            self.last_gap = max(self._min_gap, took)
            if self._stop.wait(self.last_gap):  # let more triggers fold into this pass
                return
            self._wake.clear()
            commits_only = woken and retry is None and not self._event
            self._event = False
            with self._done:
                self._running = True
            started = time.thread_time()
            retry = self._pass(commits_only)
            took = time.thread_time() - started
            period = self._period
            wait = period if retry is None else min(period, retry)
            with self._done:
                self._running = False
                self._generation += 1
                self._done.notify_all()

    def _pass(self, commits_only: bool = False) -> float | None:
        """One pass; returns how soon to retry after a failure (None: all succeeded)."""
        retry: float | None = None
        try:
            snapshot = self._read()
        except Exception as exc:  # noqa: BLE001 - e.g. raft stalled or not started: retried
            return self._failed("snapshot", exc)
        if isinstance(snapshot, dict):
            snapshot.setdefault("changes", None)
            snapshot["commits_only"] = commits_only and snapshot["changes"] is not None
        for controller in self._controllers:
            try:
                controller.sync(snapshot)
            except Exception as exc:  # noqa: BLE001 - one failing controller must not stop the loop
                delay = self._failed(controller.name, exc)
                retry = delay if retry is None else min(retry, delay)
            else:
                if self._failures.pop(controller.name, None) is not None:
                    log.info("%s: %s recovered", self.name, controller.name)
        return retry

    def _failed(self, what: str, exc: Exception) -> float:
        message = f"{type(exc).__name__}: {exc}"
        last, count = self._failures.get(what, ("", 0))
        self._failures[what] = (message, count + 1)
        if message != last:  # the same error again is not news
            log.warning("%s: %s failed (retrying with back-off): %s", self.name, what, message,
                        exc_info=not _expected(exc))
        return min(self._period, RETRY_MIN * 2 ** count)


def _expected(exc: Exception) -> bool:
    """Errors the agent raises on purpose are logged without a traceback."""
    return isinstance(exc, (AgentError, OSError))
