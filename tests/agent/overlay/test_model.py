"""Pure model: MACs, names, MTU, specs, and how a host's desired state is cut from the cluster's."""
from __future__ import annotations

import pytest

from cantainer_agent.overlay import DesiredHost, EndpointSpec, NetworkSpec, model
from cantainer_agent.overlay.model import (
    bridge_name,
    host_veth_name,
    mac_for_ip,
    overlay_mtu,
    owned_kind,
    vxlan_name,
)

A, B, C = "198.18.250.1", "198.18.250.2", "198.18.250.3"
NET1 = NetworkSpec("10.0.0.0/24", 4096)
NET2 = NetworkSpec("10.1.0.0/24", 4097)
NET3 = NetworkSpec("10.2.0.0/24", 4098)


def ep(cid, cidr, ip, node, vtep):
    return EndpointSpec(cid, cidr, ip, node, vtep)


@pytest.mark.parametrize("ip,mac", [
    ("10.0.0.2", "02:42:0a:00:00:02"),
    ("192.168.1.254", "02:42:c0:a8:01:fe"),
    ("0.0.0.0", "02:42:00:00:00:00"),
    ("255.255.255.255", "02:42:ff:ff:ff:ff"),
])
def test_mac_for_ip_is_docker_style(ip, mac):
    assert mac_for_ip(ip) == mac


def test_mac_is_locally_administered_unicast():
    first = int(mac_for_ip("10.0.0.2").split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


@pytest.mark.parametrize("bad", ["10.0.0", "fe80::1", "", "10.0.0.256", None])
def test_mac_for_ip_rejects_non_ipv4(bad):
    with pytest.raises((ValueError, TypeError)):
        mac_for_ip(bad)


def test_distinct_ips_give_distinct_macs():
    macs = {mac_for_ip(f"10.0.{i // 256}.{i % 256}") for i in range(1024)}
    assert len(macs) == 1024


def test_device_names_fit_ifnamsiz_and_round_trip():
    assert bridge_name(4096) == "cbr-4096" and vxlan_name(4096) == "cvx-4096"
    assert len(bridge_name(model.MAX_VNI)) <= 15 and len(vxlan_name(model.MAX_VNI)) <= 15
    assert owned_kind(bridge_name(model.MAX_VNI)) == ("bridge", model.MAX_VNI)
    assert owned_kind(vxlan_name(1)) == ("vxlan", 1)
    for bad in (0, model.MAX_VNI + 1, "4096", 4096.0, True):
        with pytest.raises(ValueError):
            bridge_name(bad)


def test_host_veth_name_is_stable_short_and_owned():
    name = host_veth_name("0123456789abcdef-very-long-container-id")
    assert name == host_veth_name("0123456789abcdef-very-long-container-id")
    assert len(name) == 14 and name.startswith("cv")
    assert owned_kind(name) == ("veth", None)
    assert host_veth_name("c1") != host_veth_name("c2")
    with pytest.raises(ValueError):
        host_veth_name("")


@pytest.mark.parametrize("name", ["eth0", "lo", "docker0", "cbr-", "cbr-x1", "cvx-12a", "cv0123", "cv0123456789AB",
                                  "cv0123456789abc", "veth1234", "cni0"])
def test_foreign_names_are_not_owned(name):
    assert owned_kind(name) is None


def test_overlay_mtu():
    assert overlay_mtu(1500) == 1450
    assert overlay_mtu(9000) == 8950
    assert overlay_mtu(1450) == 1400
    with pytest.raises(ValueError):
        overlay_mtu(100)


def test_specs_normalise_and_validate():
    assert NetworkSpec("10.0.0.7/24", 4096).cidr == "10.0.0.0/24"
    assert NetworkSpec("10.0.0.0/24", 4096).bridge == "cbr-4096"
    with pytest.raises(ValueError):
        NetworkSpec("fd00::/64", 4096)
    with pytest.raises(ValueError):
        NetworkSpec("10.0.0.0/24", 0)
    e = ep("c1", "10.0.0.0/24", "10.0.0.2", "a", A)
    assert e.mac == "02:42:0a:00:00:02" and e.host_veth == host_veth_name("c1")
    with pytest.raises(ValueError):
        ep("c1", "10.0.0.0/24", "10.0.0.x", "a", A)
    with pytest.raises(ValueError):
        ep("", "10.0.0.0/24", "10.0.0.2", "a", A)
    with pytest.raises(ValueError):
        ep("c1", "10.0.0.0/24", "10.0.0.2", "a", "not-an-ip")


def test_desired_host_validates():
    with pytest.raises(ValueError):
        DesiredHost("a", A, 100)
    with pytest.raises(ValueError):
        DesiredHost("a", A, 1500, vxlan_port=0)
    assert DesiredHost("a", A, 1500).mtu == 1450


def test_build_keeps_only_networks_with_local_containers_and_their_remotes():
    endpoints = [
        ep("c1", NET1.cidr, "10.0.0.2", "a", A),
        ep("c2", NET1.cidr, "10.0.0.3", "b", B),
        ep("c3", NET2.cidr, "10.1.0.2", "c", C),  # a network host a has no container on
        ep("c4", NET3.cidr, "10.2.0.2", "a", A),  # a network only host a uses
    ]
    d = DesiredHost.build("a", A, 1500, [NET1, NET2, NET3], endpoints)
    assert d.networks == (NET1, NET3)
    assert [e.container_id for e in d.local] == ["c1", "c4"]
    assert [e.container_id for e in d.remote] == ["c2"]
    assert d.skipped == ()
    # the same input in another order gives the same value
    assert DesiredHost.build("a", A, 1500, [NET3, NET2, NET1], reversed(endpoints)) == d


def test_build_without_local_containers_wants_nothing():
    d = DesiredHost.build("z", "198.18.250.9", 1500, [NET1], [ep("c2", NET1.cidr, "10.0.0.3", "b", B)])
    assert d.networks == () and d.local == () and d.remote == ()


def test_build_skips_inconsistent_records_and_says_why():
    endpoints = [
        ep("c1", NET1.cidr, "10.0.0.2", "a", A),
        ep("c2", NET1.cidr, "10.0.0.2", "b", B),  # same IP twice
        ep("c3", "10.9.0.0/24", "10.9.0.2", "b", B),  # unknown network
        ep("c5", NET1.cidr, "10.1.0.9", "b", B),  # outside its network
        ep("c6", NET1.cidr, "10.0.0.6", "b", A),  # claims host a's VTEP
        ep("c7", NET1.cidr, "10.0.0.7", "b", B),
    ]
    nets = [NET1, NetworkSpec("10.5.0.0/24", 4096), NetworkSpec("10.0.0.0/24", 4099)]
    d = DesiredHost.build("a", A, 1500, nets, endpoints)
    assert d.networks == (NET1,)
    assert [e.container_id for e in d.remote] == ["c7"]
    joined = "\n".join(d.skipped)
    for needle in ("VNI 4096 already belongs", "listed with VNIs 4096 and 4099", "c2: IP 10.0.0.2 already used",
                   "c3: unknown network", "c5: IP 10.1.0.9 is outside", "c6: claims this host's VTEP"):
        assert needle in joined, needle
