"""The containers controller: this host's containers as the cluster state wants them.

``sync(snapshot)`` compares the records placed on this host with what the runtime finds on disk
and in /proc: it reports exits (exit code, OOM kill), marks a container whose process vanished
(the host rebooted) as dead, stops containers whose desired state is "stopped", removes exited
containers started with --rm (``auto_remove``), and removes local containers the cluster does not
know (orphans — also what `rm -f` of a container on a host that was down left behind). Starts and
removals in flight through the API are left alone (workload.py). A replica still replaying its
log is not trusted ("ready").
"""
from __future__ import annotations

import logging
from typing import Callable

from ..consensus import CommandRejected, RaftNode
from ..consensus.writes import Session, replicate
from ..workload import Workload

log = logging.getLogger(__name__)


class ContainersController:
    name = "containers"

    def __init__(self, node: str, workload: Workload, raft: Callable[[], RaftNode | None]) -> None:
        self._node = node
        self._workload = workload
        self._raft = raft
        self._session = Session.new(f"containers@{node}")  # this controller's writes, exactly once

    def sync(self, snapshot: dict) -> None:
        raft = self._raft()
        if raft is None or not snapshot["ready"]:
            return  # a replica still replaying its log would "correct" records back to old states
        runtime = self._workload.runtime
        busy = self._workload.in_flight_ids()
        local = {info.id: info for info in runtime.list()}
        mine = {c["id"]: c for c in snapshot["state"]["containers"].values() if c["host"] == self._node}
        for container_id, record in mine.items():
            if container_id in busy:
                continue
            info = local.get(container_id)
            if info is not None and info.state == "created":
                # Not being started by this agent (not in flight), so it never will run: its start was
                # interrupted, or it ran and its runtime records in /run went with a reboot.
                info = None
            if record["desired"] == "stopped" and info is not None and info.running:
                info = runtime.stop(container_id, timeout=10.0)
            if record.get("auto_remove") and (info is None or info.state in ("exited", "dead")):
                self._remove(raft, record)
                continue
            if info is None and record["observed"]["state"] in ("exited", "dead"):
                continue  # already reported gone; nothing local to compare with
            self._workload.report(raft, record, info, self._session)
        strangers = [cid for cid in local if cid not in mine and cid not in busy]
        self._remove_orphans(raft, local, strangers)

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
