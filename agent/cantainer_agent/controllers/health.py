"""Health checks of this host's running containers, with docker's semantics.

A container with a check starts ``starting``; a probe every ``interval`` (the first one ``interval``
after it started) runs the check inside it (``python3 -m cantainer_agent probe``: exec forks, which
the agent's threads must not), killed after ``timeout``. Exit 0 makes it ``healthy`` and clears the
failing streak; any other outcome adds to the streak — except while it is still ``starting`` within
``start_period`` — and ``retries`` failures in a row make it ``unhealthy``. Transitions (only) call
*changed*, so the containers controller reports them to the cluster; a restarted container (a new
``started_at``) starts over. Probes run on a few worker threads; the scheduling thread never waits.
"""
from __future__ import annotations

import heapq
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import cantainer_agent

from ..cluster.specs import health_argv

log = logging.getLogger(__name__)

PROBE_WORKERS = 4
OUTPUT_KEPT = 4096  # bytes of a probe's output kept (docker keeps 4 KiB too)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cantainer_agent.__file__)))


def next_state(status: str, streak: int, healthy: bool, in_start_period: bool, retries: int) -> tuple[str, int]:
    """Docker's transition for one probe result: (status, failing streak) after it."""
    if healthy:
        return "healthy", 0
    if status == "starting" and in_start_period:
        return status, streak
    streak += 1
    return ("unhealthy" if streak >= retries else status), streak


@dataclass
class Watch:
    container_id: str
    name: str
    spec: dict
    started_at: float
    status: str = "starting"
    streak: int = 0
    since: float = 0.0
    output: str = ""
    shown_streak: int = 0  # the streak when the status last changed: what the cluster is told
    due: float = 0.0
    probing: bool = False
    gone: bool = False

    def view(self) -> dict:
        return {"status": self.status, "since": self.since, "streak": self.shown_streak, "output": self.output}


@dataclass(order=True)
class _Due:
    at: float
    container_id: str = field(compare=False)


class HealthMonitor:
    """Runs the checks; ``sync(wanted)`` says which containers to watch (from the controller's pass)."""

    def __init__(self, state_dir: str, run_dir: str, changed: Callable[[], None], python: str | None = None) -> None:
        self._state_dir, self._run_dir = state_dir, run_dir
        self._changed = changed
        self._python = python or sys.executable
        self._lock = threading.Lock()
        self._watches: dict[str, Watch] = {}
        self._queue: list[_Due] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=PROBE_WORKERS, thread_name_prefix="health")
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def status(self, container_id: str) -> dict | None:
        with self._lock:
            watch = self._watches.get(container_id)
            return watch.view() if watch is not None else None

    def sync(self, wanted: dict[str, tuple[str, dict, float, dict | None]]) -> None:
        """*wanted*: {container id: (name, health spec, started_at, last reported health or None)} for
        every running container with a check. A known one whose start time changed starts over."""
        now = time.time()
        with self._lock:
            for container_id in list(self._watches):
                if container_id not in wanted:
                    self._watches.pop(container_id).gone = True
            for container_id, (name, spec, started_at, reported) in wanted.items():
                watch = self._watches.get(container_id)
                if watch is not None and watch.started_at == started_at and watch.spec == spec:
                    watch.name = name
                    continue
                if watch is not None:
                    watch.gone = True
                watch = Watch(container_id, name, spec, started_at, since=now)
                if reported and reported.get("since", 0) >= started_at:  # the same process: carry on
                    watch.status, watch.since = reported["status"], reported["since"]
                    watch.streak, watch.output = reported.get("streak", 0), reported.get("output", "")
                    watch.shown_streak = watch.streak
                watch.due = max(now, started_at + spec["interval"]) if watch.status == "starting" else \
                    now + spec["interval"]
                self._watches[container_id] = watch
                heapq.heappush(self._queue, _Due(watch.due, container_id))
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while self._queue and (self._queue[0].container_id not in self._watches
                                       or self._watches[self._queue[0].container_id].due != self._queue[0].at):
                    heapq.heappop(self._queue)  # stale entries: unwatched, or rescheduled
                wait = self._queue[0].at - time.time() if self._queue else 5.0
                if wait <= 0:
                    due = heapq.heappop(self._queue)
                    watch = self._watches[due.container_id]
                    watch.probing = True
                    self._pool.submit(self._probe, watch)
                    continue
            self._wake.wait(min(max(wait, 0.01), 5.0))
            self._wake.clear()

    def _probe(self, watch: Watch) -> None:
        spec = watch.spec
        started = time.time()
        argv = [self._python, "-m", "cantainer_agent", "probe", "--state-dir", self._state_dir,
                "--run-dir", self._run_dir, "--timeout", str(spec["timeout"]), watch.container_id, "--",
                *health_argv(spec)]
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=spec["timeout"] + 10,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PACKAGE_ROOT})
            healthy = result.returncode == 0
            output = (result.stdout + result.stderr)[-OUTPUT_KEPT:].decode("utf-8", "replace")
        except (OSError, subprocess.SubprocessError) as error:
            healthy, output = False, f"the probe could not run: {error}"
        changed = False
        with self._lock:
            watch.probing = False
            if watch.gone:
                return
            in_start = started - watch.started_at < spec["start_period"]
            status, watch.streak = next_state(watch.status, watch.streak, healthy, in_start, spec["retries"])
            if status != watch.status:
                watch.status, watch.since, watch.output, changed = status, time.time(), output, True
                watch.shown_streak = watch.streak
                log.info("container %s is %s%s", watch.name, status, f": {output.strip()[-200:]}" if output.strip()
                         and status == "unhealthy" else "")
            watch.due = time.time() + spec["interval"]
            heapq.heappush(self._queue, _Due(watch.due, watch.container_id))
        self._wake.set()
        if changed:
            self._changed()
