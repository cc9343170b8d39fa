"""The overlay on real kernels: three fake hosts (network namespaces on a shared underlay), four
fake containers, the library driven inside each host's namespace — no mocks.

    c1@hA 10.0.0.2 ─┐ 10.0.0.0/24 (VNI 4096) ┌─ c2@hB 10.0.0.3
    c4@hA 10.1.0.3 ─┘ 10.1.0.0/24 (VNI 4097) └─ c3@hC 10.1.0.2
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import replace

import pytest

from cantainer_agent.overlay import (
    DesiredHost,
    EndpointSpec,
    KernelGuard,
    NetworkSpec,
    OverlayError,
    OverlayReconciler,
    attach_container,
    bridge_name,
    detach_container,
    diff,
    health,
    host_veth_name,
    mac_for_ip,
    observe,
    reconcile,
    underlay_mtu,
    vxlan_name,
)
from cantainer_agent.overlay import reconciler as reconciler_module
from cantainer_agent.resync import Resync

from .conftest import Fabric, fabric_factory

pytestmark = pytest.mark.root

NET_A = NetworkSpec("10.0.0.0/24", 4096)
NET_B = NetworkSpec("10.1.0.0/24", 4097)
NETWORKS = {NET_A.cidr: NET_A, NET_B.cidr: NET_B}
LAYOUT = {  # container: (host, network, ip)
    "c1": ("hA", NET_A, "10.0.0.2"),
    "c2": ("hB", NET_A, "10.0.0.3"),
    "c3": ("hC", NET_B, "10.1.0.2"),
    "c4": ("hA", NET_B, "10.1.0.3"),
}
OWNED_PREFIXES = ("cbr-", "cvx-", "cv")


class Cluster:
    """The raft state of the scenario (networks, endpoints) plus the fabric it runs on."""

    def __init__(self, fabric: Fabric, port: int = 4789) -> None:
        self.fabric = fabric
        self.port = port
        self.hosts = {name: fabric.add_host(name) for name in ("hA", "hB", "hC")}
        self.guards = {name: KernelGuard() for name in self.hosts}  # each host's agent owns one
        self.networks = dict(NETWORKS)
        self.endpoints: dict[str, EndpointSpec] = {}
        self.containers = {}
        for cid, (host, net, ip) in LAYOUT.items():
            self.endpoints[cid] = EndpointSpec(cid, net.cidr, ip, host, self.hosts[host].address)
            self.containers[cid] = fabric.add_container(cid)

    def desired(self, host: str) -> DesiredHost:
        h = self.hosts[host]
        with h.ipr() as ipr:
            mtu = underlay_mtu(h.address, ipr=ipr)
        return DesiredHost.build(h.name, h.address, mtu, self.networks.values(), self.endpoints.values(),
                                 vxlan_port=self.port)

    def reconcile_all(self) -> dict[str, list]:
        done = {}
        for name, host in self.hosts.items():
            with host.ipr() as ipr:
                result = reconcile(ipr, lambda _observed, name=name: self.desired(name), self.guards[name])
            assert result.ok, result.failures
            done[name] = result.actions
        return done

    def attach(self, cid: str) -> str:
        host, net, _ = LAYOUT[cid]
        with self.hosts[host].ipr() as ipr:
            return attach_container(self.containers[cid].pid, self.endpoints[cid], net,
                                    self.desired(host).mtu, guard=self.guards[host], ipr=ipr)

    def start(self) -> "Cluster":
        self.reconcile_all()
        for cid in self.containers:
            self.attach(cid)
        self.reconcile_all()
        return self

    def ip(self, cid: str) -> str:
        return LAYOUT[cid][2]

    def observe(self, host: str):
        with self.hosts[host].ipr() as ipr:
            return observe(ipr)


def entries_for(observed, cid: str) -> list:
    ip = LAYOUT[cid][2]
    mac = mac_for_ip(ip)
    return [e for e in observed.fdb if e.mac == mac] + [e for e in observed.neigh if e.ip == ip or e.mac == mac]


def raw_entries(host) -> dict:
    """FDB and neighbour entries on our VXLAN devices, with the kernel's 'updated' age (1/100 s)."""
    out = {}
    with host.ipr() as ipr:
        vx = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
              if (link.get_attr("IFLA_IFNAME") or "").startswith("cvx-")}
        for msg in ipr.fdb("dump"):
            if msg["ifindex"] in vx and msg["flags"] & 2:
                out[("fdb", vx[msg["ifindex"]], msg.get_attr("NDA_LLADDR"))] = msg.get_attr("NDA_CACHEINFO")[
                    "ndm_updated"
                ]
        for msg in ipr.neigh("dump", family=2):
            if msg["ifindex"] in vx:
                out[("neigh", vx[msg["ifindex"]], msg.get_attr("NDA_DST"))] = msg.get_attr("NDA_CACHEINFO")[
                    "ndm_updated"
                ]
    return out


def link_indices(host) -> dict[str, int]:
    with host.ipr() as ipr:
        return {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()
                if link.get_attr("IFLA_IFNAME").startswith(OWNED_PREFIXES)}


@pytest.fixture(scope="module")
def cluster():
    with fabric_factory() as make:
        yield Cluster(make()).start()


@pytest.fixture
def fresh_cluster(make_fabric):
    return Cluster(make_fabric()).start()


# ------------------------------------------------------------------------- reachability


def test_same_network_across_hosts_pings_both_ways(cluster):
    assert cluster.containers["c1"].ping(cluster.ip("c2"))
    assert cluster.containers["c2"].ping(cluster.ip("c1"))


def test_second_network_reaches_across_hosts(cluster):
    assert cluster.containers["c3"].ping(cluster.ip("c4"))
    assert cluster.containers["c4"].ping(cluster.ip("c3"))


@pytest.mark.parametrize("src,dst", [("c4", "c1"), ("c4", "c2"), ("c3", "c1"), ("c3", "c2"),
                                     ("c1", "c4"), ("c1", "c3"), ("c2", "c3")])
def test_networks_are_isolated(cluster, src, dst):
    assert not cluster.containers[src].ping(cluster.ip(dst), count=1)


def test_isolation_holds_against_a_hostile_container_and_a_forwarding_host(cluster):
    """c4 shares hA with c1 and forges its way: an on-link route to c1's subnet, c1's MAC, then
    hA's bridge MAC as a 'router' — while hA forwards IPv4. Nothing may get through."""
    c4, hA = cluster.containers["c4"], cluster.hosts["hA"]
    bridge_mac = hA.run("cat", f"/sys/class/net/{bridge_name(NET_B.vni)}/address").stdout.strip()
    hA.run("sysctl", "-qw", "net.ipv4.ip_forward=1")  # resets every device's forwarding to 1 …
    try:
        with hA.ipr() as ipr:  # … until the next pass turns it off again on the bridges
            actions = [str(a) for a in reconcile(ipr, cluster.desired("hA"), cluster.guards["hA"]).actions]
        assert sorted(actions) == [f"set {bridge_name(NET_A.vni)} ipv4 forwarding 0",
                                   f"set {bridge_name(NET_B.vni)} ipv4 forwarding 0"]
        c4.run("ip", "route", "add", "10.0.0.0/24", "dev", "eth0", check=True)
        c4.run("ip", "neigh", "replace", "10.0.0.2", "lladdr", mac_for_ip("10.0.0.2"), "dev", "eth0",
               "nud", "permanent", check=True)
        assert not c4.ping("10.0.0.2", count=1)
        c4.run("ip", "neigh", "replace", "10.0.0.2", "lladdr", bridge_mac, "dev", "eth0", "nud", "permanent",
               check=True)
        assert not c4.ping("10.0.0.2", count=1)
        forwarding = hA.run("sysctl", "-n", f"net.ipv4.conf.{bridge_name(NET_B.vni)}.forwarding").stdout.strip()
        assert forwarding == "0"
    finally:
        c4.run("ip", "neigh", "del", "10.0.0.2", "dev", "eth0")
        c4.run("ip", "route", "del", "10.0.0.0/24", "dev", "eth0")
        hA.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert c4.ping(cluster.ip("c3"))


def test_bridges_have_no_addresses_and_containers_no_default_route(cluster):
    for name in cluster.hosts:
        observed = cluster.observe(name)
        for link in observed.links.values():
            if link.name.startswith(OWNED_PREFIXES):
                assert link.addresses == (), link
        assert not observed.routes
    assert "default" not in cluster.containers["c1"].run("ip", "route", check=True).stdout


# ---------------------------------------------------------------------------------- MTU


def test_mtu_is_underlay_minus_50_everywhere(cluster):
    assert cluster.desired("hA").mtu == 1450
    with cluster.containers["c1"].ipr() as ipr:
        assert ipr.link("get", ifname="eth0")[0].get_attr("IFLA_MTU") == 1450
    observed = cluster.observe("hA")
    for name in (bridge_name(NET_A.vni), vxlan_name(NET_A.vni), host_veth_name("c1")):
        assert observed.links[name].mtu == 1450, name


def test_large_pings_with_df_cross_hosts(cluster):
    c1 = cluster.containers["c1"]
    assert c1.ping(cluster.ip("c2"), size=1400)
    assert c1.ping(cluster.ip("c2"), size=1450 - 28)  # the largest that fits: exactly 1500 on the wire
    assert not c1.ping(cluster.ip("c2"), size=1450 - 27, count=1)  # refused locally: larger than the MTU


# --------------------------------------------------------------------------- idempotence


def test_reconciling_again_changes_nothing_and_keeps_entries(cluster):
    before = {name: (raw_entries(h), link_indices(h)) for name, h in cluster.hosts.items()}
    assert all(entries for entries, _ in before.values())
    time.sleep(1.5)
    # a restarted agent: fresh netlink sockets, desired state read again
    assert cluster.reconcile_all() == {"hA": [], "hB": [], "hC": []}
    for name, host in cluster.hosts.items():
        entries, indices = raw_entries(host), link_indices(host)
        assert indices == before[name][1]
        assert entries.keys() == before[name][0].keys()
        for key, age in entries.items():
            assert age >= before[name][0][key] + 100, (name, key)  # not rewritten since


def test_observed_equals_desired_gives_no_actions_and_full_health(cluster):
    for name in cluster.hosts:
        desired, observed = cluster.desired(name), cluster.observe(name)
        assert diff(desired, observed) == []
        report = health(desired, observed)
        assert report["pending"] == 0
        for net in report["networks"].values():
            assert net["bridge"] and net["vxlan"] and not net["ports_missing"]
            assert net["fdb_programmed"] == net["fdb_expected"] == 1
            assert net["neigh_programmed"] == net["neigh_expected"] == 1


def test_hosts_only_hold_networks_with_local_containers(cluster):
    assert {n for n in cluster.observe("hB").links if n.startswith(("cbr-", "cvx-"))} == {
        bridge_name(NET_A.vni), vxlan_name(NET_A.vni)}
    assert {n for n in cluster.observe("hC").links if n.startswith(("cbr-", "cvx-"))} == {
        bridge_name(NET_B.vni), vxlan_name(NET_B.vni)}


def test_attach_again_is_a_no_op(cluster):
    with cluster.containers["c1"].ipr() as ipr:
        inner_before = ipr.link("get", ifname="eth0")[0]["index"]
    indices = link_indices(cluster.hosts["hA"])
    assert cluster.attach("c1") == host_veth_name("c1")
    assert link_indices(cluster.hosts["hA"]) == indices
    with cluster.containers["c1"].ipr() as ipr:
        eth0 = ipr.link("get", ifname="eth0")[0]
        assert eth0["index"] == inner_before
        assert eth0.get_attr("IFLA_ADDRESS") == mac_for_ip("10.0.0.2")
        assert [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=eth0["index"], family=2)] \
            == [("10.0.0.2", 24)]
    assert cluster.containers["c1"].ping(cluster.ip("c2"))


def test_underlay_mtu_reads_the_vtep_link(cluster):
    with cluster.hosts["hA"].ipr() as ipr:
        assert underlay_mtu(cluster.hosts["hA"].address, ipr=ipr) == 1500
        with pytest.raises(OverlayError):
            underlay_mtu("198.18.250.250", ipr=ipr)


def test_attach_refuses_the_agents_own_namespace(cluster):
    import os

    with pytest.raises(OverlayError):
        attach_container(os.getpid(), cluster.endpoints["c1"], NET_A, 1450, guard=cluster.guards["hA"])


# ------------------------------------------------------------------------------ removal


def test_removing_a_container_removes_its_entries_everywhere(fresh_cluster):
    cluster = fresh_cluster
    assert cluster.containers["c1"].ping(cluster.ip("c2"))
    del cluster.endpoints["c2"]
    actions = cluster.reconcile_all()
    for name in cluster.hosts:
        assert entries_for(cluster.observe(name), "c2") == [], name
    # hB had no other container on 10.0.0.0/24: its devices and c2's veth are gone
    hb = cluster.observe("hB").links
    assert not {bridge_name(NET_A.vni), vxlan_name(NET_A.vni), host_veth_name("c2")} & hb.keys()
    assert any(str(a).startswith(f"delete link {host_veth_name('c2')}") for a in actions["hB"])
    assert not cluster.containers["c1"].ping(cluster.ip("c2"), count=1)
    assert cluster.reconcile_all() == {"hA": [], "hB": [], "hC": []}
    assert cluster.containers["c3"].ping(cluster.ip("c4"))


def test_host_gone_and_network_deleted(fresh_cluster):
    cluster = fresh_cluster
    # host hC disappears from the cluster with its container c3
    del cluster.endpoints["c3"]
    cluster.reconcile_all()
    a = cluster.observe("hA")
    assert not [e for e in a.fdb if e.dst == cluster.hosts["hC"].address]
    assert entries_for(a, "c3") == []
    assert not {n for n in cluster.observe("hC").links if n.startswith(OWNED_PREFIXES)}
    assert cluster.containers["c1"].ping(cluster.ip("c2"))
    # then network 10.1.0.0/24 is deleted after its last container c4
    del cluster.endpoints["c4"]
    del cluster.networks[NET_B.cidr]
    cluster.reconcile_all()
    a = cluster.observe("hA")
    assert not {bridge_name(NET_B.vni), vxlan_name(NET_B.vni), host_veth_name("c4")} & a.links.keys()
    assert {bridge_name(NET_A.vni), vxlan_name(NET_A.vni), host_veth_name("c1")} <= a.links.keys()
    assert cluster.containers["c1"].ping(cluster.ip("c2"))


def test_detach_container(fresh_cluster):
    cluster = fresh_cluster
    with cluster.hosts["hA"].ipr() as ipr:
        assert detach_container("c1", guard=cluster.guards["hA"], ipr=ipr)
        assert not detach_container("c1", guard=cluster.guards["hA"], ipr=ipr)
    with cluster.containers["c1"].ipr() as ipr:
        assert not ipr.link_lookup(ifname="eth0")
    cluster.attach("c1")
    assert cluster.containers["c1"].ping(cluster.ip("c2"))


def test_attach_repairs_half_made_and_wrong_state(fresh_cluster):
    cluster = fresh_cluster
    c1, hA = cluster.containers["c1"], cluster.hosts["hA"]
    host = host_veth_name("c1")
    # a crash between creating the pair and configuring it: a stray host end, no eth0 inside
    with hA.ipr() as ipr:
        assert detach_container("c1", guard=cluster.guards["hA"], ipr=ipr)
        ipr.link("add", ifname=host, kind="veth", peer="ovtest-stray")
    cluster.attach("c1")
    assert "ovtest-stray" not in cluster.observe("hA").links
    assert c1.ping(cluster.ip("c2"))
    # someone changed the container's address, MTU and MAC
    c1.run("ip", "addr", "add", "10.0.0.77/24", "dev", "eth0", check=True)
    c1.run("ip", "link", "set", "eth0", "mtu", "1500", "address", "02:00:00:00:00:01", check=True)
    cluster.attach("c1")
    with c1.ipr() as ipr:
        eth0 = ipr.link("get", ifname="eth0")[0]
        assert eth0.get_attr("IFLA_MTU") == 1450 and eth0.get_attr("IFLA_ADDRESS") == mac_for_ip("10.0.0.2")
        assert [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=eth0["index"], family=2)] == ["10.0.0.2"]
    assert c1.ping(cluster.ip("c2"))


def test_attach_creates_the_bridge_before_the_first_reconcile(make_fabric):
    cluster = Cluster(make_fabric())
    cluster.attach("c1")  # hA has never been reconciled
    observed = cluster.observe("hA")
    assert observed.links[host_veth_name("c1")].master == bridge_name(NET_A.vni)
    bridge = observed.links[bridge_name(NET_A.vni)]
    assert (bridge.ipv4_forwarding, bridge.ipv4_rp_filter, bridge.ipv4_drop_unicast_in_l2_multicast) == (0, 1, 1)
    cluster.reconcile_all()
    cluster.attach("c2")
    assert cluster.reconcile_all()["hA"] == []
    assert cluster.containers["c1"].ping(cluster.ip("c2"))


# ------------------------------------------------------------------------------- repair


def test_stale_wrong_and_foreign_state_is_repaired(fresh_cluster):
    cluster = fresh_cluster
    hA = cluster.hosts["hA"]
    br, vx = bridge_name(NET_A.vni), vxlan_name(NET_A.vni)
    c2_mac = mac_for_ip("10.0.0.3")
    # what earlier bugs, a crashed agent or an operator may leave behind
    hA.run("bridge", "fdb", "replace", c2_mac, "dev", vx, "dst", "198.18.250.99", "self", "permanent")
    hA.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", cluster.hosts["hB"].address, "self",
           "permanent")
    hA.run("bridge", "fdb", "add", "02:42:0a:00:00:63", "dev", vx, "dst", "198.18.250.99", "self", "permanent")
    hA.run("ip", "neigh", "replace", "10.0.0.99", "lladdr", "02:42:0a:00:00:63", "dev", vx, "nud", "permanent")
    hA.run("ip", "neigh", "replace", "10.0.0.3", "lladdr", "02:42:0a:00:00:99", "dev", vx, "nud", "permanent")
    hA.run("ip", "addr", "add", "10.0.0.1/24", "dev", br)
    hA.run("ip", "route", "add", "10.9.0.0/24", "dev", br, "table", "100")
    hA.run("ip", "link", "set", vx, "mtu", "1500")
    hA.run("ip", "link", "set", vx, "nomaster")
    hA.run("sysctl", "-qw", f"net.ipv4.conf.{br}.forwarding=1")
    hA.run("sysctl", "-qw", f"net.ipv4.conf.{br}.rp_filter=0")
    hA.run("sysctl", "-qw", f"net.ipv4.conf.{br}.drop_unicast_in_l2_multicast=0")
    hA.run("ip", "link", "add", "cv0123456789ab", "type", "veth", "peer", "name", "orphan-peer")

    with hA.ipr() as ipr:
        result = reconcile(ipr, cluster.desired("hA"), cluster.guards["hA"])
    assert result.ok, result.failures
    text = [str(a) for a in result.actions]
    assert "delete link cv0123456789ab (no such container on this host)" in text
    assert f"delete fdb 00:00:00:00:00:00 dst {cluster.hosts['hB'].address} dev {vx}" in text
    assert f"fdb {c2_mac} dst {cluster.hosts['hB'].address} dev {vx} permanent" in text  # rewritten in place
    assert not any(t.startswith(f"delete fdb {c2_mac}") for t in text)
    assert f"set {br} ipv4 forwarding 0, ipv4 rp_filter 1, ipv4 drop_unicast_in_l2_multicast 1" in text

    observed = cluster.observe("hA")
    assert diff(cluster.desired("hA"), observed) == []
    assert "cv0123456789ab" not in observed.links and not observed.routes
    assert observed.links[br].addresses == () and observed.links[br].ipv4_forwarding == 0
    for name in ("rp_filter", "drop_unicast_in_l2_multicast"):  # what the kernel itself reports, too
        assert hA.run("sysctl", "-n", f"net.ipv4.conf.{br}.{name}").stdout.strip() == "1"
    assert observed.links[vx].mtu == 1450 and observed.links[vx].master == br
    assert {(e.mac, e.dst) for e in observed.fdb if e.dev == vx} == {(c2_mac, cluster.hosts["hB"].address)}
    assert {(e.ip, e.mac) for e in observed.neigh if e.dev == vx} == {("10.0.0.3", c2_mac)}
    assert cluster.containers["c1"].ping(cluster.ip("c2"))


def test_changed_vxlan_port_recreates_devices_and_traffic_follows(fresh_cluster):
    cluster = fresh_cluster
    cluster.port = 8472
    actions = cluster.reconcile_all()
    assert any(str(a).startswith(f"delete link {vxlan_name(NET_A.vni)} (VXLAN settings differ)") for a in actions["hA"])
    observed = cluster.observe("hA")
    assert observed.links[vxlan_name(NET_A.vni)].vxlan.port == 8472
    assert cluster.containers["c1"].ping(cluster.ip("c2"))
    assert cluster.containers["c4"].ping(cluster.ip("c3"))
    assert cluster.reconcile_all() == {"hA": [], "hB": [], "hC": []}


def test_reconciler_adapter_reports_and_converges(make_fabric):
    cluster = Cluster(make_fabric())
    host = cluster.hosts["hB"]
    rec = OverlayReconciler(lambda _observed: cluster.desired("hB"), cluster.guards["hB"], netns=host.ns)
    assert rec.health()["pending"] > 0
    assert rec.reconcile().actions
    cluster.attach("c2")
    assert rec.reconcile().actions == []
    assert rec.health()["pending"] == 0


def test_reconciler_diffs_against_its_folded_view_and_resyncs(fresh_cluster, monkeypatch):
    """OverlayReconciler observes the kernel once, then diffs later passes against the view the
    last one left (plan.fold) — which must be exactly what the kernel then holds — until the
    resync time is up; a container attached or detached changes links only, and only the links
    are read again (the view stays exact)."""
    cluster = fresh_cluster
    observes = []
    # Counts the reconciler's reads; Cluster.observe uses this module's own import, uncounted.
    monkeypatch.setattr(reconciler_module, "observe", lambda ipr: (observes.append(1), observe(ipr))[1])
    rec = OverlayReconciler(lambda _observed: cluster.desired("hA"), cluster.guards["hA"], netns=cluster.hosts["hA"].ns,
                            resync=Resync(clock=lambda: 0.0))  # time stands still: no resync but when told
    assert rec.reconcile().actions == [] and len(observes) == 1

    c2 = cluster.endpoints.pop("c2")  # gone from hB: hA drops its entries without looking again
    result = rec.reconcile()
    assert result.actions and len(observes) == 1
    assert result.observed == cluster.observe("hA") and entries_for(result.observed, "c2") == []
    cluster.endpoints["c2"] = c2  # and back
    result = rec.reconcile()
    assert result.actions and len(observes) == 1 and result.observed == cluster.observe("hA")
    assert cluster.containers["c1"].ping(cluster.ip("c2"))
    assert rec.reconcile().actions == [] and len(observes) == 1  # nothing changed: not even a diff

    with cluster.hosts["hA"].ipr() as ipr:  # a container detached here changes links: read them again
        detach_container("c4", guard=cluster.guards["hA"], ipr=ipr)
    result = rec.reconcile()
    assert result.actions == [] and len(observes) == 1 and rec.passes["links_observe"] == 1
    assert rec.passes["links_named"] == 1  # only its veth and bridge
    assert result.observed == cluster.observe("hA")
    cluster.attach("c4")
    result = rec.reconcile()
    assert result.actions == [] and len(observes) == 1 and rec.passes["links_observe"] == 2
    assert rec.passes["links_named"] == 2
    assert result.observed == cluster.observe("hA")

    # A bridge the attach had to create (here: its bridge was deleted behind our back) brings an
    # address and a route: every link is read again and diffed (the VXLAN device lost its master
    # with the old bridge), though the desired state is the same.
    with cluster.hosts["hA"].ipr() as ipr:
        detach_container("c4", guard=cluster.guards["hA"], ipr=ipr)
        ipr.link("del", index=ipr.link_lookup(ifname=bridge_name(NET_B.vni))[0])
    cluster.attach("c4")
    result = rec.reconcile()
    assert rec.passes["links_observe"] == 3 and rec.passes["links_named"] == 2
    assert [str(a) for a in result.actions] == [f"set {vxlan_name(NET_B.vni)} master {bridge_name(NET_B.vni)}"]
    assert cluster.containers["c4"].ping(cluster.ip("c3"))
    assert rec.reconcile().observed == cluster.observe("hA")
    observes.clear()

    vx = vxlan_name(NET_A.vni)  # removed behind our back: put back at the next full observe
    with cluster.hosts["hA"].ipr() as ipr:
        ipr.fdb("del", ifindex=ipr.link_lookup(ifname=vx)[0], lladdr=mac_for_ip(cluster.ip("c2")),
                dst=cluster.hosts["hB"].address)
    assert rec.reconcile().actions == [] and len(observes) == 0
    rec._resync.forget()  # the resync is due
    assert [str(a) for a in rec.reconcile().actions] == [
        f"fdb {mac_for_ip(cluster.ip('c2'))} dst {cluster.hosts['hB'].address} dev {vx} permanent"]
    assert len(observes) == 1 and cluster.containers["c1"].ping(cluster.ip("c2"))


def test_an_entries_pass_changes_only_the_named_entries_and_its_view_stays_exact(fresh_cluster, monkeypatch):
    """reconcile_entries (a remote container came or went): only the named keys are diffed, against
    the cached view, without reading the kernel; the view it leaves is what the kernel holds."""
    from cantainer_agent.overlay import plan as P

    cluster = fresh_cluster
    observes = []
    monkeypatch.setattr(reconciler_module, "observe", lambda ipr: (observes.append(1), observe(ipr))[1])
    rec = OverlayReconciler(lambda _observed: cluster.desired("hA"), cluster.guards["hA"], netns=cluster.hosts["hA"].ns,
                            resync=Resync(clock=lambda: 0.0))  # time stands still: no resync but when told
    assert rec.reconcile().actions == [] and len(observes) == 1

    def wanted():
        d = cluster.desired("hA")
        return {(e.dev, e.mac): e for e in P.wanted_fdb(d)}, {(e.dev, e.ip): e for e in P.wanted_neigh(d)}

    vx, ip, mac = vxlan_name(NET_A.vni), cluster.ip("c2"), mac_for_ip(cluster.ip("c2"))
    keys = {("fdb", vx, mac), ("neigh", vx, ip)}
    c2 = cluster.endpoints.pop("c2")  # c2 gone from hB
    result = rec.reconcile_entries(*wanted(), keys, lambda: cluster.desired("hA"))
    assert sorted(type(a).__name__ for a in result.actions) == ["DeleteFdb", "DeleteNeigh"]
    assert len(observes) == 1 and result.observed == cluster.observe("hA")
    assert not cluster.containers["c1"].ping(cluster.ip("c2"), count=1)
    cluster.endpoints["c2"] = c2  # and back
    result = rec.reconcile_entries(*wanted(), keys, lambda: cluster.desired("hA"))
    assert [str(a) for a in result.actions] == [f"fdb {mac} dst {cluster.hosts['hB'].address} dev {vx} permanent",
                                                f"neigh {ip} lladdr {mac} dev {vx} permanent"]
    assert len(observes) == 1 and result.observed == cluster.observe("hA")
    assert result.health["pending"] == 0  # the desired state, built on demand, agrees
    assert cluster.containers["c1"].ping(cluster.ip("c2"))
    # a full pass after it trusts the same view and finds nothing to do
    assert rec.reconcile().actions == [] and len(observes) == 1
    rec._resync.forget()  # no trusted view: an entries pass declines, the caller runs a full one
    assert rec.reconcile_entries(*wanted(), keys, lambda: cluster.desired("hA")) is None


def test_a_reconciler_may_keep_its_netlink_socket_between_passes(fresh_cluster, monkeypatch):
    """The agent's reconciler opens one IPRoute and keeps it (opening one per pass cost more than a
    pass changing two entries); after an error on it, the next pass opens a fresh one."""
    cluster = fresh_cluster
    opened = []
    real = reconciler_module.IPRoute
    monkeypatch.setattr(reconciler_module, "IPRoute", lambda **kw: (opened.append(1), real(**kw))[1])
    rec = OverlayReconciler(lambda _observed: cluster.desired("hA"), cluster.guards["hA"],
                            netns=cluster.hosts["hA"].ns, keep_socket=True)
    try:
        for _ in range(3):
            assert rec.reconcile().actions == []
        assert len(opened) == 1
        rec._ipr.close()  # broken under our feet
        rec._resync.forget()  # a pass that must read the kernel
        with pytest.raises(OSError):
            rec.reconcile()
        assert rec.reconcile().actions == [] and len(opened) == 2
    finally:
        rec.close()


def test_fabric_cleanup_leaves_nothing(make_fabric):
    from pyroute2 import netns

    fabric = make_fabric()
    Cluster(fabric).start()
    pids = [c.pid for c in fabric.containers]
    fabric.close()
    assert not [n for n in netns.listnetns() if n.startswith(fabric.run_id)]
    for pid in pids:
        assert subprocess.run(["ps", "-p", str(pid)], capture_output=True).returncode != 0


# ------------------------------------------------------------------------------- gateways


def test_a_gateway_is_programmed_on_every_host_and_read_back_exactly(make_fabric):
    """Same address and MAC on each host's bridge, the subnet route kept, forwarding on, hairpin on
    the container ports, the containers' default route via it; a second pass finds nothing to do."""
    cluster = Cluster(make_fabric())
    routed = NetworkSpec(NET_A.cidr, NET_A.vni, "10.0.0.1")
    cluster.networks[NET_A.cidr] = routed
    for cid in ("c1", "c2"):
        host = LAYOUT[cid][0]
        with cluster.hosts[host].ipr() as ipr:
            attach_container(cluster.containers[cid].pid, cluster.endpoints[cid], routed,
                             cluster.desired(host).mtu, guard=cluster.guards[host], ipr=ipr)
    cluster.reconcile_all()
    assert all(actions == [] for actions in cluster.reconcile_all().values())
    for host, cid in (("hA", "c1"), ("hB", "c2")):
        observed = cluster.observe(host)
        bridge = observed.links[bridge_name(NET_A.vni)]
        assert (bridge.addresses, bridge.mac, bridge.ipv4_forwarding, bridge.ipv4_route_localnet) == (
            ("10.0.0.1/24",), "02:42:0a:00:00:01", 1, 1)
        assert observed.ip_forward == 1 and observed.links[host_veth_name(cid)].hairpin == 1
        assert [(r.dst, r.dst_len) for r in observed.routes] == [("10.0.0.0", 24)]
        routes = cluster.containers[cid].run("ip", "route").stdout
        assert "default via 10.0.0.1 dev eth0" in routes
        assert cluster.containers[cid].ping("10.0.0.1")  # answered by its own host
    assert cluster.containers["c1"].ping(cluster.ip("c2"))


def test_apply_remembers_device_indices_and_forgets_a_failed_one(fresh_cluster):
    """kernel.apply looks a device's index up once for a caller's cache; an index gone stale (the
    device replaced behind our back) fails that action and leaves the cache, so the next apply
    looks it up again and succeeds."""
    from cantainer_agent.overlay import plan
    from cantainer_agent.overlay.kernel import apply

    cluster = fresh_cluster
    vx = vxlan_name(NET_A.vni)
    ip, mac, dst = "10.0.0.77", mac_for_ip("10.0.0.77"), cluster.hosts["hB"].address
    indices: dict[str, int] = {}
    with cluster.hosts["hA"].ipr() as ipr:
        index = ipr.link_lookup(ifname=vx)[0]
        assert apply(ipr, [plan.ReplaceFdb(vx, mac, dst), plan.ReplaceNeigh(vx, ip, mac)], indices) == []
        assert indices == {vx: index}
        indices[vx] = index + 10_000  # as if the device had been deleted and made again meanwhile
        failures = apply(ipr, [plan.ReplaceNeigh(vx, ip, mac)], indices)
        assert len(failures) == 1 and vx not in indices
        assert apply(ipr, [plan.DeleteNeigh(plan.NeighEntry(vx, ip, mac, True))], indices) == []
        assert indices == {vx: index}
    observed = cluster.observe("hA")
    assert [e for e in observed.neigh if e.ip == ip] == []
    assert [e for e in observed.fdb if e.mac == mac] == [plan.FdbEntry(vx, mac, dst, True)]


def test_guard_names_the_links_changed_since_a_count():
    guard = KernelGuard()
    assert guard.links_changed_since(0) == frozenset() and guard.links_changed_since(-1) is None
    with guard:
        guard.changed(("cv1", "cbr-4096"))
        guard.changed(("cv2",))
    assert guard.links_changed_since(0) == {"cv1", "cv2", "cbr-4096"}
    assert guard.links_changed_since(1) == {"cv2"} and guard.links_changed_since(2) == frozenset()
    with guard:
        guard.changed()  # a change that does not say which links: read them all
        guard.changed(("cv3",))
    assert guard.links_changed_since(1) is None and guard.links_changed_since(3) == {"cv3"}
    with guard:
        for _ in range(100):
            guard.changed(("cv4",))
    assert guard.links_changed_since(3) is None  # forgotten: read them all
    assert guard.links_changed_since(guard.changes - 1) == {"cv4"}


def test_entries_written_in_batches_are_what_pyroute2_writes(fresh_cluster, monkeypatch):
    """kernel.apply writes FDB and neighbour entries in batches on a netlink socket of its own:
    the kernel then holds exactly what pyroute2's fdb()/neigh() calls make (compared entry by entry
    on the same device), across more than one batch; deleting an entry already gone is done."""
    from cantainer_agent.overlay import kernel, plan

    monkeypatch.setattr(kernel, "ENTRY_BATCH", 7)  # 20 entries: three batches
    cluster = fresh_cluster
    vx, dst = vxlan_name(NET_A.vni), cluster.hosts["hB"].address
    ours = [f"10.0.0.{i}" for i in range(100, 110)]
    theirs = [f"10.0.0.{i}" for i in range(120, 130)]
    actions = [a for ip in ours
               for a in (plan.ReplaceFdb(vx, mac_for_ip(ip), dst), plan.ReplaceNeigh(vx, ip, mac_for_ip(ip)))]
    with cluster.hosts["hA"].ipr() as ipr:
        assert kernel.apply(ipr, actions) == []
        index = ipr.link_lookup(ifname=vx)[0]
        for ip in theirs:  # the way every entry was written before the batches
            ipr.fdb("replace", ifindex=index, lladdr=mac_for_ip(ip), dst=dst, state=0x80 | 0x40, flags=0x02)
            ipr.neigh("replace", ifindex=index, dst=ip, lladdr=mac_for_ip(ip), state=0x80, family=2)
    observed = cluster.observe("hA")

    def shape(ip):  # an entry without its address: the same for ours and theirs
        fdb = [replace(e, mac="") for e in observed.fdb if e.mac == mac_for_ip(ip)]
        neigh = [replace(e, ip="", mac="") for e in observed.neigh if e.ip == ip]
        return fdb, neigh

    assert all(shape(ip) == shape(theirs[0]) for ip in ours + theirs)
    assert shape(ours[0]) == ([plan.FdbEntry(vx, "", dst, True)], [plan.NeighEntry(vx, "", "", True)])

    gone = [a for ip in ours + ["10.0.0.250"] for a in (plan.DeleteFdb(plan.FdbEntry(vx, mac_for_ip(ip), dst)),
                                                       plan.DeleteNeigh(plan.NeighEntry(vx, ip, mac_for_ip(ip))))]
    with cluster.hosts["hA"].ipr() as ipr:
        assert kernel.apply(ipr, gone) == []  # 10.0.0.250 was never there: done all the same
    observed = cluster.observe("hA")
    assert all(shape(ip) == ([], []) for ip in ours) and shape(theirs[-1]) == shape(theirs[0])
    assert cluster.containers["c1"].ping(cluster.ip("c2"))  # the scenario's own entries are untouched


def test_observe_decodes_entries_as_pyroute2_does(fresh_cluster):
    """observe reads the FDB and neighbour dumps on a socket of its own and decodes them itself:
    the entries are those pyroute2's decoding of the same dumps gives — an entry with its own
    remote port and VNI included."""
    from cantainer_agent.overlay import kernel, plan

    cluster = fresh_cluster
    vx = vxlan_name(NET_A.vni)
    with cluster.hosts["hA"].ipr() as ipr:
        index = ipr.link_lookup(ifname=vx)[0]
        ipr.fdb("append", ifindex=index, lladdr="02:42:0a:00:00:63", dst="198.18.250.9", port=8472, vni=77,
                state=0x80, flags=0x02)
        ipr.neigh("replace", ifindex=index, dst="10.0.0.99", lladdr="02:42:0a:00:00:63", state=0x80, family=2)
        observed = kernel.observe(ipr)
        vxlans = {link.index: name for name, link in observed.links.items() if link.kind == "vxlan"}
        fdb = {plan.FdbEntry(vxlans[m["ifindex"]], (m.get_attr("NDA_LLADDR") or "").lower(), m.get_attr("NDA_DST"),
                        bool(m["state"] & 0x80), m.get_attr("NDA_PORT"), m.get_attr("NDA_VNI"))
               for m in ipr.fdb("dump") if m["ifindex"] in vxlans and m["flags"] & 0x02}
        neigh = {plan.NeighEntry(vxlans[m["ifindex"]], m.get_attr("NDA_DST"),
                            m.get_attr("NDA_LLADDR").lower() if m.get_attr("NDA_LLADDR") else None,
                            bool(m["state"] & 0x80))
                 for m in ipr.neigh("dump", family=2) if m["ifindex"] in vxlans}
    assert observed.fdb == fdb and observed.neigh == neigh
    assert plan.FdbEntry(vx, "02:42:0a:00:00:63", "198.18.250.9", True, 8472, 77) in observed.fdb
    assert len(observed.fdb) >= 3 and len(observed.neigh) >= 3  # the scenario's own entries too
