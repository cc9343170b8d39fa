"""Named networks, gateways and published ports in the replicated state machine (pure), and the upgrade
of state written before them: old log entries apply as they did, old snapshots load."""
from __future__ import annotations

import pickle

import pytest

from cantainer_agent.cluster.state import ClusterState, default_network_name
from cantainer_agent.cluster.views import container_view, network_views
from cantainer_agent.errors import AlreadyExists, Conflict, NotFound, StateError

from .test_state import spec, state_with_nodes


def publish(host_port=8080, container_port=80, protocol="tcp", host_ip="0.0.0.0") -> dict:
    return {"host_ip": host_ip, "host_port": host_port, "container_port": container_port, "protocol": protocol}


def run(state: ClusterState, name: str, network: str = "10.0.0.0/24", host: str = "h1", **extra) -> dict:
    """A container as the API asks for it since gateways exist."""
    return state.apply_command("create_container", {"spec": spec(name, host, network, **extra), "ts": 2.0,
                                                    "gateway": True})


def test_a_network_has_a_name_and_its_first_address_is_the_gateway():
    state = state_with_nodes("h1")
    made = state.apply_create_network("10.0.0.0/24", 1.0, name="backend", gateway=True)
    assert (made["name"], made["gateway"], made["internal"], made["created"]) == ("backend", "10.0.0.1", False, True)
    assert [run(state, f"c{i}", "backend")["ip"] for i in range(2)] == ["10.0.0.2", "10.0.0.3"]
    assert run(state, "c9", "10.0.0.0/24")["network"] == "10.0.0.0/24"  # by CIDR too
    assert state.networks["10.0.0.0/24"]["ips"] == {"10.0.0.2": "c0", "10.0.0.3": "c1", "10.0.0.4": "c9"}


def test_a_cidr_creates_a_network_with_a_stable_default_name():
    state = state_with_nodes("h1")
    assert run(state, "a", "10.1.0.0/16")["ip"] == "10.1.0.2"
    assert state.networks["10.1.0.0/16"]["name"] == "net-10-1-0-0-16" == default_network_name("10.1.0.0/16")
    assert state.networks["10.1.0.0/16"]["gateway"] == "10.1.0.1"


def test_a_slash_30_has_a_gateway_and_room_for_one_container():
    state = state_with_nodes("h1")
    assert run(state, "a", "10.2.0.0/30")["ip"] == "10.2.0.2"
    with pytest.raises(Conflict, match="is full"):
        run(state, "b", "10.2.0.0/30")


@pytest.mark.parametrize("name, message", [
    ("Backend", "is invalid"), ("1net", "starting with a letter"), ("-x", "is invalid"), ("x-", "is invalid"),
    ("a" * 64, "is invalid"), ("a.b", "is invalid"), ("a/b", "is invalid"), (7, "is invalid"),
    ("net-10-9-0-0-24", "reserved for the network of that CIDR"),
])
def test_bad_network_names_are_refused(name, message):
    state = state_with_nodes("h1")
    with pytest.raises(StateError, match=message):
        state.apply_command("create_network", {"cidr": "10.0.0.0/24", "ts": 1.0, "name": name, "gateway": True})
    assert state.networks == {}


def test_the_default_name_may_be_given_for_its_own_cidr():
    state = ClusterState()
    assert state.apply_create_network("10.9.0.0/24", 1.0, name="net-10-9-0-0-24", gateway=True)["created"]


def test_names_are_unique_and_a_network_keeps_its_options():
    state = ClusterState()
    state.apply_create_network("10.0.0.0/24", 1.0, name="backend", gateway=True)
    with pytest.raises(AlreadyExists, match="'backend' is already used by 10.0.0.0/24"):
        state.apply_create_network("10.1.0.0/24", 1.0, name="backend", gateway=True)
    with pytest.raises(AlreadyExists, match="already exists, named 'backend'"):
        state.apply_create_network("10.0.0.0/24", 1.0, name="other", gateway=True)
    with pytest.raises(Conflict, match="is not internal"):
        state.apply_create_network("10.0.0.0/24", 1.0, internal=True, gateway=True)
    again = state.apply_create_network("10.0.0.0/24", 5.0, name="backend", gateway=True)
    assert not again["created"] and again["created_at"] == 1.0
    assert not state.apply_create_network("10.0.0.0/24", 5.0, gateway=True)["created"]  # no name: the same one


def test_unknown_network_names():
    state = state_with_nodes("h1")
    with pytest.raises(NotFound, match="no network named 'nope' .* network create CIDR --name nope"):
        run(state, "a", "nope")
    with pytest.raises(StateError, match="network name 'No!' is invalid"):
        run(state, "a", "No!")
    with pytest.raises(StateError, match="'10.79.0.0' has no prefix length — write it like 10.79.0.0/24"):
        run(state, "a", "10.79.0.0")  # a digit first: meant as a CIDR
    assert state.containers == {} and state.networks == {}


def test_rm_by_name_or_cidr():
    state = state_with_nodes("h1")
    state.apply_create_network("10.0.0.0/24", 1.0, name="a", gateway=True)
    state.apply_create_network("10.1.0.0/24", 1.0, name="b", gateway=True)
    assert state.apply_command("delete_network", {"cidr": "a"})
    assert state.apply_command("delete_network", {"cidr": "10.1.0.0/24"})
    with pytest.raises(NotFound, match="no network named 'a'"):
        state.apply_command("delete_network", {"cidr": "a"})


def test_internal_networks_have_a_gateway_and_no_published_ports():
    state = state_with_nodes("h1")
    made = state.apply_create_network("10.0.0.0/24", 1.0, name="vault", internal=True, gateway=True)
    assert made["internal"] and made["gateway"] == "10.0.0.1"
    with pytest.raises(StateError, match="vault is internal: nothing outside reaches it"):
        run(state, "a", "vault", publish=[publish()])
    assert run(state, "a", "vault")["ip"] == "10.0.0.2"
    with pytest.raises(StateError, match="needs a gateway"):
        state.apply_create_network("10.1.0.0/24", 1.0, internal=True)


def test_published_ports_are_unique_per_host_until_the_container_is_removed():
    state = state_with_nodes("h1", "h2")
    web = run(state, "web", publish=[publish(8080), publish(53, 53, "udp", "127.0.0.1")])
    assert web["publish"] == [publish(8080), publish(53, 53, "udp", "127.0.0.1")]
    assert run(state, "other-host", host="h2", publish=[publish(8080)])  # another host: free
    assert run(state, "other-ip", publish=[publish(53, 53, "udp", "198.18.0.2")])  # another address
    assert run(state, "other-proto", publish=[publish(8080, protocol="udp")])
    for clash in (publish(8080, 81), publish(8080, host_ip="127.0.0.1"), publish(53, 53, "udp")):
        with pytest.raises(Conflict, match=r"is already published on h1 by container '(web|other-ip)' — pick"):
            run(state, "late", publish=[clash])
    assert "late" not in state.containers and "10.0.0.6" not in state.networks["10.0.0.0/24"]["ips"]
    state.apply_container_observed("web", "h1", {"state": "exited", "exit_code": 0}, 3.0)
    with pytest.raises(Conflict):  # an exited container still holds its ports (it may run again)
        run(state, "late", publish=[publish(8080)])
    state.apply_remove_container("web")
    assert run(state, "late", publish=[publish(8080)])["publish"] == [publish(8080)]


def test_a_published_port_on_an_overlay_address_is_refused():
    state = state_with_nodes("h1")
    run(state, "a")
    with pytest.raises(StateError, match="10.0.0.1 is inside network 10.0.0.0/24 — publish on an address of the host"):
        run(state, "b", "10.5.0.0/24", publish=[publish(host_ip="10.0.0.1")])


def test_malformed_publish_is_refused_by_the_state_machine():
    state = state_with_nodes("h1")
    with pytest.raises(StateError, match="published host_port 0 is not a port number"):
        run(state, "a", publish=[publish(0)])
    with pytest.raises(StateError, match="gateway must be true or false"):
        state.apply_command("create_container", {"spec": spec("a"), "ts": 2.0, "gateway": "yes"})
    assert state.containers == {} and state.networks == {}


# --------------------------------------------------------------------------- upgrade of old state

def test_old_log_entries_apply_as_they_did():
    """create_network / create_container without the new arguments (a journal written before named
    networks) give a network without a gateway, allocating from its first address, as before."""
    state = state_with_nodes("h1")
    state.apply_command("create_network", {"cidr": "10.7.0.0/24", "ts": 1.0})
    made = state.apply_command("create_container", {"spec": spec("old", network="10.8.0.0/24"), "ts": 2.0})
    assert made["ip"] == "10.8.0.1" and "publish" not in made  # optional keys are absent when unused
    for cidr in ("10.7.0.0/24", "10.8.0.0/24"):
        record = state.networks[cidr]
        assert (record["gateway"], record["internal"], record["name"]) == (None, False, default_network_name(cidr))
    # and a new-style container on an old network keeps the old rule (no gateway there)
    assert run(state, "new", "10.8.0.0/24")["ip"] == "10.8.0.2"


def test_an_old_snapshot_loads_as_its_log_would_have_built_it():
    old = {"schema": 1, "nodes": {}, "revision": 3,
           "networks": {"10.8.0.0/24": {"cidr": "10.8.0.0/24", "vni": 4096, "created_at": 1.0,
                                        "ips": {"10.8.0.1": "old"}}},
           "containers": {"old": {"name": "old", "id": "x", "host": "h1", "network": "10.8.0.0/24",
                                  "ip": "10.8.0.1"}}}
    state = ClusterState.__new__(ClusterState)
    state.__setstate__(old)
    assert state.networks["10.8.0.0/24"] == {"cidr": "10.8.0.0/24", "vni": 4096, "created_at": 1.0,
                                             "ips": {"10.8.0.1": "old"}, "name": "net-10-8-0-0-24",
                                             "gateway": None, "internal": False}
    assert "publish" not in state.containers["old"]  # absent when unused, as in every schema
    replayed = state_with_nodes()
    replayed.apply_command("create_network", {"cidr": "10.8.0.0/24", "ts": 1.0})
    assert {k: v for k, v in replayed.networks["10.8.0.0/24"].items() if k != "ips"} == {
        k: v for k, v in state.networks["10.8.0.0/24"].items() if k != "ips"}
    again = pickle.loads(pickle.dumps(state))
    assert again == state and again.__getstate__()["schema"] == 2


def test_views():
    state = state_with_nodes("h1", "h2")
    state.apply_create_network("10.0.0.0/24", 1.0, name="backend", gateway=True)
    run(state, "web", "backend", publish=[publish()])
    run(state, "db", "backend", host="h2")
    state.apply_command("create_network", {"cidr": "10.7.0.0/24", "ts": 1.0})
    views = network_views(state.to_dict())
    assert [(v["name"], v["cidr"], v["gateway"], v["internal"], v["hosts"], v["containers"]) for v in views] == [
        ("backend", "10.0.0.0/24", "10.0.0.1", False, ["h1", "h2"], 2),
        ("net-10-7-0-0-24", "10.7.0.0/24", None, False, [], 0)]
    view = container_view(state.to_dict()["containers"]["web"], {}, state.to_dict()["networks"])
    assert (view["network"], view["network_name"], view["publish"]) == ("10.0.0.0/24", "backend", [publish()])
