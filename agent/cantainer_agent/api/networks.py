"""``network.create {cidr}`` -> ``{cidr, vni, created_at, containers, created}``;
``network.ls`` -> ``[{cidr, vni, hosts, containers}]``; ``network.rm {cidr}`` -> ``{removed: cidr}``.

Every decision (overlap, VNI) is made inside the replicated command (cluster/state.py); writes are
exactly-once per request session, reads linearizable unless ``consistency: stale`` (api/requests.py).
"""
from __future__ import annotations

import time
from typing import Callable

from ..cluster.views import network_views
from ..consensus import RaftNode
from ..consensus.writes import replicate
from .errors import raft_of
from .requests import Reads, session_of


def handlers(get_raft: Callable[[], RaftNode | None], reads: Reads) -> dict[str, Callable[[dict], object]]:
    def create(params: dict) -> dict:
        return replicate(raft_of(get_raft), "create_network", {"cidr": params.get("cidr"), "ts": time.time()},
                         session_of(params, "network.create"))

    def ls(params: dict) -> list[dict]:
        raft = raft_of(get_raft)
        return network_views(reads.snapshot(raft, params)["state"])

    def rm(params: dict) -> dict:
        replicate(raft_of(get_raft), "delete_network", {"cidr": params.get("cidr")}, session_of(params, "network.rm"))
        return {"removed": params.get("cidr")}

    return {"network.create": create, "network.ls": ls, "network.rm": rm}
