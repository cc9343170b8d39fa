"""How often a node writes its heartbeat into the cluster state, and when it counts as down.

A heartbeat is a raft write, and the leader sends every write to every member: n nodes beating
every p seconds cost the leader n/p append rounds of n messages each second — quadratic in the
cluster size. On the 30-host lab (2 s) that was 15 writes a second, and the leader's share of a
CPU starved by 30 agents fell so far behind that each write waited ~80 s in its queue. So the
period stretches with the cluster: at most ``HEARTBEAT_WRITES`` heartbeats a second in all,
never more often than the configured ``heartbeat_interval``. A node counts as down after
``DOWN_AFTER_PERIODS`` periods without one.
"""
from __future__ import annotations

HEARTBEAT_WRITES = 5.0  # heartbeats per second, cluster-wide
DOWN_AFTER_PERIODS = 3


def heartbeat_period(configured: float, nodes: int) -> float:
    """Seconds between one node's heartbeats in a cluster of *nodes* nodes."""
    return max(configured, nodes / HEARTBEAT_WRITES)


def down_after(configured: float, nodes: int) -> float:
    """Seconds without a heartbeat after which a node is reported down."""
    return DOWN_AFTER_PERIODS * heartbeat_period(configured, nodes)
