"""Stack records in the replicated state machine: one object set or dropped per command, checked before
anything changes; a stack with no objects left is gone; old snapshots read as no stacks."""
from __future__ import annotations

import pickle

import pytest

from cantainer_agent.cluster.state import ClusterState, StateError


def entry(name: str = "shop-web", kind: str = "service", spec: dict | None = None, owned: bool = True) -> dict:
    return {"kind": kind, "name": name, "spec": spec if spec is not None else {"replicas": 3}, "owned": owned}


def test_objects_are_set_and_dropped_one_at_a_time():
    state = ClusterState()
    record = state.apply_command("set_stack_object", {"stack": "shop", "key": "service:web", "entry": entry(),
                                                      "ts": 1.0})
    assert record == {"name": "shop", "objects": {"service:web": entry()}, "updated_at": 1.0}
    state.apply_command("set_stack_object", {"stack": "shop", "key": "network:front",
                                             "entry": entry("10.0.0.0/24", "network", {}, False), "ts": 2.0})
    assert set(state.stacks["shop"]["objects"]) == {"service:web", "network:front"}
    after = state.apply_command("set_stack_object", {"stack": "shop", "key": "service:web", "entry": None, "ts": 3.0})
    assert set(after["objects"]) == {"network:front"} and after["updated_at"] == 3.0
    assert state.apply_command("set_stack_object", {"stack": "shop", "key": "network:front", "entry": None,
                                                    "ts": 4.0}) is None
    assert state.stacks == {}
    # dropping what is not there is a no-op (a retried removal)
    assert state.apply_command("set_stack_object", {"stack": "shop", "key": "service:web", "entry": None,
                                                    "ts": 5.0}) is None


@pytest.mark.parametrize("stack, key, value, message", [
    ("Shop", "service:web", entry(), "stack name 'Shop' is invalid"),
    ("shop", "pod:web", entry(), "KIND:NAME"),
    ("shop", "service:web", entry(kind="container"), "does not match its key"),
    ("shop", "service:web", {"kind": "service", "name": "x", "spec": {}}, "a stack object is"),
    ("shop", "service:web", entry(spec={"x": "y" * 70000}), "at most 65536 bytes"),
    ("shop", "service:web", entry(owned="yes"), "owned is true or false"),
    ("shop", "service:web", entry(name=""), "1-128 characters"),
])
def test_bad_records_are_refused_without_side_effects(stack, key, value, message):
    state = ClusterState()
    state.apply_command("set_stack_object", {"stack": "shop", "key": "volume:db",
                                             "entry": entry("shop_db", "volume", {"host": None}), "ts": 1.0})
    before = pickle.dumps(state)
    with pytest.raises(StateError, match=message):
        state.apply_command("set_stack_object", {"stack": stack, "key": key, "entry": value, "ts": 2.0})
    assert pickle.dumps(state) == before


def test_snapshots_from_before_stacks_read_as_none_and_records_survive_a_snapshot():
    state = ClusterState()
    state.apply_command("set_stack_object", {"stack": "shop", "key": "service:web", "entry": entry(), "ts": 1.0})
    data = state.__getstate__()
    assert pickle.loads(pickle.dumps(state)) == state
    del data["stacks"]
    old = ClusterState.__new__(ClusterState)
    old.__setstate__(data)
    assert old.stacks == {}
