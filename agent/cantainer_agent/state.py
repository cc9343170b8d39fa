"""The replicated cluster state machine, as pure logic.

No sockets, locks, threads or clocks: every input (including timestamps) is chosen by the
proposer and carried in the raft log, so applying the same commands in the same order gives
the same state on every node. The object pickles to plain builtins (dicts, strs, floats) plus
this class, because PySyncObj snapshots it.

Schema::

    nodes:      {name: {"address", "raft_addr", "join_addr", "version", "bundle",
                        "heartbeat": float, "joined_at": float}}
    networks:   {}   (later issue)
    containers: {}   (later issue)
"""

from __future__ import annotations

import copy
import re
from typing import Any

SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class StateError(ValueError):
    """A command was rejected; the state is unchanged."""


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise StateError(f"invalid node name {name!r}")
    return name


def _check_str(key: str, value: Any, max_len: int = 256) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise StateError(f"{key} must be a string of at most {max_len} characters")
    return value


def _check_ts(key: str, value: Any) -> float:
    if type(value) not in (int, float) or value != value or value < 0:  # value != value: NaN
        raise StateError(f"{key} must be a non-negative number")
    return float(value)


class ClusterState:
    """The whole replicated state. Mutate only through the ``apply_*`` methods."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.networks: dict[str, dict] = {}
        self.containers: dict[str, dict] = {}

    # pickling: plain dicts plus a schema number, so a snapshot stays readable
    def __getstate__(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "nodes": self.nodes,
            "networks": self.networks,
            "containers": self.containers,
        }

    def __setstate__(self, data: dict) -> None:
        self.nodes = dict(data.get("nodes", {}))
        self.networks = dict(data.get("networks", {}))
        self.containers = dict(data.get("containers", {}))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterState) and self.to_dict() == other.to_dict()

    # ---------------------------------------------------------------- commands

    def apply_register_node(
        self,
        name: str,
        address: str,
        raft_addr: str,
        join_addr: str,
        version: str,
        bundle: str,
        ts: float,
    ) -> dict:
        """Add or refresh a node. Re-registering keeps ``joined_at``; returns the record copy.

        Rejected when another node already owns *raft_addr*, or when *name* is registered with a
        different raft address (one raft member per name; remove the old node first).
        """
        _check_name(name)
        for key, value in (("address", address), ("raft_addr", raft_addr), ("join_addr", join_addr)):
            _check_str(key, value, 128)
        _check_str("version", version, 64)
        _check_str("bundle", bundle, 128)
        ts = _check_ts("ts", ts)
        for other, rec in self.nodes.items():
            if other != name and rec["raft_addr"] == raft_addr:
                raise StateError(f"raft address {raft_addr} already belongs to node {other!r}")
        old = self.nodes.get(name)
        if old is not None and old["raft_addr"] != raft_addr:
            raise StateError(
                f"node name {name!r} is already registered with raft address {old['raft_addr']}; "
                "remove that node before reusing its name"
            )
        self.nodes[name] = {
            "address": address,
            "raft_addr": raft_addr,
            "join_addr": join_addr,
            "version": version,
            "bundle": bundle,
            "heartbeat": ts,
            "joined_at": old["joined_at"] if old else ts,
        }
        return dict(self.nodes[name])

    def apply_heartbeat(self, name: str, ts: float) -> bool:
        """Record a heartbeat; returns False (no change) for an unknown node."""
        _check_name(name)
        ts = _check_ts("ts", ts)
        rec = self.nodes.get(name)
        if rec is None:
            return False
        rec["heartbeat"] = ts
        return True

    def apply_remove_node(self, name: str) -> bool:
        """Forget a node; returns False if it was not registered."""
        _check_name(name)
        return self.nodes.pop(name, None) is not None

    # ------------------------------------------------------------------ reads

    def node_by_raft_addr(self, raft_addr: str) -> str | None:
        for name, rec in self.nodes.items():
            if rec["raft_addr"] == raft_addr:
                return name
        return None

    def to_dict(self) -> dict:
        """A deep copy safe to hand to other threads / encode as JSON."""
        return {
            "nodes": copy.deepcopy(self.nodes),
            "networks": copy.deepcopy(self.networks),
            "containers": copy.deepcopy(self.containers),
        }


# Function forms, for callers that prefer them (delegating to the methods above).


def apply_register_node(state: ClusterState, *args: Any, **kwargs: Any) -> dict:
    return state.apply_register_node(*args, **kwargs)


def apply_heartbeat(state: ClusterState, name: str, ts: float) -> bool:
    return state.apply_heartbeat(name, ts)


def apply_remove_node(state: ClusterState, name: str) -> bool:
    return state.apply_remove_node(name)
