"""The VXLAN overlay of one host: desired state (from raft) → kernel state, level-triggered.

Modelled on flannel's vxlan backend and docker's overlay peerDB, without their classic bugs:

* one network = one VNI = one bridge ``cbr-<vni>`` + one VXLAN device ``cvx-<vni>`` on each host
  with a container on it; separate bridges and VNIs isolate networks, also on one host;
* populated, not flood-and-learn: VXLAN ``learning off``, ``proxy`` on, no multicast group; for
  every remote container a permanent FDB entry (MAC → its host's VTEP) and a permanent
  neighbour entry (IP → MAC). MACs are derived from IPs (``02:42`` + IPv4), so every host
  computes all entries from raft state alone. No flooding (all-zero MAC) entries: ARP for remote
  containers is answered locally by the VXLAN proxy, and nothing else needs to cross hosts;
* MTU = underlay MTU − 50 on VXLAN device, bridge and both ends of every container veth;
* isolation: bridges get no IP address (IPv4 or IPv6: address generation is off), their IPv4
  forwarding is off and the reconciler removes any address or route found on our devices, so
  the host never routes a packet out of one network (let alone into another); containers get
  only their subnet's connected route;
* reconcile removes whatever the desired state does not want (stale FDB/neighbour entries after
  a container or host went away, devices of networks no longer used here, orphaned veths) and
  leaves correct entries untouched, so agent restarts cause no flapping; kernel state keeps
  forwarding while the agent is down.

Modules: :mod:`.model` (pure data, naming), :mod:`.plan` (pure diff), :mod:`.netdev`
(pyroute2). Depends on the standard library and pyroute2 only.
"""
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
from .netdev import (
    OverlayError,
    OverlayReconciler,
    ReconcileResult,
    apply,
    attach_container,
    detach_container,
    observe,
    reconcile,
    underlay_mtu,
)
from .plan import Action, diff, health

__all__ = [
    "DEFAULT_VXLAN_PORT", "VXLAN_OVERHEAD", "DesiredHost", "EndpointSpec", "FdbEntry", "LinkState",
    "NeighEntry", "NetworkSpec", "Observed", "RouteEntry", "VxlanInfo", "bridge_name",
    "host_veth_name", "mac_for_ip", "overlay_mtu", "vxlan_name", "OverlayError", "OverlayReconciler",
    "ReconcileResult", "apply", "attach_container", "detach_container", "observe", "reconcile",
    "underlay_mtu", "Action", "diff", "health",
]
