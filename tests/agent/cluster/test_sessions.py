"""Exactly-once writes in the state machine: a duplicate gets the first outcome, never a second effect."""
from __future__ import annotations

import pickle

import pytest

from cantainer_agent.cluster import sessions
from cantainer_agent.cluster.state import ClusterState
from cantainer_agent.errors import AlreadyExists, Expired, NotFound, StateError


def state_with_node() -> ClusterState:
    state = ClusterState()
    state.apply_command("register_node", {"name": "h1", "address": "10.9.0.1", "raft_addr": "10.9.0.1:7480",
                                          "join_addr": "10.9.0.1:7481", "version": "v", "bundle": "b", "ts": 1.0})
    return state


def run(state: ClusterState, name: str, session: dict | None, container_id: str = "id1") -> dict:
    spec = {"name": name, "id": container_id, "host": "h1", "network": "10.1.0.0/24", "image": "alpine",
            "command": ["sleep", "1"]}
    return state.apply_command("create_container", {"spec": spec, "ts": 2.0}, session)


def session(seq: int, client: str = "cli:a", ts: float = 10.0) -> dict:
    return {"client": client, "seq": seq, "ts": ts}


def test_a_duplicate_create_is_answered_with_the_first_record_and_allocates_nothing():
    state = state_with_node()
    first = run(state, "web", session(1))
    again = run(state, "other-name", session(1), container_id="id2")  # a retry of the same request
    assert again == first and list(state.containers) == ["web"]
    assert state.networks["10.1.0.0/24"]["ips"] == {first["ip"]: "web"}
    assert run(state, "db", session(2))["ip"] != first["ip"]  # the next request is a new one


def test_a_duplicate_removal_is_answered_removed_not_not_found():
    state = state_with_node()
    run(state, "web", session(1))
    removed = state.apply_command("remove_container", {"name": "web"}, session(2))
    assert state.apply_command("remove_container", {"name": "web"}, session(2)) == removed
    with pytest.raises(NotFound):  # a new request for the same thing is refused: it is gone
        state.apply_command("remove_container", {"name": "web"}, session(3))


def test_a_duplicate_of_a_refusal_is_refused_again_with_the_same_code_even_if_it_would_now_succeed():
    state = state_with_node()
    run(state, "web", session(1))
    with pytest.raises(AlreadyExists) as first:
        run(state, "web", session(2), container_id="id2")
    state.apply_command("remove_container", {"name": "web"}, session(3))
    with pytest.raises(AlreadyExists) as again:  # the same request: the same outcome, not a create
        run(state, "web", session(2), container_id="id2")
    assert str(again.value) == str(first.value) and "web" not in state.containers


def test_requests_older_than_the_window_are_refused_as_outcome_unknown():
    state = state_with_node()
    for seq in range(1, sessions.WINDOW + 2):
        state.apply_command("heartbeat", {"name": "h1", "ts": float(seq)}, session(seq))
    with pytest.raises(Expired) as error:
        state.apply_command("heartbeat", {"name": "h1", "ts": 99.0}, session(1))
    assert error.value.code == "outcome_unknown"
    assert state.nodes["h1"]["heartbeat"] == float(sessions.WINDOW + 1)  # the stale retry changed nothing


def test_silent_clients_expire_by_the_proposers_clock_and_the_table_is_bounded(monkeypatch):
    state = state_with_node()
    state.apply_command("heartbeat", {"name": "h1", "ts": 1.0}, session(1, "old", ts=100.0))
    state.apply_command("heartbeat", {"name": "h1", "ts": 2.0}, session(1, "new", ts=100.0 + sessions.TTL + 1))
    assert list(state.sessions.clients) == ["new"]
    monkeypatch.setattr(sessions, "MAX_CLIENTS", 3)
    for n in range(5):
        state.apply_command("heartbeat", {"name": "h1", "ts": 3.0}, session(1, f"c{n}", ts=1000.0 + n))
    assert list(state.sessions.clients) == ["c2", "c3", "c4"]  # least recently used went first


def test_the_table_survives_a_snapshot_and_replicas_agree():
    a, b = state_with_node(), state_with_node()
    for state in (a, b):
        run(state, "web", session(1))
        with pytest.raises(StateError):
            run(state, "web", session(2), container_id="id2")
    restored = pickle.loads(pickle.dumps(a))
    assert restored == a == b
    assert run(restored, "x", session(1)) == run(a, "y", session(1))  # still a duplicate after the snapshot


def test_bad_sessions_are_refused_before_anything_happens():
    state = state_with_node()
    for bad in ({"client": "", "seq": 1, "ts": 1.0}, {"client": "c", "seq": -1, "ts": 1.0},
                {"client": "c", "seq": 1}, {"client": "c", "seq": 1.5, "ts": 1.0}, "c:1"):
        with pytest.raises(StateError):
            run(state, "web", bad)
    assert state.containers == {} and state.sessions.clients == {}
