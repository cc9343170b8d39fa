"""Desired vs observed → the minimal list of actions, as pure data (no kernel access).

Level-triggered and idempotent: empty when the kernel matches, so a restart or a periodic pass never
deletes and re-adds a correct entry. Order: delete unwanted links; delete routes/addresses on our
devices (but a bridge's gateway address and its subnet route), then stale FDB and neighbour entries;
turn on IPv4 forwarding if a network here routes; create bridges (gateway address and MAC), then
VXLAN devices, and fix MTU / master / up / inet settings / gateway; fix container veth ports; add or
replace remote entries. ``fold``
applies entry changes to an observed view (the reconciler's cache); ``health`` counts what is
programmed against what is expected. Forwarding model: docs/design/overlay.md.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .model import (
    DesiredHost,
    FdbEntry,
    LinkState,
    NeighEntry,
    NetworkSpec,
    Observed,
    RouteEntry,
    VxlanInfo,
    bridge_name,
    owned_kind,
    vxlan_name,
)

AF_INET = 2
RT_TABLE_MAIN = 254

IPV6_ADDR_GEN_MODE_NONE = 1  # IN6_ADDR_GEN_MODE_NONE: the kernel adds no link-local address


class Action:
    """Base of all actions. Subclasses are frozen dataclasses; ``str()`` is a one-line summary."""

    dev: str


@dataclass(frozen=True)
class DeleteLink(Action):
    dev: str
    reason: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"delete link {self.dev}" + (f" ({self.reason})" if self.reason else "")


# A bridge's IPv4 settings: strict reverse-path filtering and no IP unicast hidden in L2
# broadcast/multicast frames — what a container could aim at the host's own sockets (its VXLAN
# socket among them) through the bridge; nftables drops such packets too (netfilter/). Routing out
# of it (and route_localnet, for localhost's published ports) only for a network that routes.
BRIDGE_INET = {"ipv4_forwarding": 0, "ipv4_rp_filter": 1, "ipv4_drop_unicast_in_l2_multicast": 1,
               "ipv4_route_localnet": 0}


def bridge_inet(net: NetworkSpec | None) -> dict[str, int]:
    routed = int(bool(net and net.routed))
    return {**BRIDGE_INET, "ipv4_forwarding": routed, "ipv4_route_localnet": routed}


@dataclass(frozen=True)
class CreateBridge(Action):
    """Create a bridge: MTU, MAC (the gateway's, if any), inet settings (``bridge_inet``), no IPv6
    link-local, up, then the gateway address (``ip/prefixlen``, if any)."""

    dev: str
    mtu: int
    mac: str | None = None
    address: str | None = None
    inet: tuple[tuple[str, int], ...] = tuple(BRIDGE_INET.items())

    def __str__(self) -> str:
        return f"create bridge {self.dev} mtu {self.mtu}" + (f" address {self.address} mac {self.mac}"
                                                             if self.address else "")


@dataclass(frozen=True)
class SetMac(Action):
    dev: str
    mac: str

    def __str__(self) -> str:
        return f"set {self.dev} address {self.mac}"


@dataclass(frozen=True)
class SetHairpin(Action):
    """A container's bridge port sends frames back where they came from: with br_netfilter, a
    container reaching its own published port is DNAT'd back through the bridge (bridged, not
    routed) to the port it came in on — dropped without hairpin mode (docker sets it too)."""

    dev: str

    def __str__(self) -> str:
        return f"set {self.dev} hairpin on"


@dataclass(frozen=True)
class AddAddress(Action):
    dev: str
    address: str  # "ip/prefixlen"

    def __str__(self) -> str:
        return f"add address {self.address} to {self.dev}"


@dataclass(frozen=True)
class EnableForwarding(Action):
    """net.ipv4.ip_forward = 1: the host routes for its networks (egress, published ports), as docker
    sets it; what it may route is nftables' business (netfilter/ruleset.py)."""

    dev: str = ""

    def __str__(self) -> str:
        return "set net.ipv4.ip_forward 1"


@dataclass(frozen=True)
class CreateVxlan(Action):
    """Create a VXLAN device (learning off, proxy on, no group), enslave it to ``master``, up."""

    dev: str
    vni: int
    local: str
    port: int
    mtu: int
    master: str

    def __str__(self) -> str:
        return (f"create vxlan {self.dev} id {self.vni} local {self.local} dstport {self.port} "
                f"mtu {self.mtu} master {self.master}")


@dataclass(frozen=True)
class SetMtu(Action):
    dev: str
    mtu: int

    def __str__(self) -> str:
        return f"set {self.dev} mtu {self.mtu}"


@dataclass(frozen=True)
class SetMaster(Action):
    dev: str
    master: str

    def __str__(self) -> str:
        return f"set {self.dev} master {self.master}"


@dataclass(frozen=True)
class SetUp(Action):
    dev: str

    def __str__(self) -> str:
        return f"set {self.dev} up"


@dataclass(frozen=True)
class SetInetConf(Action):
    """Per-device inet settings: ``BRIDGE_INET`` (bridges), IPv6 address generation none. None: leave."""

    dev: str
    ipv4_forwarding: int | None = None
    ipv6_addr_gen_mode: int | None = None
    ipv4_rp_filter: int | None = None
    ipv4_drop_unicast_in_l2_multicast: int | None = None
    ipv4_route_localnet: int | None = None

    def __str__(self) -> str:
        labels = (("ipv4_forwarding", "ipv4 forwarding"), ("ipv4_rp_filter", "ipv4 rp_filter"),
                  ("ipv4_drop_unicast_in_l2_multicast", "ipv4 drop_unicast_in_l2_multicast"),
                  ("ipv4_route_localnet", "ipv4 route_localnet"), ("ipv6_addr_gen_mode", "ipv6 addrgenmode"))
        parts = [f"{label} {getattr(self, name)}" for name, label in labels if getattr(self, name) is not None]
        return f"set {self.dev} " + ", ".join(parts)


@dataclass(frozen=True)
class DeleteAddress(Action):
    dev: str
    address: str  # "ip/prefixlen"

    def __str__(self) -> str:
        return f"delete address {self.address} from {self.dev}"


@dataclass(frozen=True)
class DeleteRoute(Action):
    route: RouteEntry

    @property
    def dev(self) -> str:  # type: ignore[override]
        return self.route.dev

    def __str__(self) -> str:
        r = self.route
        return f"delete route {r.dst or 'default'}/{r.dst_len} table {r.table} dev {r.dev}"


@dataclass(frozen=True)
class DeleteFdb(Action):
    entry: FdbEntry

    @property
    def dev(self) -> str:  # type: ignore[override]
        return self.entry.dev

    def __str__(self) -> str:
        return f"delete fdb {self.entry.mac} dst {self.entry.dst} dev {self.entry.dev}"


@dataclass(frozen=True)
class ReplaceFdb(Action):
    """Add, or rewrite in place, the permanent FDB entry ``mac → dst`` on VXLAN device ``dev``."""

    dev: str
    mac: str
    dst: str

    def __str__(self) -> str:
        return f"fdb {self.mac} dst {self.dst} dev {self.dev} permanent"


@dataclass(frozen=True)
class DeleteNeigh(Action):
    entry: NeighEntry

    @property
    def dev(self) -> str:  # type: ignore[override]
        return self.entry.dev

    def __str__(self) -> str:
        return f"delete neigh {self.entry.ip} dev {self.entry.dev}"


@dataclass(frozen=True)
class ReplaceNeigh(Action):
    """Add, or rewrite in place, the permanent neighbour entry ``ip → mac`` on ``dev``."""

    dev: str
    ip: str
    mac: str

    def __str__(self) -> str:
        return f"neigh {self.ip} lladdr {self.mac} dev {self.dev} permanent"


# -------------------------------------------------------------------------------- wanted state


def wanted_fdb(desired: DesiredHost) -> set[FdbEntry]:
    vni = {net.cidr: net.vni for net in desired.networks}
    return {FdbEntry(vxlan_name(vni[ep.network_cidr]), ep.mac, ep.vtep) for ep in desired.remote}


def wanted_neigh(desired: DesiredHost) -> set[NeighEntry]:
    vni = {net.cidr: net.vni for net in desired.networks}
    return {NeighEntry(vxlan_name(vni[ep.network_cidr]), ep.ip, ep.mac) for ep in desired.remote}


def wanted_vxlan(desired: DesiredHost, vni: int) -> VxlanInfo:
    return VxlanInfo(vni=vni, local=desired.vtep, port=desired.vxlan_port, learning=False, proxy=True, group=None)


# ----------------------------------------------------------------------------------------- diff


def diff(desired: DesiredHost, observed: Observed) -> list[Action]:
    """The actions that turn ``observed`` into ``desired``; empty when they already agree."""
    mtu = desired.mtu
    links = observed.links
    nets = {net.vni: net for net in desired.networks}
    vni_of = {net.cidr: net.vni for net in desired.networks}
    veths = {ep.host_veth: ep for ep in desired.local}

    deletes: list[Action] = []
    cleanup: list[Action] = []
    creates: list[Action] = []
    ports: list[Action] = []
    adds: list[Action] = []
    gone: set[str] = set()  # links deleted by this plan: their entries/addresses go with them

    def delete(name: str, reason: str) -> None:
        deletes.append(DeleteLink(name, reason))
        gone.add(name)

    # 1. links we own but nobody wants — ports first, bridges last
    order = {"veth": 0, "vxlan": 1, "bridge": 2}
    owned = []
    for name in links:
        kind_vni = owned_kind(name)
        if kind_vni is not None:
            owned.append((order[kind_vni[0]], name, kind_vni[0], kind_vni[1]))
    for _, name, kind, vni in sorted(owned):
        if kind == "veth" and name not in veths:
            delete(name, "no such container on this host")
        elif kind in ("vxlan", "bridge") and vni not in nets:
            delete(name, f"network with VNI {vni} not needed on this host")

    # 2./3. per network: bridge, then VXLAN device
    for vni in sorted(nets):
        br, vx = bridge_name(vni), vxlan_name(vni)
        link = links.get(br)
        if link is not None and link.kind != "bridge":
            delete(br, f"is a {link.kind}, not a bridge")
            link = None
        net = nets[vni]
        inet = bridge_inet(net)
        if link is None:
            creates.append(CreateBridge(br, mtu, net.gateway_mac, net.gateway_address, tuple(inet.items())))
        else:
            creates.extend(_fix_link(link, mtu, master=None, inet=inet))
            if net.gateway_mac is not None and link.mac not in (None, net.gateway_mac):
                creates.append(SetMac(br, net.gateway_mac))
            cleanup.extend(DeleteAddress(br, a) for a in link.addresses if a != net.gateway_address)
            if net.gateway_address is not None and net.gateway_address not in link.addresses:
                creates.append(AddAddress(br, net.gateway_address))

        link = links.get(vx)
        want = wanted_vxlan(desired, vni)
        if link is not None and (link.kind != "vxlan" or link.vxlan != want):
            delete(vx, "VXLAN settings differ" if link.kind == "vxlan" else f"is a {link.kind}, not a vxlan")
            link = None
        if link is None:
            creates.append(CreateVxlan(vx, vni, desired.vtep, desired.vxlan_port, mtu, br))
        else:
            creates.extend(_fix_link(link, mtu, master=br))
            cleanup.extend(DeleteAddress(vx, a) for a in link.addresses)

    # 4. container veths that exist (creating them is attach_container's job: it needs the PID)
    for name, ep in sorted(veths.items()):
        link = links.get(name)
        if link is None or name in gone:
            continue
        if link.kind != "veth":
            delete(name, f"is a {link.kind}, not a veth")
            continue
        ports.extend(_fix_link(link, mtu, master=bridge_name(vni_of[ep.network_cidr])))
        if nets[vni_of[ep.network_cidr]].routed and link.hairpin == 0:
            ports.append(SetHairpin(name))
        cleanup.extend(DeleteAddress(name, a) for a in link.addresses)

    # 2. routes through our devices: none but the subnet route of a bridge's gateway address
    kept = {subnet_route(net) for net in desired.networks if net.gateway is not None}
    cleanup[:0] = [DeleteRoute(r) for r in sorted(observed.routes)
                   if r.dev not in gone and _route_key(r) not in kept]
    if any(net.routed for net in desired.networks) and observed.ip_forward not in (None, 1):
        creates.insert(0, EnableForwarding())  # first: turning it on resets every device's forwarding

    # 2./5. FDB: grouped per (device, MAC) — a device holds one entry per MAC, possibly with
    # several remotes; rewrite a single wrong remote in place rather than delete + add
    want_fdb = {(e.dev, e.mac): e for e in wanted_fdb(desired)}
    have_fdb: dict[tuple[str, str], list[FdbEntry]] = defaultdict(list)
    for entry in observed.fdb:
        if entry.dev not in gone:
            have_fdb[(entry.dev, entry.mac)].append(entry)
    for key in sorted(set(want_fdb) | set(have_fdb)):
        want_entry, have = want_fdb.get(key), sorted(have_fdb.get(key, ()))
        if want_entry is not None and want_entry in have:
            stale = [e for e in have if e != want_entry]
        elif want_entry is not None and len(have) == 1 and have[0].port is None and have[0].vni is None:
            stale = []  # replaced in place below
        else:
            stale = have
        cleanup.extend(DeleteFdb(e) for e in stale)
        if want_entry is not None and want_entry not in have:
            adds.append(ReplaceFdb(want_entry.dev, want_entry.mac, want_entry.dst))  # type: ignore[arg-type]

    # 2./5. neighbours: one per (device, IP); replace rewrites in place
    want_neigh = {(e.dev, e.ip): e for e in wanted_neigh(desired)}
    have_neigh = {(e.dev, e.ip): e for e in observed.neigh if e.dev not in gone}
    for key in sorted(set(want_neigh) | set(have_neigh)):
        want_n, have_n = want_neigh.get(key), have_neigh.get(key)
        if want_n is None:
            cleanup.append(DeleteNeigh(have_n))  # type: ignore[arg-type]
        elif want_n != have_n:
            adds.append(ReplaceNeigh(want_n.dev, want_n.ip, want_n.mac))  # type: ignore[arg-type]

    return deletes + cleanup + creates + ports + adds


def subnet_route(net: NetworkSpec) -> tuple:
    """The route the kernel adds with a bridge's gateway address (kept; compared without metric)."""
    return (bridge_name(net.vni), AF_INET, RT_TABLE_MAIN, str(net.network.network_address), net.prefixlen, None)


def _route_key(route: RouteEntry) -> tuple:
    return (route.dev, route.family, route.table, route.dst, route.dst_len, route.gateway)


def _fix_link(link: LinkState, mtu: int, master: str | None, inet: dict[str, int] | None = None) -> list[Action]:
    """Settings of an existing device: only what differs. Unknown (unreported) values are left."""
    actions: list[Action] = []
    if link.mtu != mtu:
        actions.append(SetMtu(link.name, mtu))
    if master is not None and link.master != master:
        actions.append(SetMaster(link.name, master))
    changes = {name: value for name, value in (inet or {}).items() if getattr(link, name) not in (None, value)}
    if link.ipv6_addr_gen_mode not in (None, IPV6_ADDR_GEN_MODE_NONE):
        changes["ipv6_addr_gen_mode"] = IPV6_ADDR_GEN_MODE_NONE
    if changes:
        actions.append(SetInetConf(link.name, **changes))
    if not link.up:
        actions.append(SetUp(link.name))
    return actions


_ENTRY_ACTIONS = (ReplaceFdb, DeleteFdb, ReplaceNeigh, DeleteNeigh)


def fold(observed: Observed, actions: list[Action]) -> Observed | None:
    """Pure: what a fresh observe would report once ``actions`` (from :func:`diff` against
    ``observed``) have all succeeded — when they only touch FDB and neighbour entries, the
    change a container starting or stopping on another host makes. None when any action
    changes links, addresses or routes: observe the kernel again then.

    Why: observing a host with ~1000 remote containers costs ~0.3 s of CPU in pyroute2, and
    every cluster change wakes every host (reconciler.OverlayReconciler keeps the folded view).
    """
    if not all(isinstance(a, _ENTRY_ACTIONS) for a in actions):
        return None
    if not actions:
        return observed
    fdb = set(observed.fdb)
    neigh = {(e.dev, e.ip): e for e in observed.neigh}
    replaced = {}
    for action in actions:
        if isinstance(action, DeleteFdb):
            fdb.discard(action.entry)
        elif isinstance(action, ReplaceFdb):  # the (device, MAC) ends up with this one remote
            replaced[(action.dev, action.mac)] = FdbEntry(action.dev, action.mac, action.dst)
        elif isinstance(action, DeleteNeigh):
            neigh.pop((action.entry.dev, action.entry.ip), None)
        else:
            neigh[(action.dev, action.ip)] = NeighEntry(action.dev, action.ip, action.mac)
    if replaced:
        fdb = {e for e in fdb if (e.dev, e.mac) not in replaced} | set(replaced.values())
    return observed.replace(fdb=frozenset(fdb), neigh=frozenset(neigh.values()))


# ---------------------------------------------------------------------- per-entry (incremental)


class EntryIndex:
    """The FDB and neighbour entries of an :class:`Observed`, by key, kept in step with the
    actions applied to it — so a pass that changes a few remote entries looks at those keys only."""

    def __init__(self, observed: Observed) -> None:
        self.fdb: dict[tuple[str, str], set[FdbEntry]] = defaultdict(set)
        for entry in observed.fdb:
            self.fdb[(entry.dev, entry.mac)].add(entry)
        self.neigh: dict[tuple[str, str], NeighEntry] = {(e.dev, e.ip): e for e in observed.neigh}

    def apply(self, actions: list[Action]) -> None:
        """The entry actions of :func:`diff_entries`, all succeeded (as :func:`fold`)."""
        for action in actions:
            if isinstance(action, DeleteFdb):
                key = (action.entry.dev, action.entry.mac)
                self.fdb[key].discard(action.entry)
                if not self.fdb[key]:
                    del self.fdb[key]
            elif isinstance(action, ReplaceFdb):
                self.fdb[(action.dev, action.mac)] = {FdbEntry(action.dev, action.mac, action.dst)}
            elif isinstance(action, DeleteNeigh):
                self.neigh.pop((action.entry.dev, action.entry.ip), None)
            elif isinstance(action, ReplaceNeigh):
                self.neigh[(action.dev, action.ip)] = NeighEntry(action.dev, action.ip, action.mac)

    def observed(self, base: Observed) -> Observed:
        """*base* with these entries (what :func:`fold` of the same actions gives)."""
        fdb = frozenset(e for entries in self.fdb.values() for e in entries)
        return base.replace(fdb=fdb, neigh=frozenset(self.neigh.values()))


def diff_entries(want_fdb: dict[tuple[str, str], FdbEntry], want_neigh: dict[tuple[str, str], NeighEntry],
                 keys: set[tuple[str, str, str]], have: EntryIndex) -> list[Action]:
    """:func:`diff`'s entry rules for the given keys only (``("fdb", dev, mac)`` and ``("neigh",
    dev, ip)``): when no link changes, the same actions a full diff would give for them."""
    cleanup: list[Action] = []
    adds: list[Action] = []
    for kind, dev, key in sorted(keys):
        if kind == "fdb":
            want_entry, entries = want_fdb.get((dev, key)), sorted(have.fdb.get((dev, key), ()))
            if want_entry is not None and want_entry in entries:
                stale = [e for e in entries if e != want_entry]
            elif want_entry is not None and len(entries) == 1 and entries[0].port is None and entries[0].vni is None:
                stale = []  # replaced in place below
            else:
                stale = entries
            cleanup.extend(DeleteFdb(e) for e in stale)
            if want_entry is not None and want_entry not in entries:
                adds.append(ReplaceFdb(want_entry.dev, want_entry.mac, want_entry.dst))  # type: ignore[arg-type]
        else:
            want_n, have_n = want_neigh.get((dev, key)), have.neigh.get((dev, key))
            if want_n is None and have_n is not None:
                cleanup.append(DeleteNeigh(have_n))
            elif want_n is not None and want_n != have_n:
                adds.append(ReplaceNeigh(want_n.dev, want_n.ip, want_n.mac))  # type: ignore[arg-type]
    return cleanup + adds


# --------------------------------------------------------------------------------------- health


def health(desired: DesiredHost, observed: Observed) -> dict:
    """Expected vs programmed state per network, JSON-ready, for ``status``.

    ``pending`` counts the actions a reconcile would still apply (0 = converged);
    ``ports_missing`` lists local containers whose veth is not on the bridge (not attached yet).
    """
    fdb, neigh = wanted_fdb(desired), wanted_neigh(desired)
    networks = {}
    for net in desired.networks:
        br, vx = bridge_name(net.vni), vxlan_name(net.vni)
        bl, vl = observed.links.get(br), observed.links.get(vx)
        want_f = {e for e in fdb if e.dev == vx}
        want_n = {e for e in neigh if e.dev == vx}
        local = [ep for ep in desired.local if ep.network_cidr == net.cidr]
        missing = sorted(ep.container_id for ep in local
                         if (observed.links.get(ep.host_veth) or _NO_LINK).master != br)
        networks[net.cidr] = {
            "vni": net.vni,
            "bridge": bool(bl and bl.kind == "bridge" and bl.up and bl.mtu == desired.mtu),
            "vxlan": bool(vl and vl.vxlan == wanted_vxlan(desired, net.vni) and vl.up
                          and vl.mtu == desired.mtu and vl.master == br),
            "fdb_expected": len(want_f),
            "fdb_programmed": len(want_f & observed.fdb),
            "neigh_expected": len(want_n),
            "neigh_programmed": len(want_n & observed.neigh),
            "local_containers": len(local),
            "ports_missing": missing,
        }
    return {
        "node": desired.node,
        "vtep": desired.vtep,
        "mtu": desired.mtu,
        "networks": networks,
        "pending": len(diff(desired, observed)),
        "skipped": list(desired.skipped),
    }


_NO_LINK = LinkState(name="", index=0, kind=None, mtu=0, up=False)
