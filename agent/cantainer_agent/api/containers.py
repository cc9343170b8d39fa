"""Container methods of the agent API.

``container.run {name?, network, image, image_sha256, command, env, workdir, limits, tty?, interactive?}``
    -> ``{name, id, ip, host, network}`` (on the host that runs it)
``container.stop {name, timeout}`` -> ``{name, state, exit_code}``;  ``container.rm {name, force}`` -> ``{removed}``
``container.ps`` -> ``[{name, id, host, network, ip, mac, image, command, state, exit_code, …}]`` (any node)

Validation happens before anything is recorded; the record (name, address) is decided in raft;
the start and removal order is workload.py's.
"""
from __future__ import annotations

import secrets
import time
from typing import Callable

from .. import protocol
from ..cluster.state import check_container_name
from ..cluster.views import container_view
from ..consensus import RaftNode
from ..consensus.writes import replicate
from ..overlay import OverlayError
from ..runtime import ContainerError, ContainerNotFound, ContainerSpec
from ..workload import Workload
from .errors import raft_of, rejected

MAX_STOP_TIMEOUT = 3600  # seconds between SIGTERM and SIGKILL


class ContainerHandlers:
    def __init__(self, node: str, workload: Workload, get_raft: Callable[[], RaftNode | None],
                 trigger: Callable[[], None]) -> None:
        self._node = node
        self._workload = workload
        self._get_raft = get_raft
        self._trigger = trigger

    def handlers(self) -> dict[str, Callable[[dict], object]]:
        return {"container.run": self.run, "container.stop": self.stop, "container.rm": self.rm,
                "container.ps": self.ps}

    def run(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        name = params.get("name") or f"c-{secrets.token_hex(3)}"
        sha256 = params.get("image_sha256", "")
        check_container_name(name)
        rootfs = self._workload.images.rootfs_path(sha256)
        # Validate the whole spec before anything is recorded in the cluster.
        ContainerSpec(id="probe", name=name, image=sha256, command=params.get("command") or ["/bin/sh"],
                      env=params.get("env") or {}, workdir=params.get("workdir") or "/",
                      limits=params.get("limits") or {})
        container_id = secrets.token_hex(6)
        # in flight before the record exists, so the controller never sees it half-made
        with self._workload.in_flight(container_id):
            record = replicate(raft, "create_container", {"spec": {
                "name": name, "id": container_id, "host": self._node, "network": params.get("network"),
                "image": params.get("image") or sha256[:12], "command": params.get("command") or ["/bin/sh"],
                "env": params.get("env") or {}, "workdir": params.get("workdir") or "/",
                "limits": params.get("limits") or {}}, "ts": time.time()})
            vni = raft.snapshot()["state"]["networks"][record["network"]]["vni"]
            try:
                info = self._workload.start(record, vni, sha256, rootfs, tty=bool(params.get("tty")),
                                            stdin=bool(params.get("interactive")))
            except (ContainerError, OverlayError, OSError) as error:
                self._workload.undo_create(raft, record)
                raise protocol.ProtocolError(protocol.INTERNAL, f"container {name} failed to start: {error}") from None
        self._workload.report(raft, record, info)
        self._trigger()
        return {"name": record["name"], "id": container_id, "ip": record["ip"], "host": record["host"],
                "network": record["network"]}

    def _mine(self, raft: RaftNode, name: object) -> dict:
        check_container_name(name)
        record = raft.snapshot()["state"]["containers"].get(name)
        if record is None:
            raise protocol.ProtocolError(protocol.NOT_FOUND, f"no container named {name!r}")
        if record["host"] != self._node:
            raise rejected(f"container {name} runs on {record['host']}, not on {self._node}")
        return record

    def stop(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        record = self._mine(raft, params.get("name"))
        timeout = params.get("timeout", 10.0)
        if type(timeout) not in (int, float) or not 0 <= timeout <= MAX_STOP_TIMEOUT:  # also refuses NaN
            raise rejected(f"stop timeout {timeout!r} must be a number of seconds from 0 to {MAX_STOP_TIMEOUT}")
        replicate(raft, "set_container_desired", {"name": record["name"], "desired": "stopped"})
        try:
            info = self._workload.runtime.stop(record["id"], timeout=timeout)
        except ContainerNotFound:
            info = None
        self._workload.report(raft, record, info)
        return {"name": record["name"], "state": info.state if info else "dead",
                "exit_code": info.exit_code if info else None}

    def rm(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        record = self._mine(raft, params.get("name"))
        with self._workload.in_flight(record["id"]):
            try:
                self._workload.remove_local(record["id"], force=bool(params.get("force")))
            except ContainerError as error:
                raise rejected(f"{error} — stop it first or use `rm -f`") from None
            replicate(raft, "remove_container", {"name": record["name"]})
        self._trigger()
        return {"removed": record["name"]}

    def ps(self, _params: dict) -> list[dict]:
        state = raft_of(self._get_raft).snapshot()["state"]
        return [container_view(record) for _, record in sorted(state["containers"].items())]
