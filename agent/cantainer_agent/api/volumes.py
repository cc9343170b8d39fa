"""Volume methods of the agent API.

``volume.ls`` -> ``[{name, host, created_at, labels, containers, mountpoint, host_down}]`` (any node);
``volume.inspect {name}`` -> one of those; ``volume.create {name, host?, labels?}`` -> the record and
``created`` (host: this node unless named; the directory is made by the first container);
``volume.rm {name}`` -> ``{removed, deleted}`` on the volume's host only: the record goes first (the
state machine refuses while a container mounts it), then the directory (workload.delete_volume).
Writes are exactly-once per request session; a retried rm is answered from the session table.
"""
from __future__ import annotations

import time
from typing import Callable

from .. import protocol
from ..cluster.views import down_hosts, volume_views
from ..consensus import RaftNode
from ..consensus.writes import replicate
from ..workload import Workload
from .errors import raft_of
from .requests import Reads, applied_before, session_of


class VolumeHandlers:
    def __init__(self, node: str, workload: Workload, get_raft: Callable[[], RaftNode | None], reads: Reads,
                 heartbeat_interval: float) -> None:
        self._node = node
        self._workload = workload
        self._get_raft = get_raft
        self._reads = reads
        self._heartbeat_interval = heartbeat_interval

    def handlers(self) -> dict[str, Callable[[dict], object]]:
        return {"volume.ls": self.ls, "volume.inspect": self.inspect, "volume.create": self.create,
                "volume.rm": self.rm}

    def _views(self, params: dict) -> list[dict]:
        state = self._reads.snapshot(raft_of(self._get_raft), params)["state"]
        return volume_views(state, down_hosts(state, time.time(), self._heartbeat_interval, self._node))

    def ls(self, params: dict) -> list[dict]:
        return self._views(params)

    def inspect(self, params: dict) -> dict:
        name = params.get("name")
        for view in self._views(params):
            if view["name"] == name:
                return view
        raise protocol.ProtocolError(protocol.NOT_FOUND, f"no volume named {name!r} — see `cantainer volume ls`")

    def create(self, params: dict) -> dict:
        return replicate(raft_of(self._get_raft), "create_volume", {
            "name": params.get("name"), "host": params.get("host") or self._node, "ts": time.time(),
            **({"labels": params["labels"]} if params.get("labels") is not None else {})},
            session_of(params, "volume.create"))

    def rm(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        name = params.get("name")
        state = self._reads.snapshot(raft, params)["state"]
        record = state.get("volumes", {}).get(name)
        retried = record is not None and applied_before(raft, params)  # only then does it change anything
        if record is not None and record["host"] != self._node and not retried:
            raise protocol.ProtocolError(protocol.CONFLICT, f"volume {name} is on {record['host']}, not on "
                                         f"{self._node}: its data can only be deleted there")
        # One lock over both steps: a start that records the volume anew meanwhile mounts it only after
        # the old data is renamed away.
        with self._workload.volumes_locked([name] if isinstance(name, str) else []):
            # the host is checked again inside the command: a volume made on another host since the read
            replicate(raft, "remove_volume", {"name": name, "host": self._node}, session_of(params, "volume.rm"))
            if retried and record is not None:  # a volume made since the first attempt: its data stays
                return {"removed": name, "deleted": False}
            try:
                deleted = self._workload.delete_volume(name)
            except OSError as error:
                raise protocol.ProtocolError(protocol.INTERNAL, f"volume {name} was removed from the cluster, but "
                                             f"its data on {self._node} could not be deleted: {error}") from None
        return {"removed": name, "deleted": deleted}
