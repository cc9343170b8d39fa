"""The volumes controller: tells the cluster whether each volume of this host holds anything.

``sync(snapshot)`` looks into the directory of every volume the state places on this host (one
``scandir`` entry is enough: it never walks the data) and replicates ``volume_observed`` when the
answer differs from the record — so a volume's emptiness is known to the cluster even after its host
is gone, which is what lets a service's empty volume be made again elsewhere. A missing directory
(no container has used the volume yet) is empty. A replica still replaying its log is not trusted.
"""
from __future__ import annotations

import os
from typing import Callable

from ..consensus import RaftNode
from ..consensus.writes import Session, replicate
from ..workload import Workload


def is_empty(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True


class VolumesController:
    name = "volumes"

    def __init__(self, node: str, workload: Workload, raft: Callable[[], RaftNode | None]) -> None:
        self._node = node
        self._workload = workload
        self._raft = raft
        self._session = Session.new(f"volumes@{node}")

    def sync(self, snapshot: dict) -> None:
        raft = self._raft()
        if raft is None or not snapshot["ready"]:
            return
        for name, record in sorted(snapshot["state"].get("volumes", {}).items()):
            if record["host"] != self._node:
                continue
            empty = is_empty(self._workload.volume_path(name))
            if record.get("empty") is not empty:
                replicate(raft, "volume_observed", {"name": name, "host": self._node, "empty": empty}, self._session)
