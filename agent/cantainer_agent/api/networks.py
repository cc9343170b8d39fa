"""``network.create {cidr, name?, internal?}`` -> ``{name, cidr, vni, gateway, internal, created_at, containers,
created}``; ``network.ls`` -> ``[{name, cidr, vni, gateway, internal, hosts, containers, created_at}]``;
``network.rm {network}`` (a name or a CIDR; ``cidr`` is accepted too) -> ``{removed: name}``.

Every decision (name, overlap, VNI, gateway) is made inside the replicated command (cluster/state.py);
writes are exactly-once per request session, reads linearizable unless ``consistency: stale``.
"""
from __future__ import annotations

import time
from typing import Callable

from ..cluster.views import network_views
from ..consensus import RaftNode
from ..consensus.writes import replicate
from .errors import raft_of, rejected
from .requests import Reads, session_of


def handlers(get_raft: Callable[[], RaftNode | None], reads: Reads) -> dict[str, Callable[[dict], object]]:
    def create(params: dict) -> dict:
        internal = params.get("internal", False)
        if not isinstance(internal, bool):
            raise rejected("internal must be true or false")
        return replicate(raft_of(get_raft), "create_network",
                         {"cidr": params.get("cidr"), "ts": time.time(), "name": params.get("name"),
                          "internal": internal, "gateway": True},
                         session_of(params, "network.create"))

    def ls(params: dict) -> list[dict]:
        raft = raft_of(get_raft)
        return network_views(reads.snapshot(raft, params)["state"])

    def rm(params: dict) -> dict:
        ref = params.get("network", params.get("cidr"))
        replicate(raft_of(get_raft), "delete_network", {"cidr": ref}, session_of(params, "network.rm"))
        return {"removed": ref}

    return {"network.create": create, "network.ls": ls, "network.rm": rm}
