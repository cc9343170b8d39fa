"""The control loop's copy of the cluster state, kept up to date per changed record (an informer cache).

A pass used to copy the whole replica (pickle out of the tick thread and back: ~7 ms at 1000
containers, on every host, for every commit). :class:`LocalView` copies it once, then asks the
replica only for the records changed since its last look (``RaftNode.snapshot_since``, fed by the
state machine's change feed) and patches its copy. A replica that cannot tell (replaced on a role
change, restored from a snapshot, or the view fell too far behind) sends everything again.

Each :meth:`read` returns the snapshot a pass hands to every controller: raft status fields,
``state`` (this view's dicts — controllers must not modify them) and ``changes``, the
``(section, key)`` changed since the previous read, or None after a full copy (treat everything as
changed). Only the loop's thread uses a view.
"""
from __future__ import annotations

from typing import Callable

from ..consensus import RaftError, RaftNode


class LocalView:
    def __init__(self, raft: Callable[[], RaftNode | None]) -> None:
        self._raft = raft
        self._cursor: tuple[int, int] | None = None
        self.state: dict | None = None
        self.full_reads = 0  # statistics (tests): whole-state copies taken
        self.delta_reads = 0

    def invalidate(self) -> None:
        """Read everything again next time (e.g. after a failed pass)."""
        self._cursor = None

    def read(self) -> dict:
        raft = self._raft()
        if raft is None:
            raise RaftError("raft is not running yet")
        snap = raft.snapshot_since(self._cursor if self.state is not None else None)
        if snap["changes"] is None:
            self.state = snap["state"]
            self.full_reads += 1
        else:
            state = self.state
            for (section, key), record in snap.pop("records").items():
                if record is None:
                    state[section].pop(key, None)
                else:
                    state[section][key] = record
            snap["state"] = state
            self.delta_reads += 1
        self._cursor = snap.pop("cursor")
        return snap
