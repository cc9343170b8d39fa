"""``stack.ls`` -> ``[{name, objects, updated_at}]`` (what `apply` recorded per stack: cluster/stacks.py);
``stack.set {stack, key, entry}`` -> the stack's record, or null once it has no objects (``entry``
null drops the object). The workstation plans and applies; the cluster only keeps this record.
Writes are exactly-once per request session, reads linearizable unless ``consistency: stale``.
"""
from __future__ import annotations

import time
from typing import Callable

from ..consensus import RaftNode
from ..consensus.writes import replicate
from .errors import raft_of
from .requests import Reads, session_of


def handlers(get_raft: Callable[[], RaftNode | None], reads: Reads) -> dict[str, Callable[[dict], object]]:
    def ls(params: dict) -> list[dict]:
        state = reads.snapshot(raft_of(get_raft), params)["state"]
        return [record for _, record in sorted(state.get("stacks", {}).items())]

    def set_object(params: dict) -> dict | None:
        return replicate(raft_of(get_raft), "set_stack_object", {
            "stack": params.get("stack"), "key": params.get("key"), "entry": params.get("entry"), "ts": time.time()},
            session_of(params, "stack.set"))

    return {"stack.ls": ls, "stack.set": set_object}
