"""Placement inside the replicated state (pure): spread, constraints, reservations, ports, hints."""
from __future__ import annotations

import pytest

from cantainer_agent.cluster import specs
from cantainer_agent.cluster.scheduler import NoHostFits, Request, place
from cantainer_agent.cluster.state import ClusterState
from cantainer_agent.errors import StateError

LAYER = "sha256:" + "a" * 64
GIB = 1 << 30


def cluster(*hosts: str, labels: dict | None = None, memory: int = 4 * GIB, cpus: float = 2.0,
            ts: float = 100.0) -> ClusterState:
    state = ClusterState()
    for index, name in enumerate(hosts, start=1):
        state.apply_register_node(name, f"10.9.0.{index}", f"10.9.0.{index}:7480", f"10.9.0.{index}:7481", "0.1",
                                  "b", ts, labels=(labels or {}).get(name, {}),
                                  capacity={"memory": memory, "cpus": cpus}, layers=[LAYER])
    return state


def spec(name: str, **extra) -> dict:
    return {"name": name, "id": f"id-{name}", "network": "10.0.0.0/24", "image": "alpine",
            "image_digest": "sha256:" + "b" * 64, "command": ["sleep", "1"], "layers": [LAYER], **extra}


def run(state: ClusterState, name: str, ts: float = 101.0, **extra) -> str:
    return state.apply_place_container(spec(name, **extra), ts, 6.0)["host"]


def test_placements_spread_by_the_number_of_containers():
    state = cluster("h1", "h2", "h3")
    hosts = [run(state, f"c{i}") for i in range(6)]
    assert sorted(hosts) == ["h1", "h1", "h2", "h2", "h3", "h3"]
    assert hosts[:3] == ["h1", "h2", "h3"]  # ties go by name


def test_exited_containers_without_a_restart_policy_do_not_count():
    state = cluster("h1", "h2")
    assert run(state, "a") == "h1"
    state.apply_container_observed("a", "h1", {"state": "exited", "exit_code": 0}, 102.0)
    assert run(state, "b") == "h1"
    state.apply_create_container({**spec("c", restart="always"), "host": "h2"}, 103.0)
    state.apply_container_observed("c", "h2", {"state": "exited", "exit_code": 1}, 104.0)
    assert run(state, "d") == "h1"  # c may come back: h2 still counts it


@pytest.mark.parametrize("constraint, expected", [
    ("host==h2", {"h2"}), ("host!=h1", {"h2", "h3"}), ("label.zone==b", {"h3"}), ("label.zone!=b", {"h1", "h2"}),
    ("label.disk==ssd", {"h1"}),
])
def test_constraints_pick_only_matching_hosts(constraint, expected):
    state = cluster("h1", "h2", "h3", labels={"h1": {"zone": "a", "disk": "ssd"}, "h2": {"zone": "a"},
                                              "h3": {"zone": "b"}})
    assert {run(state, f"c{i}", constraints=[constraint]) for i in range(6)} == expected


def test_no_host_fits_names_each_reason_and_changes_nothing():
    state = cluster("h1", "h2", "h3", labels={"h1": {"zone": "a"}, "h2": {"zone": "a"}, "h3": {"zone": "b"}})
    before = state.to_dict()
    with pytest.raises(NoHostFits) as caught:
        run(state, "x", constraints=["label.zone==c"])
    assert str(caught.value) == "no host can run x — h1, h2, h3: not label.zone==c"
    assert state.to_dict() == before
    state.nodes["h3"]["heartbeat"] = 0.0  # silent: down
    with pytest.raises(NoHostFits, match=r"h1, h2: not label.zone==b; h3: down"):
        run(state, "y", constraints=["label.zone==b"])


def test_cpu_and_memory_are_reservations_against_reported_capacity():
    state = cluster("h1", "h2", memory=GIB, cpus=2.0)
    assert run(state, "a", limits={"cpus": 1.5}) == "h1"
    assert run(state, "b", limits={"cpus": 1.5}) == "h2"
    with pytest.raises(NoHostFits, match=r"h1, h2: 0.5 of 2 CPUs free, 1.5 asked"):
        run(state, "c", limits={"cpus": 1.5})
    assert run(state, "d", limits={"cpus": 0.5, "memory": 512 << 20}) == "h1"
    with pytest.raises(NoHostFits, match=r"h1: 512M of 1G memory free, 768M asked; h2: 0.5 of 2 CPUs free, 0.6"):
        run(state, "e", limits={"cpus": 0.6, "memory": 768 << 20})
    state.apply_remove_container("a")  # its reservation goes with it
    assert run(state, "f", limits={"cpus": 1.5}) == "h1"


def test_concurrent_placements_applied_in_log_order_never_oversubscribe():
    """Two proposers chose on the same stale view (both hint h1, which had room for one): the
    second command, applied after the first, sees its reservation and lands elsewhere or is refused."""
    state = cluster("h1", "h2", cpus=1.0)
    first = state.apply_place_container(spec("a", limits={"cpus": 1.0}), 101.0, 6.0, hint="h1")
    second = state.apply_place_container(spec("b", limits={"cpus": 1.0}), 101.0, 6.0, hint="h1")
    assert (first["host"], second["host"]) == ("h1", "h2")
    with pytest.raises(NoHostFits):
        state.apply_place_container(spec("c", limits={"cpus": 1.0}), 101.0, 6.0, hint="h1")


def test_a_hint_that_fits_is_taken_so_a_replay_lands_on_the_same_host():
    state = cluster("h1", "h2", "h3")
    assert run(state, "a") == "h1"
    assert state.apply_place_container(spec("b"), 101.0, 6.0, hint="h1")["host"] == "h1"  # not the emptiest
    state.nodes["h3"]["heartbeat"] = 0.0
    assert state.apply_place_container(spec("c"), 101.0, 6.0, hint="h3")["host"] == "h2"  # down: not taken


def test_a_host_without_the_image_is_passed_over():
    state = cluster("h1", "h2")
    state.apply_node_layers("h1", [])
    assert run(state, "a") == "h2"
    state.apply_node_layers("h2", [])
    with pytest.raises(NoHostFits, match="h1, h2: image not on it"):
        run(state, "b")


def test_a_published_host_port_is_taken_once_per_host():
    state = cluster("h1", "h2")
    assert run(state, "a", publish=["8080:80"]) == "h1"
    assert run(state, "b", publish=["8080:80"]) == "h2"
    assert run(state, "c", publish=["8080:80/udp"]) == "h1"  # another protocol: another port
    with pytest.raises(NoHostFits, match="port 8080/tcp already published there"):
        run(state, "d", publish=["8080:80"])


def test_request_counts_the_replaced_task_as_gone_for_spread_only():
    state = cluster("h1", "h2")
    run(state, "a")
    run(state, "b")
    request = Request(name="x", leaving="h1")
    assert place(state.nodes, state.containers, request, 101.0, 6.0) == "h1"
    assert place(state.nodes, state.containers, Request(name="x", leaving="h2"), 101.0, 6.0) == "h2"


@pytest.mark.parametrize("text, message", [
    ("zone==a", "not understood"), ("host=h1", "not understood"), ("label.Zone==a", "label key"),
    ("host==", "not understood"), ("label.==a", "not understood"),
])
def test_bad_constraints_are_refused_with_the_forms_that_work(text, message):
    with pytest.raises(StateError, match=message):
        specs.parse_constraint(text)


def test_the_proposers_down_window_is_part_of_the_command():
    state = cluster("h1", "h2", ts=100.0)
    state.nodes["h1"]["heartbeat"] = 95.0
    assert state.apply_place_container(spec("a"), 101.0, 5.0)["host"] == "h2"  # h1 silent for 6 s >= 5
    assert state.apply_place_container(spec("b"), 101.0, 7.0)["host"] == "h1"
