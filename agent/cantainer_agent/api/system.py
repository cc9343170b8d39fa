"""``hello``, ``status`` and ``stop``.

``hello``  -> ``{"agent_version", "protocol", "node", "cluster", "pid", "bundle", "machine"}`` (uname -m)
``status {consistency?}`` -> ``{"node", "cluster", "leader": name|null, "term", "commit_index",
              "raft": {...}, "nodes": [...], "networks": [...], "containers": [...], "consistency"}``
              (cluster/views.build_status; linearizable unless ``consistency: stale``)
``facts``  -> the host's facts for `up` (``cantainer_agent.facts``: what its probe reads, read by this
              agent on the same paths; no ``ssh_server_address``) — a re-run of `up` asks this instead
              of starting a Python on the host.
``member {wait?}`` -> ``{"node", "pid", "leader": raft address|null, "registered": bool, "role"}``: with
              ``wait`` (seconds, at most MEMBER_WAIT_MAX) it answers once this node knows a leader and
              is registered in the state, or when the time is up — `up` waits on it instead of polling.
``stop``   -> ``{"stopping": true}``, then the agent shuts down gracefully.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from .. import __version__, layout, protocol
from ..cluster.views import build_status
from ..config import AgentConfig
from ..consensus import RaftNode
from .requests import Reads, consistency_of
from .server import AfterReply

MEMBER_WAIT_MAX = 30.0
MEMBER_POLL = 0.02  # a look at this node's own raft status: in memory, no I/O


def handlers(cfg: AgentConfig, get_raft: Callable[[], RaftNode | None], stop: Callable[[], None],
             reads: Reads) -> dict[str, Callable[[dict], object]]:
    def hello(_params: dict) -> dict:
        return {"agent_version": __version__, "protocol": protocol.PROTOCOL_VERSION, "node": cfg.node,
                "cluster": cfg.cluster, "pid": os.getpid(), "bundle": cfg.bundle, "machine": os.uname().machine,
                "config": cfg.identity}

    def host_facts(_params: dict) -> dict:
        from .. import facts  # only `up` asks

        return facts.read(layout.PID_FILE, layout.CONFIG_FILE, layout.BUNDLES_DIR, layout.MEMBERS_FILE,
                          layout.SECRET_FILE, nftables_loaded=True)

    def status(params: dict) -> dict:
        raft = get_raft()
        if raft is None:
            raise protocol.ProtocolError(protocol.UNAVAILABLE, f"agent {cfg.node} is still starting")
        document = build_status(node=cfg.node, cluster=cfg.cluster, snap=reads.snapshot(raft, params), now=time.time(),
                                heartbeat_interval=cfg.heartbeat_interval, voters=cfg.voters)
        document["consistency"] = consistency_of(params)  # "stale": this node's replica, maybe behind
        return document

    def member(params: dict) -> dict:
        wait = params.get("wait", 0)
        if type(wait) not in (int, float) or not 0 <= wait <= MEMBER_WAIT_MAX:  # also refuses NaN
            raise protocol.ProtocolError(protocol.BAD_REQUEST, f'"wait" must be 0..{MEMBER_WAIT_MAX:g} seconds')
        deadline = time.monotonic() + wait
        while True:
            answer = {"node": cfg.node, "pid": os.getpid(), "leader": None, "registered": False, "role": None}
            raft = get_raft()
            if raft is not None:
                status = raft.status()
                answer.update(leader=status["leader"], role=status["role"],
                              registered=raft.read(lambda state: cfg.node in state.nodes))
            if answer["leader"] and answer["registered"] or time.monotonic() >= deadline:
                return answer
            time.sleep(MEMBER_POLL)

    def stop_agent(_params: dict) -> AfterReply:
        return AfterReply({"stopping": True}, stop)

    return {"hello": hello, "facts": host_facts, "status": status, "member": member, "stop": stop_agent}
