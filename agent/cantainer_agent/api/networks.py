"""``network.create {cidr}`` -> ``{cidr, vni, created_at, containers}``;
``network.ls`` -> ``[{cidr, vni, hosts, containers}]``; ``network.rm {cidr}`` -> ``{removed: cidr}``.

Every decision (overlap, VNI) is made inside the replicated command (cluster/state.py).
"""
from __future__ import annotations

import time
from typing import Callable

from ..cluster.views import network_views
from ..consensus import RaftNode
from ..consensus.writes import replicate
from .errors import raft_of


def handlers(get_raft: Callable[[], RaftNode | None]) -> dict[str, Callable[[dict], object]]:
    def create(params: dict) -> dict:
        return replicate(raft_of(get_raft), "create_network", {"cidr": params.get("cidr"), "ts": time.time()})

    def ls(_params: dict) -> list[dict]:
        return network_views(raft_of(get_raft).snapshot()["state"])

    def rm(params: dict) -> dict:
        replicate(raft_of(get_raft), "delete_network", {"cidr": params.get("cidr")})
        return {"removed": params.get("cidr")}

    return {"network.create": create, "network.ls": ls, "network.rm": rm}
