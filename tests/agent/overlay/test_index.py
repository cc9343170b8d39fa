"""DesiredIndex: the desired overlay kept up to date per changed record must always equal what
DesiredHost.build makes of the whole state, and must name only the entries a remote change touched.
Driven by the real state machine and its change feed, through random histories. Pure, no kernel."""
from __future__ import annotations

import random

import pytest

from cantainer_agent.cluster.state import ClusterState
from cantainer_agent.controllers.overlay import desired_host
from cantainer_agent.overlay import plan as P
from cantainer_agent.overlay.index import DesiredIndex
from cantainer_agent.overlay.model import vxlan_name

NODES = {f"h{i}": f"198.18.250.{i}" for i in range(1, 5)}
NETS = ("10.150.0.0/24", "10.150.1.0/24", "10.150.2.0/24")
ME = "h1"


def state_with_nodes() -> ClusterState:
    s = ClusterState()
    for name, address in NODES.items():
        s.apply_command("register_node", {"name": name, "address": address, "raft_addr": f"{address}:7480",
                                          "join_addr": f"{address}:7481", "version": "v", "bundle": "b", "ts": 1.0})
    return s


def create(s: ClusterState, name: str, host: str, net: str) -> None:
    spec = {"name": name, "id": f"id-{name}", "host": host, "network": net, "image": "alpine", "command": ["true"]}
    s.apply_command("create_container", {"spec": spec, "ts": 1.0})


def observe(s: ClusterState, name: str, state: str) -> None:
    host = s.containers[name]["host"]
    s.apply_command("container_observed", {"name": name, "host": host, "observed": {"state": state}, "ts": 1.0})


def full(s: ClusterState):
    d = desired_host(s.to_dict(), ME, NODES[ME], 1500, 4789)
    return d, {(e.dev, e.mac): e for e in P.wanted_fdb(d)}, {(e.dev, e.ip): e for e in P.wanted_neigh(d)}


def check(index: DesiredIndex, s: ClusterState) -> None:
    want, fdb, neigh = full(s)
    assert index.desired() == want
    assert index.fdb == fdb and index.neigh == neigh


def step(rng: random.Random, s: ClusterState, serial: list[int]) -> str:
    names = sorted(s.containers)
    roll = rng.random()
    if roll < 0.45 or not names:
        serial[0] += 1
        create(s, f"c{serial[0]}", rng.choice(sorted(s.nodes)), rng.choice(NETS))
        return "create"
    name = rng.choice(names)
    if roll < 0.65:
        s.apply_command("remove_container", {"name": name})
        return "remove"
    if roll < 0.85:
        observe(s, name, rng.choice(["running", "exited", "dead", "running"]))
        return "observe"
    if roll < 0.95:
        node = rng.choice(list(NODES))
        s.apply_command("heartbeat", {"name": node, "ts": 2.0})
        return "heartbeat"
    node = rng.choice([n for n in NODES if n != ME])
    if node in s.nodes:
        s.apply_command("remove_node", {"name": node})
    else:
        address = NODES[node]
        s.apply_command("register_node", {"name": node, "address": address, "raft_addr": f"{address}:7480",
                                          "join_addr": f"{address}:7481", "version": "v", "bundle": "b", "ts": 3.0})
    return "node"


@pytest.mark.parametrize("seed", range(6))
def test_the_index_equals_a_full_build_after_every_change(seed):
    rng = random.Random(seed)
    s = state_with_nodes()
    create(s, "local0", ME, NETS[0])
    index = DesiredIndex(ME, NODES[ME], 1500, 4789)
    index.rebuild(s.to_dict())
    seq = s.feed_seq
    serial = [0]
    for _ in range(150):
        for _ in range(rng.randint(1, 4)):  # several commands fold into one pass
            step(rng, s, serial)
        changes = s.changes_since(seq)
        seq = s.feed_seq
        index.update(s.to_dict(), changes)
        check(index, s)


def test_a_remote_change_names_exactly_its_entries_and_a_local_one_asks_for_a_full_diff():
    s = state_with_nodes()
    create(s, "mine", ME, NETS[0])
    create(s, "theirs", "h2", NETS[0])
    index = DesiredIndex(ME, NODES[ME], 1500, 4789)
    index.rebuild(s.to_dict())
    vx = vxlan_name(s.networks[NETS[0]]["vni"])

    seq = s.feed_seq
    create(s, "other", "h3", NETS[0])  # a remote container on a network this host has: its two entries
    ip = s.containers["other"]["ip"]
    touched = index.update(s.to_dict(), s.changes_since(seq))
    assert touched == {("fdb", vx, s.containers["other"]["mac"]), ("neigh", vx, ip)}
    check(index, s)

    seq = s.feed_seq
    create(s, "far", "h3", NETS[2])  # a network with nothing local here: nothing to program
    assert index.update(s.to_dict(), s.changes_since(seq)) == set()
    seq = s.feed_seq
    s.apply_command("heartbeat", {"name": "h3", "ts": 9.0})  # heartbeats change nothing here
    assert index.update(s.to_dict(), s.changes_since(seq)) == set()

    seq = s.feed_seq
    create(s, "mine2", ME, NETS[1])  # a local container (a new network here): full diff
    assert index.update(s.to_dict(), s.changes_since(seq)) is None
    check(index, s)

    seq = s.feed_seq
    observe(s, "other", "exited")  # gone: its entries go
    touched = index.update(s.to_dict(), s.changes_since(seq))
    assert touched == {("fdb", vx, s.containers["other"]["mac"]), ("neigh", vx, ip)}
    assert (vx, ip) not in index.neigh
    check(index, s)


def test_an_address_moving_between_containers_in_one_pass_stays_consistent():
    s = state_with_nodes()
    create(s, "mine", ME, NETS[0])
    create(s, "a", "h2", NETS[0])
    index = DesiredIndex(ME, NODES[ME], 1500, 4789)
    index.rebuild(s.to_dict())
    seq = s.feed_seq
    ip = s.containers["a"]["ip"]
    s.apply_command("remove_container", {"name": "a"})
    create(s, "b", "h3", NETS[0])  # IPAM hands out the freed address again
    assert s.containers["b"]["ip"] == ip
    touched = index.update(s.to_dict(), s.changes_since(seq))
    assert touched is not None  # still only remote entries
    check(index, s)
    vx = vxlan_name(s.networks[NETS[0]]["vni"])
    assert index.fdb[(vx, s.containers["b"]["mac"])].dst == NODES["h3"]


def test_the_overlay_has_nothing_to_do_without_networks_or_devices_of_ours():
    """Until then the controller does not load netlink at all (controllers/overlay.no_overlay)."""
    from cantainer_agent.controllers.overlay import no_overlay
    from cantainer_agent.overlay.model import bridge_name, host_veth_name

    empty = ClusterState().to_dict()
    assert no_overlay(empty, ["lo", "eth0", "cvx-x", "docker0"])
    for ours in (bridge_name(7), vxlan_name(7), host_veth_name("c1")):  # left behind: a pass must remove it
        assert not no_overlay(empty, ["lo", ours]), ours
    s = state_with_nodes()
    create(s, "elsewhere", next(n for n in NODES if n != ME), "10.1.0.0/24")  # not even on this host
    assert s.to_dict()["networks"] and not no_overlay(s.to_dict(), ["lo"])  # load it before one starts here
