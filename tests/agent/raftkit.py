"""Raft nodes for in-process tests: the real RaftNode with the cluster state machine on loopback."""
from __future__ import annotations

import time

from cantainer_agent.cluster.state import ClusterState
from cantainer_agent.consensus import RaftConfig, RaftNode

SECRET = b"k" * 32


def raft_node(data_dir, addr: str, partners=(), storage=None, **config) -> RaftNode:
    """A RaftNode with the durable journal (or *storage*), started by the caller."""
    options = {} if storage is None else {"storage": storage}
    return RaftNode(RaftConfig(cluster="c", self_addr=addr, data_dir=str(data_dir), secret=SECRET,
                               partners=tuple(partners), **config), fsm=ClusterState, **options)


def register(node: RaftNode, name: str, address: str = "127.0.0.1", ts: float | None = None,
             timeout: float = 3.0) -> dict:
    return node.apply("register_node", {"name": name, "address": address, "raft_addr": node.self_addr,
                                        "join_addr": f"{address}:1", "version": "v", "bundle": "b",
                                        "ts": time.time() if ts is None else ts}, timeout=timeout)


def heartbeat(node: RaftNode, name: str, ts: float | None = None, timeout: float = 3.0) -> bool:
    return node.apply("heartbeat", {"name": name, "ts": time.time() if ts is None else ts}, timeout=timeout)
