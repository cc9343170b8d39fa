"""Named volumes in the replicated state machine: created by first use on the container's host,
bound to that host, removed only when unused; old snapshots and log entries without them still apply."""
from __future__ import annotations

import pickle

import pytest

from cantainer_agent.cluster.state import ClusterState, StateError
from cantainer_agent.cluster.views import container_view, volume_views
from cantainer_agent.cluster.volumes import volume_host
from cantainer_agent.errors import AlreadyExists, Conflict, NotFound

from .test_state import spec, state_with_nodes


def vol(name: str, target: str = "/data", readonly: bool = False) -> dict:
    return {"type": "volume", "source": name, "target": target, "readonly": readonly}


def test_first_use_creates_the_volume_on_the_containers_host():
    state = state_with_nodes("h1", "h2")
    record = state.apply_command("create_container", {"spec": spec("db", host="h2", mounts=[vol("data")]), "ts": 5.0})
    assert record["mounts"] == [vol("data")]
    assert state.volumes == {"data": {"name": "data", "host": "h2", "created_at": 5.0, "labels": {}}}
    # a second container on the same host shares it; the volume keeps its first creation time
    state.apply_command("create_container", {"spec": spec("db2", host="h2", mounts=[vol("data", "/x", True)]),
                                             "ts": 6.0})
    assert state.volumes["data"]["created_at"] == 5.0
    view = volume_views(state.to_dict())
    assert view == [{"name": "data", "host": "h2", "created_at": 5.0, "labels": {}, "containers": ["db", "db2"],
                     "mountpoint": "/var/lib/cantainer/volumes/data", "host_down": False, "empty": None}]
    assert container_view(state.containers["db2"])["mounts"] == [vol("data", "/x", True)]


def test_a_container_on_another_host_than_its_volume_is_refused_and_changes_nothing():
    state = state_with_nodes("h1", "h2")
    state.apply_command("create_container", {"spec": spec("db", host="h2", mounts=[vol("data")]), "ts": 5.0})
    before = pickle.dumps(state)
    with pytest.raises(Conflict, match="volume data lives on h2, not h1: .*--host h2"):
        state.apply_command("create_container", {"spec": spec("other", host="h1", mounts=[vol("data")]),
                                                 "ts": 6.0})
    assert pickle.dumps(state) == before  # no container, no address, no network touched


@pytest.mark.parametrize("mounts, message", [
    ([{"type": "bind", "source": "/var/lib/cantainer", "target": "/x", "readonly": False}], "refused: it is"),
    ([{"type": "bind", "source": "/", "target": "/x", "readonly": False}], "it contains"),
    ([{"type": "bind", "source": "rel", "target": "/x", "readonly": False}], "not an absolute path"),
    ([vol("data", "/proc")], "inside /proc"),
    ([vol("data", "relative")], "not an absolute path"),
    ([vol("-bad")], "volume name '-bad' is invalid"),
    ([vol("data"), vol("other", "/data")], "two mounts go to /data"),
    ([vol("data"), vol("data", "/other")], "mounted twice"),
    ([{"type": "tmpfs", "source": "x", "target": "/x", "readonly": False}], "must be volume or bind"),
    ([{**vol("data"), "readonly": "yes"}], "true or false"),
    ([{**vol("data"), "extra": 1}], "a mount is"),
    ("data:/x", "must be a list"),
    ([vol(f"v{i}", f"/m{i}") for i in range(33)], "at most 32"),
])
def test_bad_mounts_are_refused_without_side_effects(mounts, message):
    state = state_with_nodes("h1")
    before = pickle.dumps(state)
    with pytest.raises(StateError, match=message):
        state.apply_command("create_container", {"spec": spec("c", mounts=mounts), "ts": 1.0})
    assert pickle.dumps(state) == before


def test_remove_volume_is_refused_while_a_container_record_mounts_it():
    state = state_with_nodes("h1")
    state.apply_command("create_container", {"spec": spec("db", mounts=[vol("data")]), "ts": 1.0})
    with pytest.raises(Conflict, match="volume data is in use by db — remove it first"):
        state.apply_command("remove_volume", {"name": "data"})
    state.apply_command("remove_container", {"name": "db"})
    assert state.volumes["data"]["host"] == "h1"  # data outlives the container
    with pytest.raises(Conflict, match="volume data is on h1, not on h2"):
        state.apply_command("remove_volume", {"name": "data", "host": "h2"})
    assert state.apply_command("remove_volume", {"name": "data", "host": "h1"})["host"] == "h1"
    with pytest.raises(NotFound, match="no volume named 'data'"):
        state.apply_command("remove_volume", {"name": "data"})


def test_create_volume_is_idempotent_on_its_host_and_refused_elsewhere():
    state = state_with_nodes("h1", "h2")
    made = state.apply_command("create_volume", {"name": "logs", "host": "h1", "ts": 2.0, "labels": {"stack": "s"}})
    assert made == {"name": "logs", "host": "h1", "created_at": 2.0, "labels": {"stack": "s"}, "created": True}
    assert state.apply_command("create_volume", {"name": "logs", "host": "h1", "ts": 3.0})["created"] is False
    with pytest.raises(AlreadyExists, match="already exists on h1"):
        state.apply_command("create_volume", {"name": "logs", "host": "h2", "ts": 3.0})
    with pytest.raises(StateError, match="not a member"):
        state.apply_command("create_volume", {"name": "x", "host": "h9", "ts": 3.0})
    with pytest.raises(StateError, match="labels"):
        state.apply_command("create_volume", {"name": "x", "host": "h1", "ts": 3.0, "labels": {"a": 1}})


def test_a_session_replays_a_volume_removal_instead_of_not_found():
    state = state_with_nodes("h1")
    state.apply_command("create_volume", {"name": "v", "host": "h1", "ts": 1.0})
    session = {"client": "cli:x", "seq": 1, "ts": 1.0}
    first = state.apply_command("remove_volume", {"name": "v"}, session)
    assert state.apply_command("remove_volume", {"name": "v"}, session) == first


def test_snapshots_and_log_entries_from_before_volumes_still_apply():
    """A snapshot pickled without a `volumes` table, and create_container entries without `mounts`,
    give the same state as before; the new table is empty and containers carry no `mounts` key."""
    state = state_with_nodes("h1")
    state.apply_command("create_container", {"spec": spec("old"), "ts": 1.0})
    data = state.__getstate__()
    del data["volumes"]
    old = ClusterState.__new__(ClusterState)
    old.__setstate__(data)
    assert old.volumes == {} and "mounts" not in old.containers["old"]
    assert container_view(old.containers["old"])["mounts"] == []
    old.apply_command("create_container", {"spec": spec("new", mounts=[vol("data")]), "ts": 2.0})
    assert old.volumes["data"]["host"] == "h1"


def test_placement_follows_the_volumes():
    state = state_with_nodes("h1", "h2")
    state.apply_command("create_volume", {"name": "a", "host": "h1", "ts": 1.0})
    state.apply_command("create_volume", {"name": "b", "host": "h2", "ts": 1.0})
    assert volume_host(state.volumes, [vol("a")]) == "h1"
    assert volume_host(state.volumes, [vol("new")]) is None
    with pytest.raises(Conflict, match="different hosts"):
        volume_host(state.volumes, [vol("a"), vol("b", "/b")])


def test_only_the_volumes_host_reports_whether_it_holds_anything():
    state = state_with_nodes("h1", "h2")
    state.apply_command("create_volume", {"name": "v", "host": "h1", "ts": 1.0})
    assert state.apply_command("volume_observed", {"name": "v", "host": "h1", "empty": True}) is True
    assert state.apply_command("volume_observed", {"name": "v", "host": "h1", "empty": True}) is False
    assert state.apply_command("volume_observed", {"name": "v", "host": "h1", "empty": False}) is True
    assert volume_views(state.to_dict())[0]["empty"] is False
    with pytest.raises(Conflict, match="volume v is on h1, not on h2"):
        state.apply_command("volume_observed", {"name": "v", "host": "h2", "empty": True})
    with pytest.raises(NotFound):
        state.apply_command("volume_observed", {"name": "w", "host": "h1", "empty": True})
    with pytest.raises(StateError, match="true or false"):
        state.apply_command("volume_observed", {"name": "v", "host": "h1", "empty": "no"})


def test_the_feed_names_the_volumes_and_stacks_commands_touch_and_snapshots_copy_them():
    state = state_with_nodes("h1", "h2")
    seq = state.feed_seq
    state.apply_command("create_container", {"spec": spec("db", host="h2", mounts=[vol("data")]), "ts": 5.0})
    assert state.changes_since(seq) == {("containers", "db"), ("networks", "10.0.0.0/24"), ("volumes", "data")}
    seq = state.feed_seq
    state.apply_command("volume_observed", {"name": "data", "host": "h2", "empty": False})
    state.apply_command("create_volume", {"name": "logs", "host": "h1", "ts": 6.0})
    state.apply_command("set_stack_object", {"stack": "shop", "key": "volume:logs", "ts": 7.0, "entry": {
        "kind": "volume", "name": "logs", "spec": {}, "owned": True}})
    assert state.changes_since(seq) == {("volumes", "data"), ("volumes", "logs"), ("stacks", "shop")}
    seq = state.feed_seq
    state.apply_command("remove_container", {"name": "db"})
    state.apply_command("remove_volume", {"name": "data", "host": "h2"})
    assert state.changes_since(seq) == {("containers", "db"), ("networks", "10.0.0.0/24"), ("volumes", "data")}
    copied = pickle.loads(state.to_bytes())  # what controllers and API reads get
    assert copied["volumes"] == state.volumes and copied["stacks"] == state.stacks
    assert pickle.loads(state.records_bytes({("volumes", "data")})) == {("volumes", "data"): None}
