"""Pure data of the overlay: names, MACs, what this host wants, what the kernel has.

Nothing here touches the kernel; ``plan.diff`` compares a :class:`DesiredHost` with an
:class:`Observed` and ``kernel`` turns the difference into netlink requests.

Naming (every name fits IFNAMSIZ, 15 characters):

* ``cbr-<vni>``  the network's bridge (``cbr-16777215`` at most, 12 characters);
* ``cvx-<vni>``  the network's VXLAN device, a port of the bridge;
* ``cv<12 hex>`` the host end of a container's veth, ``cv`` + the first 12 hex digits of
  sha256(container id) (14 characters); the container end is ``eth0``.

The reconciler owns every link whose name matches one of these patterns and deletes those
the desired state does not want — do not give other interfaces such names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DEFAULT_VXLAN_PORT = 4789  # IANA
MIN_VNI = 1
MAX_VNI = (1 << 24) - 1
MIN_MTU = 68  # the smallest MTU IPv4 accepts on a link

BRIDGE_PREFIX = "cbr-"
VXLAN_PREFIX = "cvx-"
VETH_PREFIX = "cv"
VETH_HASH_LEN = 12
CONTAINER_IFNAME = "eth0"

BRIDGE_RE = re.compile(r"^cbr-([0-9]{1,8})$")
VXLAN_RE = re.compile(r"^cvx-([0-9]{1,8})$")
VETH_RE = re.compile(r"^cv[0-9a-f]{%d}$" % VETH_HASH_LEN)


# ------------------------------------------------------------------------------------- naming


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{_check_vni(vni)}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{_check_vni(vni)}"


def host_veth_name(container_id: str) -> str:
    """Host end of a container's veth: stable, derived from the id only, 14 characters."""
    if not isinstance(container_id, str) or not container_id:
        raise ValueError(f"container id must be a non-empty string, not {container_id!r}")
    return VETH_PREFIX + hashlib.sha256(container_id.encode()).hexdigest()[:VETH_HASH_LEN]


def owned_kind(ifname: str) -> tuple[str, int | None] | None:
    """``("bridge", vni)``, ``("vxlan", vni)``, ``("veth", None)`` for names this package owns."""
    if m := BRIDGE_RE.match(ifname):
        return "bridge", int(m.group(1))
    if m := VXLAN_RE.match(ifname):
        return "vxlan", int(m.group(1))
    if VETH_RE.match(ifname):
        return "veth", None
    return None


def mac_for_ip(ip: str) -> str:
    """Docker's scheme: ``02:42`` (locally administered, unicast) + the four IPv4 octets.

    Every host computes a remote container's MAC from raft state alone; networks never overlap
    (IPAM refuses it), so the MAC is unique in the cluster.
    """
    address = ipaddress.IPv4Address(ip)
    return "02:42:" + ":".join(f"{octet:02x}" for octet in address.packed)


def overlay_mtu(underlay_mtu: int) -> int:
    """MTU of the VXLAN device, the bridge and every container veth."""
    mtu = int(underlay_mtu) - VXLAN_OVERHEAD
    if mtu < MIN_MTU:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves {mtu} bytes after VXLAN's {VXLAN_OVERHEAD}")
    return mtu


def _check_vni(vni: int) -> int:
    if type(vni) is not int or not MIN_VNI <= vni <= MAX_VNI:
        raise ValueError(f"VNI must be an integer in {MIN_VNI}..{MAX_VNI}, not {vni!r}")
    return vni


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"{what} must be an IPv4 address, not {text!r}") from None


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


# ------------------------------------------------------------------------------ desired state


@dataclass(frozen=True, order=True)
class NetworkSpec:
    """One overlay network: an IPv4 CIDR (normalised), its VXLAN VNI, its gateway — the address
    its bridge holds on every host, with the MAC :func:`mac_for_ip` of it (None: a network from
    before gateways; its bridge has no address) — and ``internal`` (no routing out of it)."""

    cidr: str
    vni: int
    gateway: str | None = None
    internal: bool = False

    def __post_init__(self) -> None:
        try:
            network = ipaddress.IPv4Network(self.cidr, strict=False)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
            raise ValueError(f"network must be an IPv4 CIDR, not {self.cidr!r}") from None
        _set(self, "cidr", str(network))
        _check_vni(self.vni)
        if self.gateway is not None:
            _set(self, "gateway", _ipv4(self.gateway, "gateway"))
            if ipaddress.IPv4Address(self.gateway) not in network:
                raise ValueError(f"gateway {self.gateway} is outside {self.cidr}")

    @property
    def routed(self) -> bool:
        """Does the host route for it (egress, published ports)? Only a non-internal network with a gateway."""
        return self.gateway is not None and not self.internal

    @property
    def gateway_mac(self) -> str | None:
        return mac_for_ip(self.gateway) if self.gateway else None

    @property
    def gateway_address(self) -> str | None:
        """``gateway/prefixlen``, as the bridge holds it."""
        return f"{self.gateway}/{self.prefixlen}" if self.gateway else None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def bridge(self) -> str:
        return bridge_name(self.vni)

    @property
    def vxlan(self) -> str:
        return vxlan_name(self.vni)


@dataclass(frozen=True, order=True)
class EndpointSpec:
    """A container's attachment: its IP on a network, the node it runs on and that node's VTEP.

    The MAC is not stored: it is :func:`mac_for_ip` of the IP, on every host alike.
    """

    container_id: str
    network_cidr: str
    ip: str
    node: str
    vtep: str

    def __post_init__(self) -> None:
        if not isinstance(self.container_id, str) or not self.container_id:
            raise ValueError(f"container id must be a non-empty string, not {self.container_id!r}")
        if not isinstance(self.node, str) or not self.node:
            raise ValueError(f"node must be a non-empty string, not {self.node!r}")
        _set(self, "network_cidr", NetworkSpec(self.network_cidr, MIN_VNI).cidr)
        _set(self, "ip", _ipv4(self.ip, "endpoint IP"))
        _set(self, "vtep", _ipv4(self.vtep, "VTEP address"))

    @property
    def mac(self) -> str:
        return mac_for_ip(self.ip)

    @property
    def host_veth(self) -> str:
        return host_veth_name(self.container_id)


@dataclass(frozen=True)
class DesiredHost:
    """What one host's kernel should hold. Build it with :meth:`build` from cluster-wide lists.

    ``networks`` are only the networks with at least one container on this host: a host without
    local containers on a network has nothing to forward for it, so it keeps no bridge, VXLAN
    device or entries for it (fewer devices and FDB entries cluster-wide; the devices go when the
    last local container goes, which also drops all of that network's entries at once).
    ``remote`` are the other hosts' containers on those networks.
    """

    node: str
    vtep: str
    underlay_mtu: int
    vxlan_port: int = DEFAULT_VXLAN_PORT
    networks: tuple[NetworkSpec, ...] = ()
    local: tuple[EndpointSpec, ...] = ()
    remote: tuple[EndpointSpec, ...] = ()
    skipped: tuple[str, ...] = field(default=(), compare=False)  # inconsistent input, explained

    def __post_init__(self) -> None:
        _set(self, "vtep", _ipv4(self.vtep, "VTEP address"))
        if type(self.vxlan_port) is not int or not 1 <= self.vxlan_port <= 65535:
            raise ValueError(f"VXLAN port must be in 1..65535, not {self.vxlan_port!r}")
        overlay_mtu(self.underlay_mtu)
        _set(self, "networks", tuple(sorted(self.networks)))
        _set(self, "local", tuple(sorted(self.local)))
        _set(self, "remote", tuple(sorted(self.remote)))

    @property
    def mtu(self) -> int:
        """The overlay MTU: VXLAN device, bridge and container veths."""
        return overlay_mtu(self.underlay_mtu)

    def network(self, cidr: str) -> NetworkSpec | None:
        for net in self.networks:
            if net.cidr == cidr:
                return net
        return None

    @classmethod
    def build(
        cls,
        node: str,
        vtep: str,
        underlay_mtu: int,
        networks: Iterable[NetworkSpec],
        endpoints: Iterable[EndpointSpec],
        vxlan_port: int = DEFAULT_VXLAN_PORT,
    ) -> "DesiredHost":
        """This host's share of the cluster: deterministic, and tolerant of inconsistent input.

        Raft's IPAM makes duplicates impossible, but a reconciler must not stop programming the
        whole host because of one bad record: such records are left out, first one wins (in
        sorted order), and the reason is kept in ``skipped`` for the caller to log.
        """
        vtep = _ipv4(vtep, "VTEP address")
        skipped: list[str] = []
        by_cidr: dict[str, NetworkSpec] = {}
        vnis: dict[int, str] = {}
        for net in sorted(set(networks), key=lambda n: (n.vni, n.cidr)):
            if net.cidr in by_cidr:
                skipped.append(f"network {net.cidr}: listed with VNIs {by_cidr[net.cidr].vni} and {net.vni}")
            elif net.vni in vnis:
                skipped.append(f"network {net.cidr}: VNI {net.vni} already belongs to {vnis[net.vni]}")
            else:
                by_cidr[net.cidr] = net
                vnis[net.vni] = net.cidr

        accepted: list[EndpointSpec] = []
        ids: set[str] = set()
        ips: set[tuple[str, str]] = set()
        for ep in sorted(set(endpoints)):
            net = by_cidr.get(ep.network_cidr)
            why = None
            if net is None:
                why = f"unknown network {ep.network_cidr}"
            elif ipaddress.IPv4Address(ep.ip) not in net.network:
                why = f"IP {ep.ip} is outside {net.cidr}"
            elif ep.ip == net.gateway:
                why = f"IP {ep.ip} is the gateway of {net.cidr}"
            elif ep.container_id in ids:
                why = "container listed twice"
            elif (ep.network_cidr, ep.ip) in ips:
                why = f"IP {ep.ip} already used on {ep.network_cidr}"
            elif ep.node != node and ep.vtep == vtep:
                why = f"claims this host's VTEP {vtep} but runs on node {ep.node!r}"
            if why:
                skipped.append(f"container {ep.container_id}: {why}")
                continue
            ids.add(ep.container_id)
            ips.add((ep.network_cidr, ep.ip))
            accepted.append(ep)

        local = [ep for ep in accepted if ep.node == node]
        wanted = {ep.network_cidr for ep in local}
        remote = [ep for ep in accepted if ep.node != node and ep.network_cidr in wanted]
        return cls(
            node=node,
            vtep=vtep,
            underlay_mtu=underlay_mtu,
            vxlan_port=vxlan_port,
            networks=tuple(by_cidr[c] for c in wanted),
            local=tuple(local),
            remote=tuple(remote),
            skipped=tuple(skipped),
        )


# ----------------------------------------------------------------------------- observed state


@dataclass(frozen=True)
class VxlanInfo:
    """The VXLAN attributes the reconciler cares about; a device that differs is recreated."""

    vni: int
    local: str | None
    port: int
    learning: bool = False
    proxy: bool = True
    group: str | None = None


@dataclass(frozen=True)
class LinkState:
    name: str
    index: int
    kind: str | None
    mtu: int
    up: bool
    master: str | None = None
    addresses: tuple[str, ...] = ()  # "address/prefixlen", IPv4 and IPv6
    vxlan: VxlanInfo | None = None
    ipv4_forwarding: int | None = None  # None: not reported
    ipv6_addr_gen_mode: int | None = None  # 1 = none: no link-local address
    ipv4_rp_filter: int | None = None  # net.ipv4.conf.<dev>.rp_filter (None: not reported)
    ipv4_drop_unicast_in_l2_multicast: int | None = None
    ipv4_route_localnet: int | None = None
    mac: str | None = None  # lowercase; None: not reported
    hairpin: int | None = None  # a bridge port's hairpin mode (None: not a bridge port)


@dataclass(frozen=True, order=True)
class FdbEntry:
    """A VXLAN FDB entry (``bridge fdb ... self``): MAC → remote VTEP on device ``dev``.

    ``port``/``vni`` are only set when the kernel reports them, i.e. when they differ from the
    device's own; our entries never set them.
    """

    dev: str
    mac: str
    dst: str | None
    permanent: bool = True
    port: int | None = None
    vni: int | None = None


@dataclass(frozen=True, order=True)
class NeighEntry:
    """An IPv4 neighbour entry on a VXLAN device, answered locally by the device's ARP proxy."""

    dev: str
    ip: str
    mac: str | None
    permanent: bool = True


@dataclass(frozen=True, order=True)
class RouteEntry:
    """A unicast route through one of our devices (there should be none)."""

    dev: str
    family: int
    table: int
    dst: str | None
    dst_len: int
    priority: int | None = None
    gateway: str | None = None


@dataclass(frozen=True)
class Observed:
    """The kernel's view. ``links`` holds every link; entries only those on our devices;
    ``ip_forward`` is net.ipv4.ip_forward (None: not read)."""

    links: Mapping[str, LinkState] = field(default_factory=dict)
    fdb: frozenset[FdbEntry] = frozenset()
    neigh: frozenset[NeighEntry] = frozenset()
    routes: frozenset[RouteEntry] = frozenset()
    ip_forward: int | None = None

    def replace(self, **changes) -> "Observed":
        return dataclasses.replace(self, **changes)
