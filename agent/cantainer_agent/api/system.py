"""``hello``, ``status`` and ``stop``.

``hello``  -> ``{"agent_version", "protocol", "node", "cluster", "pid", "bundle", "machine"}`` (uname -m)
``status {consistency?}`` -> ``{"node", "cluster", "leader": name|null, "term", "commit_index",
              "raft": {...}, "nodes": [...], "networks": [...], "containers": [...], "consistency"}``
              (cluster/views.build_status; linearizable unless ``consistency: stale``)
``stop``   -> ``{"stopping": true}``, then the agent shuts down gracefully.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from .. import __version__, protocol
from ..cluster.views import build_status
from ..config import AgentConfig
from ..consensus import RaftNode
from .requests import Reads, consistency_of
from .server import AfterReply


def handlers(cfg: AgentConfig, get_raft: Callable[[], RaftNode | None], stop: Callable[[], None],
             reads: Reads) -> dict[str, Callable[[dict], object]]:
    def hello(_params: dict) -> dict:
        return {"agent_version": __version__, "protocol": protocol.PROTOCOL_VERSION, "node": cfg.node,
                "cluster": cfg.cluster, "pid": os.getpid(), "bundle": cfg.bundle, "machine": os.uname().machine}

    def status(params: dict) -> dict:
        raft = get_raft()
        if raft is None:
            raise protocol.ProtocolError(protocol.UNAVAILABLE, f"agent {cfg.node} is still starting")
        document = build_status(node=cfg.node, cluster=cfg.cluster, snap=reads.snapshot(raft, params), now=time.time(),
                                heartbeat_interval=cfg.heartbeat_interval, voters=cfg.voters)
        document["consistency"] = consistency_of(params)  # "stale": this node's replica, maybe behind
        return document

    def stop_agent(_params: dict) -> AfterReply:
        return AfterReply({"stopping": True}, stop)

    return {"hello": hello, "status": status, "stop": stop_agent}
