"""``hello``, ``status`` and ``stop``.

``hello``  -> ``{"agent_version", "protocol", "node", "cluster", "pid", "bundle"}``
``status`` -> ``{"node", "cluster", "leader": name|null, "term", "commit_index", "raft": {...},
              "nodes": [...], "networks": [...], "containers": [...]}`` (cluster/views.build_status)
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
from .server import AfterReply


def handlers(cfg: AgentConfig, get_raft: Callable[[], RaftNode | None],
             stop: Callable[[], None]) -> dict[str, Callable[[dict], object]]:
    def hello(_params: dict) -> dict:
        return {"agent_version": __version__, "protocol": protocol.PROTOCOL_VERSION, "node": cfg.node,
                "cluster": cfg.cluster, "pid": os.getpid(), "bundle": cfg.bundle}

    def status(_params: dict) -> dict:
        raft = get_raft()
        if raft is None:
            raise protocol.ProtocolError(protocol.UNAVAILABLE, f"agent {cfg.node} is still starting")
        return build_status(node=cfg.node, cluster=cfg.cluster, snap=raft.snapshot(), now=time.time(),
                            heartbeat_interval=cfg.heartbeat_interval, voters=cfg.voters)

    def stop_agent(_params: dict) -> AfterReply:
        return AfterReply({"stopping": True}, stop)

    return {"hello": hello, "status": status, "stop": stop_agent}
