"""`create_container` may carry the container's first observation (the one commit of a `run`)."""
from __future__ import annotations

import copy

import pytest

from cantainer_agent.cluster.state import StateError
from tests.agent.cluster.test_state import spec, state_with_nodes


def test_a_container_recorded_as_running_by_its_host_in_the_same_command():
    state = state_with_nodes("h1")
    record = state.apply_create_container(spec("web"), 2.0, {"state": "running", "pid": 4321, "started_at": 2.5})
    assert record["observed"] == {"state": "running", "exit_code": None, "pid": 4321, "started_at": 2.5,
                                  "finished_at": None, "reason": None, "reported_at": 2.0}
    assert record["ip"] == "10.0.0.1" and state.containers["web"]["observed"]["state"] == "running"
    assert state.apply_create_container(spec("db"), 3.0)["observed"]["state"] == "created"  # without it, as before


@pytest.mark.parametrize("observed, message", [
    ({"state": "exited", "pid": 1, "started_at": 1.0}, "first observation"),
    ("running", "first observation"),
    ({"state": "running", "pid": 0, "started_at": 1.0}, "pid"),
    ({"state": "running", "pid": "7", "started_at": 1.0}, "pid"),
    ({"state": "running", "pid": 7, "started_at": -1}, "started_at"),
])
def test_a_bad_first_observation_is_refused_and_changes_nothing(observed, message):
    state = state_with_nodes("h1")
    before = copy.deepcopy(state.to_dict())
    with pytest.raises(StateError, match=message):
        state.apply_create_container(spec("web"), 2.0, observed)
    assert state.to_dict() == before
