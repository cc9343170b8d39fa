"""The containers controller: this host's containers as the cluster state wants them.

``sync(snapshot)`` compares the records placed on this host with what the runtime finds on disk
and in /proc: it starts containers the cluster placed here (``placed``, never started), restarts
ended ones as their restart policy says (controllers/restarts.py: back-off, from local records —
raft need not have a leader), runs their health checks (controllers/health.py), reports exits,
OOM kills, health and restarts, marks a container whose process vanished (the host rebooted) as
dead, stops containers whose desired state is "stopped", removes exited containers started with
--rm (``auto_remove``), and removes local containers the cluster does not know (orphans — also
what `rm -f` of a container on a host that was down left behind, and a service task moved away
while its host was down). Starts and restarts run on worker threads, marked *in flight*
(workload.py), as are the API's, which the controller leaves alone. A replica still replaying its
log is not trusted ("ready"): after a reboot nothing restarts until this replica has caught up with
a leader — so a task the cluster moved meanwhile is removed, never restarted (fencing). A service
task is not restarted either while this host has been without a leader for ``reschedule_after``.
A pass woken only by commits that touched no container of this host ends at once (timers, workers
and the periodic pass trigger full passes, which look at everything).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..consensus import CommandRejected, RaftError, RaftNode
from ..consensus.writes import Session, replicate
from ..overlay import OverlayError
from ..runtime import ContainerError, ImageNotFound, RuntimeFailure
from ..workload import Workload, observed_from
from . import restarts
from .health import HealthMonitor

log = logging.getLogger(__name__)

ENDED = ("exited", "dead")
START_WORKERS = 4  # starts, restarts and stops run here, off the loop thread
STOP_TIMEOUT = 10.0  # seconds from the stop signal to SIGKILL


class ContainersController:
    name = "containers"

    def __init__(self, node: str, workload: Workload, raft: Callable[[], RaftNode | None],
                 trigger: Callable[[], None] | None = None, reschedule_after: float = 30.0,
                 health: HealthMonitor | None = None) -> None:
        self._node = node
        self._workload = workload
        self._raft = raft
        self._trigger = trigger or (lambda: None)
        self._reschedule_after = reschedule_after
        self._session = Session.new(f"containers@{node}")  # this controller's writes, exactly once
        self._health = health
        self._pool = ThreadPoolExecutor(max_workers=START_WORKERS, thread_name_prefix="start")
        self._books: dict[str, dict] = {}      # restart books of containers without a directory here
        self._failed: dict[str, dict] = {}     # container id -> the observation of its failed start
        self._timers: dict[str, threading.Timer] = {}
        self._started_up = False
        self._fenced_logged: set[str] = set()
        self._names: set[str] | None = None  # this host's container names as of the last full pass

    def close(self) -> None:
        for timer in list(self._timers.values()):
            timer.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._health is not None:
            self._health.close()

    def _concerned(self, changes: set[tuple[str, str]], containers: dict) -> bool:
        """Did these changes touch a container that is, or was, on this host?"""
        if self._names is None:
            return True
        for section, key in changes:
            if section == "containers":
                record = containers.get(key)
                if key in self._names or (record is not None and record["host"] == self._node):
                    return True
        return False

    def sync(self, snapshot: dict) -> None:
        raft = self._raft()
        if raft is None or not snapshot["ready"]:
            return  # a replica still replaying its log would "correct" records back to old states
        state = snapshot["state"]
        if snapshot.get("commits_only") and not self._concerned(snapshot["changes"], state["containers"]):
            return
        self._names = None  # until this pass is through
        writable = snapshot.get("leader") is not None  # reports wait for a leader; restarts do not
        runtime = self._workload.runtime
        busy = self._workload.in_flight_ids()
        local = {info.id: info for info in runtime.list()}
        mine = {c["id"]: c for c in state["containers"].values() if c["host"] == self._node}
        if not self._started_up and writable:
            self._bring_back_always(raft, mine)
            self._started_up = True
        health_wanted: dict[str, tuple] = {}
        now = time.time()
        for container_id, record in mine.items():
            if container_id in busy:
                continue
            info = local.get(container_id)
            if info is not None and info.state == "created":
                # Not being started by this agent (not in flight), so it never will run: its start was
                # interrupted, or it ran and its runtime records in /run went with a reboot.
                info = None
            if record["desired"] == "stopped" and info is not None and info.running:
                self._stop(record)  # on a worker: a stop may wait its 10 s for SIGKILL
                continue
            if record.get("auto_remove") and (info is None or info.state in ENDED) and container_id not in self._failed:
                self._remove(raft, record)
                continue
            if info is None and record.get("placed") and record["observed"]["state"] == "created" \
                    and record["desired"] == "running" and container_id not in self._failed:
                self._submit(record, state, restart=False)
                continue
            if writable and (info is not None or container_id in self._failed):
                self._report(raft, record, info)  # also an exit about to be restarted: ps shows it
            if self._restart(record, info, snapshot, now):
                continue
            if info is not None and info.running and record.get("health"):
                health_wanted[container_id] = (record["name"], record["health"], info.started_at or 0.0,
                                               record["observed"].get("health"))
            if info is None and record["observed"]["state"] not in ENDED and writable:
                self._report(raft, record, info)  # its process is gone (the host rebooted): dead
        if self._health is not None:
            self._health.sync(health_wanted)
        strangers = [cid for cid in local if cid not in mine and cid not in busy]
        self._remove_orphans(raft, local, strangers)
        for container_id in [cid for cid in self._failed if cid not in mine]:
            self._failed.pop(container_id, None)
            self._books.pop(container_id, None)
        self._names = {record["name"] for record in mine.values()}

    # -- reports --------------------------------------------------------------------------------
    def _report(self, raft: RaftNode, record: dict, info) -> None:
        extras: dict = {}
        if record["id"] in self._failed and (info is None or info.state in ENDED):
            observed = dict(self._failed[record["id"]])
        else:
            observed = observed_from(info)
        book = self._book(record["id"], info is not None)
        if book["count"] or record["observed"].get("restart_count"):
            extras = {"restart_count": book["count"], "restarts": book["history"]}
        if record.get("health") and info is not None and info.running and self._health is not None:
            health = self._health.status(record["id"])
            if health is not None:
                extras["health"] = health
        self._workload.report(raft, record, info, self._session, observed={**observed, **extras})

    # -- restarts -------------------------------------------------------------------------------
    def _book(self, container_id: str, on_disk: bool) -> dict:
        if on_disk:
            book = restarts.load(self._workload.runtime.container_dir(container_id))
            if book["count"] or container_id not in self._books:
                return book
        return self._books.get(container_id, restarts.empty())

    def _restart(self, record: dict, info, snapshot: dict, now: float) -> bool:
        """Restart *record*'s container if its policy says so and its back-off has passed (or arm a
        timer for then); True when a restart is under way or waiting."""
        container_id = record["id"]
        if record["desired"] != "running" or "retire" in record or record.get("auto_remove"):
            return False
        failed = self._failed.get(container_id)
        if info is not None and info.state not in ENDED:
            return False
        if info is None and failed is None and not record.get("layers"):
            return False  # nothing here to start it from
        state = info.state if info is not None else "dead"
        exit_code = info.exit_code if info is not None else (failed or {}).get("exit_code")
        book = self._book(container_id, info is not None)
        if record["observed"].get("restart_count", 0) > book["count"]:  # the cluster remembers more
            book = {**book, "count": record["observed"]["restart_count"]}
        if not restarts.wants_restart(record.get("restart"), state, exit_code, book["count"]):
            return False
        if record.get("service_id") and snapshot.get("leaderless_for", 0.0) >= self._reschedule_after:
            if container_id not in self._fenced_logged:
                self._fenced_logged.add(container_id)
                log.warning("not restarting task %s: no leader for %.0f s, the cluster may have moved it",
                            record["name"], snapshot["leaderless_for"])
            return False
        self._fenced_logged.discard(container_id)
        started_at = info.started_at if info is not None else None
        exited_at = (info.finished_at if info is not None else (failed or {}).get("finished_at")) or now
        series = restarts.series_after(book["series"], started_at, exited_at)
        delay = restarts.backoff(series)
        due = exited_at + delay
        if now < due:
            self._arm(container_id, due - now)
            return True
        book = restarts.noted({**book, "series": series}, now, delay, exit_code, exited_at)
        self._submit(record, snapshot["state"], restart=info is not None, book=book)
        return True

    def _arm(self, container_id: str, delay: float) -> None:
        timer = self._timers.get(container_id)
        if timer is not None and timer.is_alive():
            return
        timer = threading.Timer(delay, self._trigger)
        timer.daemon = True
        self._timers[container_id] = timer
        timer.start()

    def _submit(self, record: dict, state: dict, restart: bool, book: dict | None = None) -> None:
        network = state["networks"].get(record["network"])
        if network is None:
            return
        marker = self._workload.in_flight(record["id"])
        marker.__enter__()  # held until the worker is done: the next passes leave it alone

        def work() -> None:
            try:
                self._start(record, network, restart, book)
            finally:
                marker.__exit__(None, None, None)
                self._trigger()

        self._pool.submit(work)

    def _start(self, record: dict, network: dict, restart: bool, book: dict | None) -> None:
        container_id = record["id"]
        runtime = self._workload.runtime
        if book is not None:
            if restart:
                restarts.save(runtime.container_dir(container_id), book)
            self._books[container_id] = book
            log.info("restarting container %s (restart %d, after %.1f s)", record["name"], book["count"],
                     book["history"][-1]["delay"])
        try:
            if restart:
                self._workload.restart(record, network)
            else:
                try:
                    self._workload.remove_local(container_id)  # a leftover of a start that was cut short
                except ContainerError:
                    pass
                with self._workload.image_layers(record.get("layers") or []) as lowers:
                    self._workload.start(record, network, record["image_digest"][7:], lowers,
                                         tty=bool(record.get("tty")), stdin=bool(record.get("interactive")),
                                         security=record.get("security"))
                if book is not None:
                    restarts.save(runtime.container_dir(container_id), book)
            self._failed.pop(container_id, None)
        except (RuntimeFailure, OverlayError, OSError) as error:
            code = getattr(error, "exit_code", None)
            if isinstance(error, ImageNotFound):
                error = f"its image is not on this host ({error})"
            log.warning("container %s failed to start: %s", record["name"], error)
            self._failed[container_id] = {"state": "dead", "exit_code": code if code in (126, 127) else None,
                                          "pid": None, "started_at": None, "finished_at": time.time(),
                                          "reason": f"failed to start: {error}"}
            if restart:  # its directory stays: the next restart starts from it
                return
            try:
                self._workload.remove_local(container_id)
            except RuntimeFailure:
                pass

    def _stop(self, record: dict) -> None:
        marker = self._workload.in_flight(record["id"])
        marker.__enter__()

        def work() -> None:
            try:
                self._workload.runtime.stop(record["id"], timeout=STOP_TIMEOUT)
            except RuntimeFailure as error:
                log.warning("could not stop container %s: %s", record["name"], error)
            finally:
                marker.__exit__(None, None, None)
                self._trigger()

        self._pool.submit(work)

    def _bring_back_always(self, raft: RaftNode, mine: dict) -> None:
        """Agent start-up: ``always`` containers that were stopped run again (docker's rule; not
        ``unless-stopped``)."""
        for record in mine.values():
            if record["desired"] == "stopped" and (record.get("restart") or {}).get("policy") == "always" \
                    and "retire" not in record:
                try:
                    replicate(raft, "set_container_desired", {"name": record["name"], "desired": "running"},
                              self._session)
                    log.info("restart policy always: container %s runs again after the agent's start", record["name"])
                except RaftError as error:
                    log.warning("could not bring back container %s: %s", record["name"], error)

    # -- removal --------------------------------------------------------------------------------
    def _remove(self, raft: RaftNode, record: dict) -> None:
        """--rm: the container has exited; it goes, and its address with it."""
        with self._workload.in_flight(record["id"]):
            self._workload.remove_local(record["id"])
            try:
                replicate(raft, "remove_container", {"name": record["name"]}, self._session)
            except CommandRejected:
                pass  # removed meanwhile (`cantainer rm`)

    def _remove_orphans(self, raft: RaftNode, local: dict, strangers: list[str]) -> None:
        if not strangers:
            return
        # The snapshot was taken before the local listing: a container started since then has a
        # record the snapshot cannot show. Only what a fresh read does not know is an orphan.
        known = {c["id"] for c in raft.snapshot()["state"]["containers"].values()}
        busy = self._workload.in_flight_ids()
        for container_id in strangers:
            if container_id in known or container_id in busy:
                continue
            log.info("removing orphaned container %s (%s): the cluster does not know it",
                     local[container_id].name, container_id)
            self._workload.remove_local(container_id)
            self._books.pop(container_id, None)
