"""This host's containers: API methods that start/stop/remove them, and their reconciler.

Order of operations keeps the cluster state and the host consistent ("nothing half-done"):
- run: validate → replicate ``create_container`` (decides name and IP) → start the container with
  its veth attached before the command execs → report it running. If the start fails, the
  record is removed again, releasing the address.
- rm: stop/remove locally (process, mounts, cgroups, veth) → replicate ``remove_container``.

The reconciler is level-triggered: the cluster state's containers placed on this host vs what
the runtime finds on disk and in /proc. It reports exits (with exit code and OOM kills), marks a
container whose process vanished (host rebooted) as dead, stops containers whose desired state is
"stopped", and removes local containers the cluster no longer knows (orphans).

Methods (params → result):
``image.status {sha256}`` → ``{present}``;  ``image.import {sha256, path}`` → ``{sha256}``
``container.run {name?, network, image, image_sha256, command, env, workdir, limits}``
    → ``{name, id, ip, host, network}``
``container.stop {name, timeout}`` → ``{name, state, exit_code}``
``container.rm {name, force}`` → ``{removed}``
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Callable

from . import protocol
from .config import AgentConfig
from .network import HostNetwork
from .overlay import EndpointSpec, NetworkSpec, OverlayError, attach_container, detach_container, overlay_mtu
from .raft import RaftNode
from .runtime import (
    ChecksumMismatch,
    ContainerError,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ImageError,
    ImageStore,
    Runtime,
    SpecError,
)
from .service import _raft_or_unavailable, read_state, replicate
from .state import StateError, check_container_name

log = logging.getLogger(__name__)

INCOMING = "incoming"
MAX_STOP_TIMEOUT = 3600  # seconds between SIGTERM and SIGKILL


def observed_from(info: ContainerInfo | None) -> dict:
    """What the runtime shows, in the shape of the cluster state's ``observed`` record."""
    if info is None:
        return {"state": "dead", "exit_code": None, "pid": None, "started_at": None, "finished_at": None,
                "reason": "its process is gone (host restarted?)"}
    reason = "oom-killed" if info.oom_killed else (f"killed by signal {info.signal}" if info.signal else None)
    return {"state": info.state, "exit_code": info.exit_code, "pid": info.pid, "started_at": info.started_at,
            "finished_at": info.finished_at, "reason": reason}


def _same_observation(a: dict, b: dict) -> bool:
    keys = ("state", "exit_code", "pid", "started_at", "finished_at", "reason")
    return all(a.get(k) == b.get(k) for k in keys)


def _rejected(message: str) -> protocol.ProtocolError:
    return protocol.ProtocolError(protocol.REJECTED, message)


class LocalContainers:
    name = "containers"

    def __init__(self, cfg: AgentConfig, get_raft: Callable[[], RaftNode | None], network: HostNetwork,
                 trigger: Callable[[], None]) -> None:
        self._cfg = cfg
        self._get_raft = get_raft
        self._network = network
        self._trigger = trigger
        self.images = ImageStore(os.path.join(cfg.data_dir, "images"))
        self.runtime = Runtime(state_dir=os.path.join(cfg.data_dir, "containers"),
                               run_dir=os.path.join(cfg.run_dir, "containers"),
                               on_exit=lambda _info: trigger())
        self._busy: set[str] = set()  # container ids being started or removed by an API call
        self._busy_lock = threading.Lock()
        self._import_lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[[dict], object]]:
        return {
            "image.status": self.image_status,
            "image.import": self.image_import,
            "container.run": self.container_run,
            "container.stop": self.container_stop,
            "container.rm": self.container_rm,
        }

    def close(self) -> None:
        self.runtime.close()

    # -- images ---------------------------------------------------------------------------------
    def image_status(self, params: dict) -> dict:
        try:
            return {"present": self.images.has(params.get("sha256", ""))}
        except ImageError as error:
            raise _rejected(str(error)) from None

    def image_import(self, params: dict) -> dict:
        sha256, path = params.get("sha256", ""), params.get("path", "")
        incoming = os.path.join(self.images.root, INCOMING)
        if not isinstance(path, str) or os.path.dirname(os.path.abspath(path)) != incoming:
            raise _rejected(f"image tarballs are imported from {incoming} only")
        try:
            with self._import_lock:  # concurrent `run`s may push the same image at once
                if not self.images.has(sha256):
                    self.images.import_tarball(path, sha256)
        except ChecksumMismatch as error:
            raise _rejected(f"image sha256 mismatch: {error}") from None
        except ImageError as error:
            raise _rejected(f"image refused: {error}") from None
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return {"sha256": sha256}

    # -- run --------------------------------------------------------------------------------------
    def container_run(self, params: dict) -> dict:
        raft = _raft_or_unavailable(self._get_raft)
        name = params.get("name") or f"c-{secrets.token_hex(3)}"
        sha256 = params.get("image_sha256", "")
        try:
            check_container_name(name)
            rootfs = self.images.rootfs_path(sha256)
            # Validate the whole spec before anything is recorded in the cluster.
            ContainerSpec(id="probe", name=name, image=sha256, command=params.get("command") or ["/bin/sh"],
                          env=params.get("env") or {}, workdir=params.get("workdir") or "/",
                          limits=params.get("limits") or {})
        except (StateError, SpecError, ImageError) as error:
            raise _rejected(str(error)) from None
        container_id = secrets.token_hex(6)
        with self._busy_lock:  # before the record exists, so the reconciler never sees it half-made
            self._busy.add(container_id)
        try:
            record = replicate(raft, "create_container", {"spec": {
                "name": name, "id": container_id, "host": self._cfg.node, "network": params.get("network"),
                "image": params.get("image") or sha256[:12], "command": params.get("command") or ["/bin/sh"],
                "env": params.get("env") or {}, "workdir": params.get("workdir") or "/",
                "limits": params.get("limits") or {}}, "ts": time.time()})
            info = self._start(record, sha256, rootfs, tty=bool(params.get("tty")),
                               stdin=bool(params.get("interactive")))
        except (ContainerError, OverlayError, OSError) as error:
            self._undo_create(raft, record, container_id)
            raise protocol.ProtocolError(protocol.INTERNAL, f"container {name} failed to start: {error}") from None
        finally:
            with self._busy_lock:
                self._busy.discard(container_id)
        self._report(raft, record, info)
        self._trigger()
        return {"name": record["name"], "id": container_id, "ip": record["ip"], "host": record["host"],
                "network": record["network"]}

    def _start(self, record: dict, sha256: str, rootfs: str, tty: bool = False, stdin: bool = False) -> ContainerInfo:
        """*tty*/*stdin* (run -t/-i): the container waits (briefly) for `attach` — see runtime/shim.py."""
        state = read_state(self._get_raft())
        network = NetworkSpec(record["network"], state["networks"][record["network"]]["vni"])
        endpoint = EndpointSpec(record["id"], record["network"], record["ip"], record["host"], self._cfg.address)
        mtu = overlay_mtu(self._network.underlay_mtu)
        spec = ContainerSpec(id=record["id"], name=record["name"], image=sha256, command=record["command"],
                             env=record["env"], workdir=record["workdir"], limits=record["limits"],
                             hosts=[(record["ip"], (record["name"],))], resolv_conf="", tty=tty, stdin=stdin)
        return self.runtime.start(spec, rootfs, before_exec=lambda pid: attach_container(pid, endpoint, network, mtu))

    def _undo_create(self, raft: RaftNode, record: dict, container_id: str) -> None:
        """Take back what a run that failed to start did: the container, its address, and its
        network if this run created it (the network's created_at is the container's then)."""
        name = record["name"]
        try:
            self.runtime.remove(container_id, force=True)
        except ContainerNotFound:
            pass
        except ContainerError:
            log.exception("cleanup of failed container %s", name)
        detach_container(container_id)
        try:
            replicate(raft, "remove_container", {"name": name})
            network = read_state(raft)["networks"].get(record["network"])
            if network is not None and network["created_at"] == record["created_at"] and not network["ips"]:
                replicate(raft, "delete_network", {"cidr": record["network"]})
        except protocol.ProtocolError:
            log.exception("could not release %s after a failed start", name)

    def _report(self, raft: RaftNode, record: dict, info: ContainerInfo | None) -> None:
        observed = observed_from(info)
        if _same_observation(observed, record.get("observed", {})):
            return
        try:
            replicate(raft, "container_observed", {"name": record["name"], "host": self._cfg.node,
                                                   "observed": observed, "ts": time.time()})
        except protocol.ProtocolError as error:
            log.warning("could not report container %s: %s", record["name"], error.message)

    # -- stop / rm --------------------------------------------------------------------------------
    def _mine(self, name: object) -> dict:
        try:
            check_container_name(name)
        except StateError as error:
            raise _rejected(str(error)) from None
        record = read_state(_raft_or_unavailable(self._get_raft))["containers"].get(name)
        if record is None:
            raise protocol.ProtocolError(protocol.NOT_FOUND, f"no container named {name!r}")
        if record["host"] != self._cfg.node:
            raise _rejected(f"container {name} runs on {record['host']}, not on {self._cfg.node}")
        return record

    def container_stop(self, params: dict) -> dict:
        raft = _raft_or_unavailable(self._get_raft)
        record = self._mine(params.get("name"))
        timeout = params.get("timeout", 10.0)
        if type(timeout) not in (int, float) or not 0 <= timeout <= MAX_STOP_TIMEOUT:  # also refuses NaN
            raise _rejected(f"stop timeout {timeout!r} must be a number of seconds from 0 to {MAX_STOP_TIMEOUT}")
        replicate(raft, "set_container_desired", {"name": record["name"], "desired": "stopped"})
        try:
            info = self.runtime.stop(record["id"], timeout=timeout)
        except ContainerNotFound:
            info = None
        self._report(raft, record, info)
        return {"name": record["name"], "state": info.state if info else "dead", "exit_code": info.exit_code if info else None}

    def container_rm(self, params: dict) -> dict:
        raft = _raft_or_unavailable(self._get_raft)
        record = self._mine(params.get("name"))
        with self._busy_lock:
            self._busy.add(record["id"])
        try:
            try:
                self.runtime.remove(record["id"], force=bool(params.get("force")))
            except ContainerNotFound:
                pass
            except ContainerError as error:
                raise _rejected(f"{error} — stop it first or use `rm -f`") from None
            detach_container(record["id"])
            replicate(raft, "remove_container", {"name": record["name"]})
        finally:
            with self._busy_lock:
                self._busy.discard(record["id"])
        self._trigger()
        return {"removed": record["name"]}

    # -- reconcile --------------------------------------------------------------------------------
    def reconcile(self) -> None:
        raft = self._get_raft()
        if raft is None:
            return
        # Observe first, then read the desired state: a container started after the state was
        # read would otherwise look like an orphan (its record is committed before it starts).
        with self._busy_lock:
            busy = set(self._busy)
        local = {info.id: info for info in self.runtime.list()}
        snapshot = raft.snapshot()
        if not snapshot["ready"]:
            return  # a replica still replaying its log would "correct" records back to old states
        state = snapshot["state"]
        mine = {c["id"]: c for c in state["containers"].values() if c["host"] == self._cfg.node}
        for container_id, record in mine.items():
            if container_id in busy:
                continue
            info = local.get(container_id)
            if info is not None and info.state == "created":
                # Not being started by this agent (not busy), so it never will run: its start was
                # interrupted, or it ran and its runtime records in /run went with a reboot.
                info = None
            if record["desired"] == "stopped" and info is not None and info.running:
                info = self.runtime.stop(container_id, timeout=10.0)
            if info is None and record["observed"]["state"] in ("exited", "dead"):
                continue  # already reported gone; nothing local to compare with
            self._report(raft, record, info)
        for container_id, info in local.items():
            if container_id not in mine and container_id not in busy:
                log.info("removing orphaned container %s (%s): the cluster does not know it", info.name, container_id)
                self.runtime.remove(container_id, force=True)
                detach_container(container_id)
