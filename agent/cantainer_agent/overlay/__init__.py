"""The VXLAN overlay of one host: desired state (from raft) → kernel state, level-triggered.

One network = one VNI = one bridge ``cbr-<vni>`` + one VXLAN device ``cvx-<vni>`` on each host with
a container of it; populated (a permanent FDB and neighbour entry per remote container, MACs derived
from IPs), never flood-and-learn; MTU = underlay − 50 everywhere; bridges carry no address and do
not forward, so networks stay isolated; a pass removes what raft does not want and never touches a
correct entry. Modules: model (pure data, naming), plan (pure diff), kernel (netlink), veth (a
container's link), reconciler (the pass). Depends on the standard library and pyroute2 only.
Design and lessons: docs/design/overlay.md.
"""
from importlib import import_module

from .guard import KernelGuard, OverlayError
from .model import (
    DEFAULT_VXLAN_PORT,
    VXLAN_OVERHEAD,
    DesiredHost,
    EndpointSpec,
    FdbEntry,
    LinkState,
    NeighEntry,
    NetworkSpec,
    Observed,
    RouteEntry,
    VxlanInfo,
    bridge_name,
    host_veth_name,
    mac_for_ip,
    overlay_mtu,
    vxlan_name,
)

# What needs netlink (pyroute2, ~0.15 s of CPU to import) is imported on first use, not with the
# package: the agent becomes ready without it, and its reconcile thread (nice +10) loads it with the
# cluster's first network (controllers/overlay.no_overlay). The planner goes with it: its 17
# dataclasses cost ~5 ms of every agent start (and every host's, in a cold `up`) that needs no plan yet.
_LAZY = {"apply": "kernel", "observe": "kernel", "underlay_mtu": "kernel", "OverlayReconciler": "reconciler",
         "ReconcileResult": "reconciler", "reconcile": "reconciler", "attach_container": "veth",
         "detach_container": "veth", "Action": "plan", "diff": "plan", "health": "plan"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_VXLAN_PORT", "VXLAN_OVERHEAD", "DesiredHost", "EndpointSpec", "FdbEntry", "LinkState",
    "NeighEntry", "NetworkSpec", "Observed", "RouteEntry", "VxlanInfo", "bridge_name",
    "host_veth_name", "mac_for_ip", "overlay_mtu", "vxlan_name", "KernelGuard", "OverlayError", "OverlayReconciler",
    "ReconcileResult", "apply", "attach_container", "detach_container", "observe", "reconcile",
    "underlay_mtu", "Action", "diff", "health",
]
