"""The planner: desired vs observed → minimal actions, in a safe order. Pure, no kernel."""
from __future__ import annotations

import errno
import struct
from dataclasses import replace

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from cantainer_agent.overlay import DesiredHost, EndpointSpec, NetworkSpec, kernel
from cantainer_agent.overlay import plan as P
from cantainer_agent.overlay.model import (
    FdbEntry,
    LinkState,
    NeighEntry,
    Observed,
    RouteEntry,
    VxlanInfo,
    bridge_name,
    host_veth_name,
    vxlan_name,
)

A, B, C = "198.18.250.1", "198.18.250.2", "198.18.250.3"
NET1 = NetworkSpec("10.0.0.0/24", 4096)
NET2 = NetworkSpec("10.1.0.0/24", 4097)
BR1, VX1, BR2, VX2 = bridge_name(4096), vxlan_name(4096), bridge_name(4097), vxlan_name(4097)
C1 = EndpointSpec("c1", NET1.cidr, "10.0.0.2", "a", A)
C2 = EndpointSpec("c2", NET1.cidr, "10.0.0.3", "b", B)
C3 = EndpointSpec("c3", NET2.cidr, "10.1.0.2", "c", C)
C4 = EndpointSpec("c4", NET2.cidr, "10.1.0.3", "a", A)
C5 = EndpointSpec("c5", NET1.cidr, "10.0.0.4", "c", C)


def desired(*endpoints, networks=(NET1, NET2), node="a", vtep=A, mtu=1500, port=4789) -> DesiredHost:
    return DesiredHost.build(node, vtep, mtu, networks, endpoints or (C1, C2, C3, C4, C5), vxlan_port=port)


def converged(d: DesiredHost, extra_links=()) -> Observed:
    """What a kernel programmed exactly as ``d`` wants reports."""
    links = {}
    index = iter(range(10, 10_000))

    def add(link):
        links[link.name] = link

    add(LinkState("lo", 1, None, 65536, True))
    add(LinkState("eth0", 2, None, 1500, True, addresses=(f"{d.vtep}/24",), ipv4_forwarding=1, ipv6_addr_gen_mode=0))
    for net in d.networks:
        add(LinkState(net.bridge, next(index), "bridge", d.mtu, True, ipv4_forwarding=0, ipv6_addr_gen_mode=1,
                      ipv4_rp_filter=1, ipv4_drop_unicast_in_l2_multicast=1))
        add(LinkState(net.vxlan, next(index), "vxlan", d.mtu, True, master=net.bridge,
                      vxlan=VxlanInfo(net.vni, d.vtep, d.vxlan_port), ipv4_forwarding=1, ipv6_addr_gen_mode=1))
    for e in d.local:
        add(LinkState(e.host_veth, next(index), "veth", d.mtu, True, master=d.network(e.network_cidr).bridge,
                      ipv4_forwarding=1, ipv6_addr_gen_mode=1))
    for link in extra_links:
        add(link)
    fdb = frozenset(P.wanted_fdb(d))
    neigh = frozenset(P.wanted_neigh(d))
    return Observed(links=links, fdb=fdb, neigh=neigh)


def names(actions):
    return [str(a) for a in actions]


def of_type(actions, *types):
    return [a for a in actions if isinstance(a, types)]


# ------------------------------------------------------------------------------ converged


def test_no_actions_when_observed_equals_desired():
    d = desired()
    assert P.diff(d, converged(d)) == []


def test_foreign_links_are_never_touched():
    d = desired()
    foreign = [LinkState("docker0", 50, "bridge", 1500, False, addresses=("172.17.0.1/16",)),
               LinkState("vxlan0", 51, "vxlan", 1500, True, vxlan=VxlanInfo(42, None, 8472, True, False)),
               LinkState("veth1234", 52, "veth", 1500, True, master="docker0"),
               LinkState("cni0", 53, "bridge", 1450, True)]
    assert P.diff(d, converged(d, foreign)) == []


def test_unknown_inet_settings_are_left_alone():
    d = desired()
    o = converged(d)
    links = {n: replace(link, ipv4_forwarding=None, ipv6_addr_gen_mode=None) for n, link in o.links.items()}
    assert P.diff(d, o.replace(links=links)) == []


def test_empty_host_builds_everything_in_order():
    d = desired()
    actions = P.diff(d, Observed(links={"lo": LinkState("lo", 1, None, 65536, True)}))
    assert names(actions) == [
        f"create bridge {BR1} mtu 1450",
        f"create vxlan {VX1} id 4096 local {A} dstport 4789 mtu 1450 master {BR1}",
        f"create bridge {BR2} mtu 1450",
        f"create vxlan {VX2} id 4097 local {A} dstport 4789 mtu 1450 master {BR2}",
        f"fdb {C2.mac} dst {B} dev {VX1} permanent",
        f"fdb {C5.mac} dst {C} dev {VX1} permanent",
        f"fdb {C3.mac} dst {C} dev {VX2} permanent",
        f"neigh 10.0.0.3 lladdr {C2.mac} dev {VX1} permanent",
        f"neigh 10.0.0.4 lladdr {C5.mac} dev {VX1} permanent",
        f"neigh 10.1.0.2 lladdr {C3.mac} dev {VX2} permanent",
    ]


def test_no_flooding_entries_are_planned():
    d = desired()
    planned = of_type(P.diff(d, Observed()), P.ReplaceFdb)
    assert len(planned) == 3  # one per remote container; none of them a flooding (all-zero/multicast) entry
    for a in planned:
        assert a.mac != "00:00:00:00:00:00" and not int(a.mac.split(":")[0], 16) & 1


def test_a_missing_local_veth_is_not_created_but_reported():
    d = desired()
    o = converged(d)
    links = dict(o.links)
    del links[host_veth_name("c1")]
    assert P.diff(d, o.replace(links=links)) == []
    report = P.health(d, o.replace(links=links))
    assert report["networks"][NET1.cidr]["ports_missing"] == ["c1"]
    assert report["pending"] == 0


# ----------------------------------------------------------------------------- stale state


def test_removed_container_loses_its_entries():
    before = desired()
    after = desired(C1, C3, C4, C5)  # c2 removed
    actions = P.diff(after, converged(before))
    assert names(actions) == [
        f"delete fdb {C2.mac} dst {B} dev {VX1}",
        f"delete neigh 10.0.0.3 dev {VX1}",
    ]


def test_gone_host_loses_all_its_entries():
    before = desired()
    after = desired(C1, C2, C4)  # host c (c3, c5) gone
    actions = P.diff(after, converged(before))
    assert sorted(names(actions)) == sorted([
        f"delete fdb {C5.mac} dst {C} dev {VX1}",
        f"delete fdb {C3.mac} dst {C} dev {VX2}",
        f"delete neigh 10.0.0.4 dev {VX1}",
        f"delete neigh 10.1.0.2 dev {VX2}",
    ])


def test_network_removed_deletes_its_devices_not_each_entry():
    before = desired()
    after = desired(C1, C2, C5, networks=(NET1,))  # 10.1.0.0/24 deleted with its containers
    actions = P.diff(after, converged(before))
    assert names(actions) == [
        f"delete link {host_veth_name('c4')} (no such container on this host)",
        f"delete link {VX2} (network with VNI 4097 not needed on this host)",
        f"delete link {BR2} (network with VNI 4097 not needed on this host)",
    ]


def test_last_local_container_gone_removes_the_network_from_this_host():
    before = desired()
    after = desired(C2, C3, C4, C5)  # c1 gone: host a has nothing left on 10.0.0.0/24
    actions = P.diff(after, converged(before))
    assert names(actions) == [
        f"delete link {host_veth_name('c1')} (no such container on this host)",
        f"delete link {VX1} (network with VNI 4096 not needed on this host)",
        f"delete link {BR1} (network with VNI 4096 not needed on this host)",
    ]


def test_orphaned_veth_is_deleted():
    d = desired()
    orphan = LinkState(host_veth_name("long-gone"), 99, "veth", 1450, True, master=BR1)
    assert names(P.diff(d, converged(d, [orphan]))) == [
        f"delete link {orphan.name} (no such container on this host)"]


def test_foreign_and_flooding_fdb_entries_are_deleted():
    d = desired()
    o = converged(d)
    junk = {FdbEntry(VX1, "00:00:00:00:00:00", B), FdbEntry(VX1, "02:42:0a:00:00:63", "198.18.250.99"),
            FdbEntry(VX1, "aa:bb:cc:dd:ee:ff", B, permanent=False)}
    actions = P.diff(d, o.replace(fdb=o.fdb | junk))
    assert sorted(a.entry for a in actions) == sorted(junk)
    assert all(isinstance(a, P.DeleteFdb) for a in actions)


def test_stale_neighbour_is_deleted():
    d = desired()
    o = converged(d)
    stale = NeighEntry(VX2, "10.1.0.99", "02:42:0a:01:00:63")
    assert P.diff(d, o.replace(neigh=o.neigh | {stale})) == [P.DeleteNeigh(stale)]


# ------------------------------------------------------------------------- changed state


def test_ip_reused_on_another_host_rewrites_fdb_in_place():
    before = desired()
    moved = EndpointSpec("c2-new", NET1.cidr, "10.0.0.3", "c", C)  # c2's IP now on host c
    after = desired(C1, moved, C3, C4, C5)
    assert names(P.diff(after, converged(before))) == [f"fdb {C2.mac} dst {C} dev {VX1} permanent"]


def test_wrong_neighbour_mac_is_rewritten_in_place():
    d = desired()
    o = converged(d)
    wrong = NeighEntry(VX1, "10.0.0.3", "02:42:0a:00:00:99")
    neigh = (o.neigh - {NeighEntry(VX1, "10.0.0.3", C2.mac)}) | {wrong}
    assert names(P.diff(d, o.replace(neigh=neigh))) == [f"neigh 10.0.0.3 lladdr {C2.mac} dev {VX1} permanent"]


def test_non_permanent_entries_are_made_permanent():
    d = desired()
    o = converged(d)
    fdb = (o.fdb - {FdbEntry(VX1, C2.mac, B)}) | {FdbEntry(VX1, C2.mac, B, permanent=False)}
    neigh = (o.neigh - {NeighEntry(VX1, "10.0.0.3", C2.mac)}) | {NeighEntry(VX1, "10.0.0.3", C2.mac, False)}
    assert names(P.diff(d, o.replace(fdb=fdb, neigh=neigh))) == [
        f"fdb {C2.mac} dst {B} dev {VX1} permanent",
        f"neigh 10.0.0.3 lladdr {C2.mac} dev {VX1} permanent",
    ]


def test_extra_remotes_of_a_mac_are_deleted_and_the_right_one_kept():
    d = desired()
    o = converged(d)
    extra = FdbEntry(VX1, C2.mac, C)
    assert P.diff(d, o.replace(fdb=o.fdb | {extra})) == [P.DeleteFdb(extra)]
    # two wrong remotes: both go, then the right one is added
    wrong = {FdbEntry(VX1, C2.mac, C), FdbEntry(VX1, C2.mac, "198.18.250.99")}
    actions = P.diff(d, o.replace(fdb=(o.fdb - {FdbEntry(VX1, C2.mac, B)}) | wrong))
    assert {a.entry for a in of_type(actions, P.DeleteFdb)} == wrong
    assert of_type(actions, P.ReplaceFdb) == [P.ReplaceFdb(VX1, C2.mac, B)]
    assert actions.index(of_type(actions, P.ReplaceFdb)[0]) > max(
        actions.index(a) for a in of_type(actions, P.DeleteFdb)
    )


def test_entry_with_foreign_port_is_replaced():
    d = desired()
    o = converged(d)
    odd = FdbEntry(VX1, C2.mac, B, port=9999)
    actions = P.diff(d, o.replace(fdb=(o.fdb - {FdbEntry(VX1, C2.mac, B)}) | {odd}))
    assert actions == [P.DeleteFdb(odd), P.ReplaceFdb(VX1, C2.mac, B)]


@pytest.mark.parametrize("change", [
    {"port": 8472}, {"local": "198.18.250.77"}, {"learning": True}, {"proxy": False}, {"group": "239.1.1.1"},
    {"vni": 5000},
])
def test_vxlan_with_other_settings_is_recreated_with_its_entries(change):
    d = desired()
    o = converged(d)
    links = dict(o.links)
    links[VX1] = replace(links[VX1], vxlan=replace(links[VX1].vxlan, **change))
    actions = P.diff(d, o.replace(links=links))
    assert names(actions) == [
        f"delete link {VX1} (VXLAN settings differ)",
        f"create vxlan {VX1} id 4096 local {A} dstport 4789 mtu 1450 master {BR1}",
        f"fdb {C2.mac} dst {B} dev {VX1} permanent",
        f"fdb {C5.mac} dst {C} dev {VX1} permanent",
        f"neigh 10.0.0.3 lladdr {C2.mac} dev {VX1} permanent",
        f"neigh 10.0.0.4 lladdr {C5.mac} dev {VX1} permanent",
    ]


def test_configured_port_is_used():
    d = desired(port=8472)
    assert "dstport 8472" in names(P.diff(d, Observed()))[1]


def test_wrong_kind_under_our_name_is_replaced():
    d = desired()
    o = converged(d)
    links = dict(o.links)
    links[BR1] = LinkState(BR1, links[BR1].index, "veth", 1450, True)
    actions = P.diff(d, o.replace(links=links))
    assert names(actions)[:1] == [f"delete link {BR1} (is a veth, not a bridge)"]
    assert P.CreateBridge(BR1, 1450) in actions


def test_underlay_mtu_change_resizes_every_device():
    before = desired()
    after = desired(mtu=9000)
    actions = P.diff(after, converged(before))
    assert sorted(names(actions)) == sorted(
        f"set {dev} mtu 8950" for dev in (BR1, VX1, BR2, VX2, host_veth_name("c1"), host_veth_name("c4")))


def test_detached_down_and_misconfigured_devices_are_fixed():
    d = desired()
    o = converged(d)
    links = dict(o.links)
    links[VX1] = replace(links[VX1], master=None, up=False, ipv6_addr_gen_mode=0)
    links[BR2] = replace(links[BR2], ipv4_forwarding=1, addresses=("10.1.0.1/24", "fe80::1/64"))
    links[host_veth_name("c4")] = replace(links[host_veth_name("c4")], master=BR1)
    actions = P.diff(d, o.replace(links=links))
    assert sorted(names(actions)) == sorted([
        f"set {VX1} master {BR1}",
        f"set {VX1} ipv6 addrgenmode 1",
        f"set {VX1} up",
        f"set {BR2} ipv4 forwarding 0",
        f"delete address 10.1.0.1/24 from {BR2}",
        f"delete address fe80::1/64 from {BR2}",
        f"set {host_veth_name('c4')} master {BR2}",
    ])


def test_bridge_without_reverse_path_filter_or_l2_multicast_guard_is_fixed():
    """A bridge must not let a container aim IP unicast at the host (rp_filter, unicast in L2 multicast)."""
    d = desired()
    o = converged(d)
    assert P.diff(d, o) == []
    links = dict(o.links)
    links[BR1] = replace(links[BR1], ipv4_rp_filter=0, ipv4_drop_unicast_in_l2_multicast=0)
    links[BR2] = replace(links[BR2], ipv4_rp_filter=2)  # loose mode is not enough either
    actions = P.diff(d, o.replace(links=links))
    assert sorted(names(actions)) == sorted([
        f"set {BR1} ipv4 rp_filter 1, ipv4 drop_unicast_in_l2_multicast 1",
        f"set {BR2} ipv4 rp_filter 1",
    ])
    assert P.CreateBridge(BR1, d.mtu) in P.diff(d, o.replace(links={n: k for n, k in o.links.items() if n != BR1}))


def test_routes_through_our_devices_are_deleted_but_not_on_deleted_devices():
    before = desired()
    after = desired(C1, C2, C5, networks=(NET1,))
    o = converged(before)
    r1 = RouteEntry(BR1, 2, 254, "10.9.0.0", 24)
    r2 = RouteEntry(BR2, 2, 254, "10.8.0.0", 24)
    actions = P.diff(after, o.replace(routes=frozenset({r1, r2})))
    assert P.DeleteRoute(r1) in actions
    assert all(a.route != r2 for a in of_type(actions, P.DeleteRoute))


def test_plan_order_deletes_then_cleanup_then_creates_then_adds():
    d = desired()
    o = converged(desired(C1, C2, C4, EndpointSpec("c9", NET2.cidr, "10.1.0.9", "b", B)))
    links = dict(o.links)
    del links[BR1], links[VX1]
    links["cv000000000000"] = LinkState("cv000000000000", 500, "veth", 1450, True)
    actions = P.diff(d, o.replace(links=links))
    rank = {P.DeleteLink: 0, P.DeleteFdb: 1, P.DeleteNeigh: 1, P.CreateBridge: 2, P.CreateVxlan: 2,
            P.SetMaster: 3, P.ReplaceFdb: 4, P.ReplaceNeigh: 4}
    ranks = [rank[type(a)] for a in actions]
    assert ranks == sorted(ranks), names(actions)
    assert names(actions)[0] == "delete link cv000000000000 (no such container on this host)"


def test_diff_is_deterministic():
    d = desired()
    o = converged(desired(C1, C4))
    plan = names(P.diff(d, o))
    assert plan  # something to do, so the order below means something
    # the same wants built in another order, against a separately built view of the same kernel
    assert names(P.diff(desired(C5, C4, C3, C2, C1), converged(desired(C4, C1)))) == plan


def test_health_counts():
    d = desired()
    o = converged(d)
    fdb = o.fdb - {FdbEntry(VX1, C2.mac, B)}
    report = P.health(d, o.replace(fdb=fdb))
    assert report["pending"] == 1
    assert report["mtu"] == 1450
    net1 = report["networks"][NET1.cidr]
    assert (net1["fdb_expected"], net1["fdb_programmed"]) == (2, 1)
    assert (net1["neigh_expected"], net1["neigh_programmed"]) == (2, 2)
    assert net1["bridge"] and net1["vxlan"] and net1["local_containers"] == 1


# ------------------------------------------------------------------- apply error handling


class FakeIPR:
    """Records calls; raises what it is told to. Checks apply()'s bookkeeping, not the kernel."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail or {}

    def link_lookup(self, ifname):
        return [] if ifname == "missing" else [7]

    def _call(self, what, command, **kw):
        self.calls.append((what, command, kw))
        if (what, command) in self.fail:
            raise self.fail[(what, command)]

    def link(self, command, **kw):
        self._call("link", command, **kw)

    def fdb(self, command, **kw):
        self._call("fdb", command, **kw)

    def neigh(self, command, **kw):
        self._call("neigh", command, **kw)


def test_apply_treats_already_gone_as_done_and_keeps_going():
    ipr = FakeIPR(fail={("link", "del"): NetlinkError(errno.ENODEV)})
    actions = [P.DeleteLink("cv000000000000"), P.DeleteLink("missing"),
               P.DeleteFdb(FdbEntry("missing", C2.mac, B)), P.SetUp(VX1)]  # no device: no entry either
    assert kernel.apply(ipr, actions) == []
    assert ipr.calls[-1] == ("link", "set", {"index": 7, "state": "up"})


def test_apply_reports_failures_and_continues():
    boom = NetlinkError(errno.EPERM)
    ipr = FakeIPR(fail={("link", "del"): boom})
    actions = [P.DeleteLink(VX1), P.SetMtu("missing", 1450), P.SetUp(VX1)]
    failures = kernel.apply(ipr, actions)
    assert [a for a, _ in failures] == actions[:2]
    assert failures[0][1] is boom
    assert ipr.calls[-1] == ("link", "set", {"index": 7, "state": "up"})


def test_entry_requests_are_what_pyroute2_would_send():
    """The batched entry writes (kernel._entry_message): RTM_NEWNEIGH with create|replace|ack for a
    permanent FDB entry on the VXLAN device itself (NTF_SELF, AF_BRIDGE) and a permanent neighbour
    (AF_INET); RTM_DELNEIGH for deletes, with the remote port and VNI when the kernel reported them."""
    known = kernel._KnownIndices(FakeIPR(), {})

    def parse(data):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data)
        family, index, state, ntf, _type = struct.unpack_from("=BxxxiHBB", data, 16)
        attrs, offset = {}, 28
        while offset < length:
            size, attr = struct.unpack_from("=HH", data, offset)
            attrs[attr] = data[offset + 4:offset + size]
            offset += (size + 3) & ~3
        assert length == len(data) == offset
        return kind, flags, seq, family, index, state, ntf, attrs

    fdb = parse(kernel._entry_message(known, P.ReplaceFdb(VX1, "02:42:0a:00:00:03", "198.18.0.2"), 5))
    assert fdb == (28, 0x1 | 0x4 | 0x100 | 0x400, 5, 7, 7, 0x80 | 0x40, 0x02,
                   {2: bytes.fromhex("02420a000003"), 1: bytes([198, 18, 0, 2])})
    neigh = parse(kernel._entry_message(known, P.ReplaceNeigh(VX1, "10.0.0.3", "02:42:0a:00:00:03"), 6))
    assert neigh == (28, 0x1 | 0x4 | 0x100 | 0x400, 6, 2, 7, 0x80, 0,
                     {1: bytes([10, 0, 0, 3]), 2: bytes.fromhex("02420a000003")})
    gone = parse(kernel._entry_message(known, P.DeleteFdb(FdbEntry(VX1, C2.mac, B, port=8472, vni=9)), 7))
    assert gone[:3] == (29, 0x1 | 0x4, 7)
    assert gone[7][6] == struct.pack("!H", 8472) and gone[7][7] == struct.pack("=I", 9)
    unneeded = parse(kernel._entry_message(known, P.DeleteNeigh(NeighEntry(VX1, "10.0.0.3", C2.mac, True)), 8))
    assert unneeded[:4] == (29, 0x1 | 0x4, 8, 2) and unneeded[7] == {1: bytes([10, 0, 0, 3])}
    assert known.indices == {VX1: 7}  # looked up once


# ---------------------------------------------------------------------------------- fold


@pytest.mark.parametrize("before,after", [
    ((C1, C2, C3, C4), (C1, C2, C3, C4, C5)),  # a remote container came
    ((C1, C2, C3, C4, C5), (C1, C3, C4, C5)),  # one went
    ((C1, C2, C3, C4, C5), (C1, replace(C2, node="c", vtep=C), C3, C4, C5)),  # its IP now lives elsewhere
])
def test_fold_of_entry_changes_is_the_converged_kernel(before, after):
    """Folding the actions into the observed view gives what the kernel would report once they
    ran — the view OverlayReconciler diffs against until its next full observe."""
    observed = converged(desired(*before))
    actions = P.diff(desired(*after), observed)
    assert actions and all(isinstance(a, P._ENTRY_ACTIONS) for a in actions)
    folded = P.fold(observed, actions)
    assert folded == converged(desired(*after))
    assert P.diff(desired(*after), folded) == []


def test_fold_gives_up_on_link_changes_and_keeps_an_unchanged_view():
    observed = converged(desired(C1, C2, C3, C4))
    assert P.fold(observed, []) is observed
    wider = P.diff(desired(C1, C2, C3, C4, networks=(NET1,)), observed)  # a network's devices go
    assert any(isinstance(a, P.DeleteLink) for a in wider)
    assert P.fold(observed, wider) is None


def test_fold_rewrites_a_stale_fdb_remote_to_the_single_wanted_one():
    d = desired(C1, C2)
    good = converged(d)
    stale = good.replace(fdb=frozenset({FdbEntry(VX1, C2.mac, C), FdbEntry(VX1, C2.mac, B, port=8472)}))
    actions = P.diff(d, stale)
    assert P.fold(stale, actions).fdb == good.fdb


# ------------------------------------------------------------------------------ gateways

GW1 = NetworkSpec("10.0.0.0/24", 4096, "10.0.0.1")  # routed: egress, published ports
GW2 = NetworkSpec("10.1.0.0/24", 4097, "10.1.0.1", internal=True)


def gateway_converged(d: DesiredHost) -> Observed:
    """A kernel where the gateways are programmed: address, MAC, subnet route, forwarding, hairpin."""
    base = converged(d)
    links = dict(base.links)
    routes = set()
    for net in d.networks:
        inet = P.bridge_inet(net)
        links[net.bridge] = replace(links[net.bridge], addresses=(net.gateway_address,), mac=net.gateway_mac,
                                    ipv4_forwarding=inet["ipv4_forwarding"],
                                    ipv4_route_localnet=inet["ipv4_route_localnet"])
        routes.add(RouteEntry(net.bridge, 2, 254, str(net.network.network_address), net.prefixlen, priority=None))
    for e in d.local:
        links[e.host_veth] = replace(links[e.host_veth], hairpin=int(d.network(e.network_cidr).routed))
    return base.replace(links=links, routes=frozenset(routes), ip_forward=1)


def test_a_gateway_is_created_with_its_bridge():
    d = desired(C1, C4, networks=(GW1, GW2))
    creates = of_type(P.diff(d, Observed(links={}, ip_forward=0)), P.CreateBridge, P.EnableForwarding)
    assert isinstance(creates[0], P.EnableForwarding)  # before any bridge: turning it on resets devices
    routed, internal = creates[1:]
    assert (routed.address, routed.mac, dict(routed.inet)["ipv4_forwarding"], dict(routed.inet)["ipv4_route_localnet"]
            ) == ("10.0.0.1/24", "02:42:0a:00:00:01", 1, 1)
    assert (internal.address, dict(internal.inet)["ipv4_forwarding"], dict(internal.inet)["ipv4_route_localnet"]
            ) == ("10.1.0.1/24", 0, 0)
    assert dict(internal.inet)["ipv4_rp_filter"] == 1 == dict(routed.inet)["ipv4_drop_unicast_in_l2_multicast"]


def test_a_programmed_gateway_is_left_alone():
    d = desired(C1, C2, C4, networks=(GW1, GW2))
    assert P.diff(d, gateway_converged(d)) == []


def test_gateway_drift_is_repaired_without_touching_the_rest():
    d = desired(C1, C2, C4, networks=(GW1, GW2))
    good = gateway_converged(d)
    links = dict(good.links)
    links[BR1] = replace(links[BR1], addresses=("10.0.0.9/24",), mac="02:00:00:00:00:09", ipv4_route_localnet=0)
    links[C1.host_veth] = replace(links[C1.host_veth], hairpin=0)
    stray = RouteEntry(BR1, 2, 254, "192.168.7.0", 24)
    actions = P.diff(d, good.replace(links=links, routes=good.routes | {stray}, ip_forward=0))
    assert set(names(actions)) == {
        f"delete route 192.168.7.0/24 table 254 dev {BR1}", f"delete address 10.0.0.9/24 from {BR1}",
        "set net.ipv4.ip_forward 1", f"set {BR1} ipv4 route_localnet 1", f"set {BR1} address 02:42:0a:00:00:01",
        f"add address 10.0.0.1/24 to {BR1}", f"set {C1.host_veth} hairpin on"}
    assert names(actions)[:2] == [f"delete route 192.168.7.0/24 table 254 dev {BR1}",
                                  f"delete address 10.0.0.9/24 from {BR1}"]


def test_no_forwarding_without_a_network_that_routes():
    d = desired(C4, networks=(GW2,))
    assert P.diff(d, gateway_converged(d).replace(ip_forward=0)) == []


def test_a_network_from_before_gateways_keeps_a_bare_bridge():
    d = desired(C1, networks=(NET1,))
    actions = P.diff(d, Observed(links={}, ip_forward=0))
    bridge = of_type(actions, P.CreateBridge)[0]
    assert (bridge.address, bridge.mac, dict(bridge.inet)["ipv4_forwarding"]) == (None, None, 0)
    assert not of_type(actions, P.EnableForwarding)


def test_an_endpoint_on_the_gateway_address_is_skipped():
    bad = EndpointSpec("bad", GW1.cidr, "10.0.0.1", "a", A)
    d = desired(C1, bad, networks=(GW1,))
    assert [e.container_id for e in d.local] == ["c1"] and "is the gateway" in d.skipped[0]
