"""The overlay controller: this host's share of the cluster's overlay, programmed by `overlay`.

Which containers count as endpoints: every container the cluster state holds whose last observed
state is not exited/dead — a created-but-starting container must already be reachable the moment
its process runs, and an exited one has no veth left to reach. A snapshot taken before a container
was attached does not show it: when the kernel holds a container link the snapshot does not want,
the desired state is read again before anything is deleted.

The desired state lives in an :class:`~cantainer_agent.overlay.index.DesiredIndex`, updated from the
records a pass names as changed (controllers/view.py): a pass woken by commits that only moved
remote containers diffs just their entries against the reconciler's cached view of the kernel;
anything else (a local container or network, a node's address, the periodic pass) is a full pass.
While the cluster has no network and the kernel no device of ours, a pass does nothing (``no_overlay``).
"""
from __future__ import annotations

import socket
from typing import Callable, Iterable

from ..config import AgentConfig
from ..overlay import DesiredHost, EndpointSpec, KernelGuard, Observed
from ..overlay.index import DesiredIndex, network_spec
from ..overlay.model import owned_kind

GONE_STATES = ("exited", "dead")


def desired_host(state: dict, node: str, vtep: str, mtu: int, vxlan_port: int) -> DesiredHost:
    """Pure: this node's share of the cluster's overlay."""
    networks = [network_spec(cidr, record) for cidr, record in state["networks"].items()]
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


def no_overlay(state: dict, links: Iterable[str]) -> bool:
    """Pure: the cluster has no network and none of this host's *links* (names) is ours — the overlay has
    nothing to do here. Until then the controller does not load netlink (pyroute2: ~0.15-0.2 s of CPU
    per agent, most of an agent's work during a cold `up` of many hosts); the first network loads it
    in the background, before containers of it start."""
    return not state["networks"] and not any(owned_kind(name) for name in links)


def summarize(health: dict) -> dict:
    """Overlay health in four numbers: networks here, entries expected/programmed, pending changes."""
    networks = health["networks"].values()
    return {
        "networks": len(health["networks"]),
        "expected": sum(n["fdb_expected"] + n["neigh_expected"] for n in networks),
        "programmed": sum(n["fdb_programmed"] + n["neigh_programmed"] for n in networks),
        "pending": health["pending"],
    }


class OverlayController:
    """Owns this host's overlay devices (``sync(snapshot)`` in the agent's controller loop)."""

    name = "overlay"

    def __init__(self, cfg: AgentConfig, guard: KernelGuard, read: Callable[[], dict]) -> None:
        self._cfg = cfg
        self._read = read  # a fresh snapshot, when the one a pass got is older than the kernel
        self._mtu: int | None = None
        self._guard = guard
        self._reconciler = None  # made by the first pass, in the loop's thread: netlink is imported there
        self._index: DesiredIndex | None = None  # None: rebuild from the next snapshot

    @property
    def summary(self) -> dict | None:
        """Entries expected vs programmed after the last pass, sent with heartbeats for `status`."""
        last = self._reconciler.last if self._reconciler is not None else None
        return summarize(last.health) if last is not None and last.health else None

    @property
    def underlay_mtu(self) -> int:
        if self._mtu is None:
            from ..overlay import underlay_mtu

            self._mtu = underlay_mtu(self._cfg.address)
        return self._mtu

    def _build(self, state: dict) -> DesiredHost:
        return desired_host(state, self._cfg.node, self._cfg.address, self.underlay_mtu, self._cfg.vxlan_port)

    def _desired(self, observed: Observed) -> DesiredHost:
        want = self._index.desired()
        wanted = {ep.host_veth for ep in want.local}
        if any(owned_kind(name) == ("veth", None) and name not in wanted for name in observed.links):
            snapshot = self._read()  # attached after our snapshot was taken, or really an orphan
            if snapshot["ready"]:
                want = self._build(snapshot["state"])
                self._index = None  # it is behind that snapshot: rebuild at the next pass
        return want

    def sync(self, snapshot: dict) -> None:
        if not snapshot["ready"]:
            self._index = None  # this pass's changes are not taken in: rebuild from the next snapshot
            return  # a replica still catching up would delete entries for containers it has not seen yet
        if self._reconciler is None and no_overlay(snapshot["state"], (name for _, name in socket.if_nameindex())):
            return  # nothing to program or remove: netlink is not even loaded (a fresh cluster's `up`)
        if self._reconciler is None:
            from ..overlay import OverlayReconciler

            self._reconciler = OverlayReconciler(self._desired, self._guard, keep_socket=True)  # this thread only
        state, changes = snapshot["state"], snapshot.get("changes")
        index = self._index
        touched = None
        if index is None or changes is None:
            index = DesiredIndex(self._cfg.node, self._cfg.address, self.underlay_mtu, self._cfg.vxlan_port)
            index.rebuild(state)
        else:
            self._index = None  # until the update is through (an exception leaves it half-done)
            touched = index.update(state, changes)
        self._index = index
        if snapshot.get("commits_only") and touched is not None:
            if not touched:
                return  # nothing this host programs changed
            result = self._reconciler.reconcile_entries(index.fdb, index.neigh, touched, index.desired_later())
            if result is not None:
                return
        self._reconciler.reconcile()  # raises OverlayError on failed actions: the loop retries
