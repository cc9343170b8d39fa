"""On-disk records of a container and its state derived from them (level-triggered, with /proc).

``<state_dir>/<id>/config.json`` (agent, at start), ``exit.json`` (supervisor, at exit), ``log``,
``upper``/``work``/``rootfs`` (the overlay); ``<run_dir>/<id>/pids.json`` (tmpfs: gone on reboot).
State: ``exited`` (exit.json), ``running`` (pids.json of this boot and init alive with its recorded
start time), ``dead`` (started, nothing left, no exit recorded), ``created`` (a start in progress or
interrupted). A pid is trusted only with its /proc start time. Table: docs/design/runtime.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from . import linux
from .spec import ContainerSpec

CREATED = "created"
RUNNING = "running"
EXITED = "exited"
DEAD = "dead"


def read_json(path: str) -> dict | None:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: dict, durable: bool = False) -> None:
    """Atomic replace (temp file + rename); fsync only if *durable*.

    Container records need no fsync: they matter across agent crashes (the page cache survives
    those), and after a machine crash the containers are gone anyway.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    state: str
    spec: ContainerSpec | None  # None only for a corrupt record (reported as dead)
    pid: int | None = None  # host pid of the container's init while running
    shim_pid: int | None = None
    exit_code: int | None = None  # 128+N when killed by signal N
    signal: int | None = None
    oom_killed: bool = False
    stop_reason: str | None = None  # who stopped it, when that was recorded (e.g. "stopped by down")
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    log_path: str = ""

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.id

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "state": self.state,
            "spec": self.spec.to_dict() if self.spec else None,
            "pid": self.pid, "shim_pid": self.shim_pid, "exit_code": self.exit_code, "signal": self.signal,
            "oom_killed": self.oom_killed, "stop_reason": self.stop_reason, "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at, "log_path": self.log_path,
        }


def derive_state(config: dict | None, pids: dict | None, exit_record: dict | None,
                 boot_id: str, alive=linux.is_alive) -> tuple[str, int | None, int | None]:
    """(state, init pid or None, shim pid or None) from the records; *alive(pid, start)* probes /proc."""
    if exit_record is not None:
        return EXITED, None, None
    if pids is not None and pids.get("boot_id") == boot_id:
        pid, shim = pids.get("pid"), pids.get("shim_pid")
        shim_alive = alive(shim, pids.get("shim_start"))
        if alive(pid, pids.get("pid_start")):
            return RUNNING, pid, shim if shim_alive else None
        if shim_alive:
            return RUNNING, None, shim
        return DEAD, None, None
    if pids is None and config is not None and config.get("boot_id") == boot_id:
        return CREATED, None, None
    return DEAD, None, None
