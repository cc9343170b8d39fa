"""This host's overlay, derived from the raft replica: the glue between state and `overlay`.

Which containers count as endpoints: every container the cluster state holds whose last observed
state is not exited/dead — a created-but-starting container must already be reachable the moment
its process runs, and an exited one has no veth left to reach.
"""
from __future__ import annotations

from typing import Callable

from .config import AgentConfig
from .overlay import DesiredHost, EndpointSpec, NetworkSpec, OverlayReconciler, underlay_mtu

GONE_STATES = ("exited", "dead")


def desired_host(state: dict, node: str, vtep: str, mtu: int, vxlan_port: int) -> DesiredHost:
    """Pure: this node's share of the cluster's overlay."""
    networks = [NetworkSpec(cidr, record["vni"]) for cidr, record in state["networks"].items()]
    endpoints = []
    for container in state["containers"].values():
        if container.get("observed", {}).get("state") in GONE_STATES:
            continue
        host = state["nodes"].get(container["host"])
        if host is None:
            continue  # its host left the cluster: nothing to forward to
        endpoints.append(EndpointSpec(container["id"], container["network"], container["ip"], container["host"],
                                      host["address"]))
    return DesiredHost.build(node, vtep, mtu, networks, endpoints, vxlan_port=vxlan_port)


def summarize(health: dict) -> dict:
    """Overlay health in four numbers: networks here, entries expected/programmed, pending changes."""
    networks = health["networks"].values()
    return {
        "networks": len(health["networks"]),
        "expected": sum(n["fdb_expected"] + n["neigh_expected"] for n in networks),
        "programmed": sum(n["fdb_programmed"] + n["neigh_programmed"] for n in networks),
        "pending": health["pending"],
    }


class HostNetwork:
    """Owns this host's overlay devices; runs inside the agent's reconcile loop."""

    name = "overlay"

    def __init__(self, cfg: AgentConfig, read_snapshot: Callable[[], dict]) -> None:
        self._cfg = cfg
        self._read_snapshot = read_snapshot
        self._mtu: int | None = None
        self._reconciler = OverlayReconciler(self.desired)

    @property
    def summary(self) -> dict | None:
        """Entries expected vs programmed after the last pass, sent with heartbeats for `status`."""
        last = self._reconciler.last
        return summarize(last.health) if last is not None and last.health else None

    @property
    def underlay_mtu(self) -> int:
        if self._mtu is None:
            self._mtu = underlay_mtu(self._cfg.address)
        return self._mtu

    def desired(self) -> DesiredHost:
        snapshot = self._read_snapshot()
        if not snapshot["ready"]:
            # A replica still catching up would delete entries for containers it has not seen yet.
            raise _NotReady()
        return desired_host(snapshot["state"], self._cfg.node, self._cfg.address, self.underlay_mtu,
                            self._cfg.vxlan_port)

    def reconcile(self) -> None:
        try:
            self._reconciler.reconcile()  # raises OverlayError on failed actions: the loop logs and retries
        except _NotReady:
            return


class _NotReady(Exception):
    """The raft replica is not caught up: skip this pass (the next commit triggers another)."""
