"""One `up` or `down` of a cluster at a time on this workstation: an advisory lock beside the secret.

Two concurrent `up`s used to race to start the same agents and one failed with the agent's
"another agent is already running"; now the second says another `up` is in progress (and which
process), at once, before touching any host. The kernel drops the lock when the process ends.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from cantainer.errors import CantainerError
from cantainer.inventory import Inventory


class Busy(CantainerError):
    pass


def lock_path(inventory: Inventory) -> Path:
    return Path(f"{inventory.cluster.secret_file}.lock")


@contextlib.contextmanager
def cluster_lock(inventory: Inventory, command: str) -> Iterator[None]:
    """Hold the cluster's lock while `command` ("up", "down") runs; Busy if another one holds it."""
    path = lock_path(inventory)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            what = f"`{holder[1]}`" if len(holder) > 1 else "`up` or `down`"
            pid = f" (pid {holder[0]})" if holder else ""
            raise Busy(f"another {what} of cluster {inventory.cluster.name} is in progress on this workstation{pid}",
                       "wait for it to finish, then run this again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
