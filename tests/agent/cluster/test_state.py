"""Networks, IPAM and containers in the replicated state machine (pure logic)."""
from __future__ import annotations

import pickle

import pytest

from cantainer_agent.cluster import ipam
from cantainer_agent.cluster.state import ClusterState, StateError


def state_with_nodes(*names: str) -> ClusterState:
    state = ClusterState()
    for index, name in enumerate(names, start=1):
        state.apply_register_node(
            name, f"10.9.0.{index}", f"10.9.0.{index}:7480", f"10.9.0.{index}:7481", "0.1", "b", 1.0
        )
    return state


def spec(name: str, host: str = "h1", network: str = "10.0.0.0/24", **extra) -> dict:
    return {"name": name, "id": f"id-{name}", "host": host, "network": network, "image": "alpine",
            "command": ["/bin/sh"], **extra}


@pytest.mark.parametrize("text, message", [
    ("garbage", "not a valid CIDR"),
    ("10.0.0.0/33", "not a valid CIDR"),
    ("10.0.0.1/24", "host bits set — did you mean 10.0.0.0/24"),
    ("10.0.0.0/32", "too small"),
    ("10.0.0.0/31", "too small"),
    ("0.0.0.0/4", "too large"),
    ("fd00::/64", "IPv6"),
    ("10.0.0.0", "no prefix length"),
    ("", "not a CIDR"),
    (None, "not a CIDR"),
])
def test_bad_cidrs_are_refused_with_a_fix(text, message):
    with pytest.raises(ipam.IpamError, match=message):
        ipam.parse_cidr(text)


@pytest.mark.parametrize("cidr, kind", [("224.0.0.0/24", "multicast"), ("127.0.0.0/24", "loopback"),
                                        ("0.0.0.0/8", "this network"), ("169.254.0.0/16", "link-local"),
                                        ("240.0.0.0/24", "reserved"), ("239.255.0.0/16", "multicast")])
def test_networks_of_addresses_no_host_can_have_are_refused(cidr, kind):
    state = ClusterState()
    with pytest.raises(ipam.IpamError, match=f"{kind}.*use a private range"):
        state.apply_create_network(cidr, 1.0)
    assert state.networks == {}


def test_allocation_is_lowest_free_and_skips_network_and_broadcast():
    state = state_with_nodes("h1")
    ips = [state.apply_create_container(spec(f"c{i}"), 2.0)["ip"] for i in range(3)]
    assert ips == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    state.apply_remove_container("c1")
    assert state.apply_create_container(spec("c9"), 3.0)["ip"] == "10.0.0.2"  # released address reused


@pytest.mark.parametrize("bad", [{"image": "x" * 513}, {"env": {"A B": "1"}}, {"command": []}, {"limits": {"gpu": 1}},
                                 {"stop_signal": 99}, {"ports": "80/tcp"}],
                         ids=["image label too long", "bad env name", "empty command", "unknown limit",
                              "bad stop signal", "ports not a list"])
def test_a_refused_container_creates_no_network_and_takes_no_address(bad):
    state = state_with_nodes("h1")
    before = state.to_dict()
    with pytest.raises(StateError):
        state.apply_create_container(spec("c1", network="10.5.0.0/24", **bad), 1.0)
    assert state.to_dict() == before


def test_a_full_network_is_a_clear_error_and_changes_nothing():
    state = state_with_nodes("h1")
    assert [state.apply_create_container(spec(f"c{i}", network="10.0.0.0/30"), 1.0)["ip"] for i in range(2)] == [
        "10.0.0.1", "10.0.0.2"]
    before = state.to_dict()
    with pytest.raises(StateError, match="is full"):
        state.apply_create_container(spec("c3", network="10.0.0.0/30"), 1.0)
    assert state.to_dict() == before


def test_networks_get_distinct_vnis_from_4096_and_overlaps_are_refused():
    state = ClusterState()
    assert state.apply_create_network("10.0.0.0/24", 1.0)["vni"] == 4096
    assert state.apply_create_network("10.1.0.0/24", 1.0)["vni"] == 4097
    assert state.apply_create_network("10.0.0.0/24", 1.0)["vni"] == 4096  # idempotent
    with pytest.raises(StateError, match="overlaps existing network 10.0.0.0/24"):
        state.apply_create_network("10.0.0.0/16", 1.0)
    state.apply_delete_network("10.0.0.0/24")
    assert state.apply_create_network("10.2.0.0/24", 1.0)["vni"] == 4096  # freed VNI reused


def test_network_with_containers_cannot_be_deleted():
    state = state_with_nodes("h1")
    state.apply_create_container(spec("web"), 1.0)
    with pytest.raises(StateError, match="still has 1 container"):
        state.apply_delete_network("10.0.0.0/24")


@pytest.mark.parametrize("name", ["Web", "a b", "x;y", "$(id)", "../x", "-lead", "trail-", "a" * 64, "", None, "a_b"])
def test_unsafe_container_names_are_refused(name):
    state = state_with_nodes("h1")
    with pytest.raises(StateError, match="container name"):
        state.apply_create_container(spec(name), 1.0)
    assert state.containers == {} and state.networks == {}


def test_duplicate_name_and_unknown_host_are_refused_without_side_effects():
    state = state_with_nodes("h1")
    state.apply_create_container(spec("web"), 1.0)
    before = state.to_dict()
    with pytest.raises(StateError, match="already in use"):
        state.apply_create_container({**spec("web"), "id": "another-id"}, 2.0)
    with pytest.raises(StateError, match="not a member"):
        state.apply_create_container(spec("db", host="h9", network="10.5.0.0/24"), 2.0)
    assert state.to_dict() == before


def test_mac_is_derived_from_ip():
    state = state_with_nodes("h1")
    assert state.apply_create_container(spec("web"), 1.0)["mac"] == "02:42:0a:00:00:01"


def test_only_the_containers_host_may_report_it():
    state = state_with_nodes("h1", "h2")
    state.apply_create_container(spec("web"), 1.0)
    assert state.apply_container_observed("web", "h1", {"state": "running", "pid": 42}, 2.0) is True
    assert state.apply_container_observed("web", "h1", {"state": "running", "pid": 42}, 3.0) is False
    with pytest.raises(StateError, match="runs on h1"):
        state.apply_container_observed("web", "h2", {"state": "exited"}, 2.0)


def test_same_commands_give_the_same_state_and_it_pickles():
    def build() -> ClusterState:
        state = state_with_nodes("h1", "h2")
        for i in range(5):
            state.apply_create_container(spec(f"c{i}", host="h1" if i % 2 else "h2"), float(i))
        state.apply_remove_container("c2")
        return state

    first, second = build(), build()
    assert first == second
    assert pickle.loads(pickle.dumps(first)) == first


def test_heartbeat_carries_a_validated_overlay_summary():
    state = state_with_nodes("h1")
    summary = {"networks": 1, "expected": 4, "programmed": 4, "pending": 0}
    assert state.apply_heartbeat("h1", 5.0, overlay=summary) is True
    assert state.nodes["h1"]["overlay"] == summary
    with pytest.raises(StateError, match="overlay summary"):
        state.apply_heartbeat("h1", 6.0, overlay={"expected": "lots"})


def test_repeating_a_create_with_the_same_id_is_a_no_op():
    state = state_with_nodes("h1")
    first = state.apply_create_container(spec("web"), 1.0)
    again = state.apply_create_container(spec("web"), 2.0)  # a retry after a lost reply
    assert again == first and len(state.networks["10.0.0.0/24"]["ips"]) == 1
    with pytest.raises(StateError, match="already in use"):
        state.apply_create_container({**spec("web"), "id": "other"}, 3.0)


def test_removing_a_used_network_counts_the_containers_it_does_not_name():
    state = state_with_nodes("h1")
    for i in range(7):
        state.apply_create_container(spec(f"c{i}"), 1.0)
    with pytest.raises(StateError, match=r"still has 7 container\(s\) attached \(c0, c1, c2, c3, c4 and 2 more\)"):
        state.apply_delete_network("10.0.0.0/24")


def test_creating_an_existing_network_says_it_was_not_created():
    state = ClusterState()
    assert state.apply_create_network("10.0.0.0/24", 1.0)["created"] is True
    again = state.apply_create_network("10.0.0.0/24", 2.0)
    assert (again["created"], again["vni"], again["created_at"]) == (False, 4096, 1.0)


def test_auto_remove_is_recorded_only_when_asked_and_must_be_a_boolean():
    state = state_with_nodes("h1")
    assert state.apply_create_container(spec("plain"), 1.0).get("auto_remove") is None
    assert state.apply_create_container(spec("brief", auto_remove=True), 1.0)["auto_remove"] is True
    with pytest.raises(StateError, match="auto_remove must be true or false"):
        state.apply_create_container(spec("odd", auto_remove="yes"), 1.0)
    assert "odd" not in state.containers


# ------------------------------------------------------------------ the change feed


def test_the_feed_names_every_record_a_command_touched_and_nothing_a_refused_one_did():
    state = state_with_nodes("h1")
    seq = state.feed_seq
    state.apply_command("create_container", {"spec": spec("c1"), "ts": 1.0})
    assert state.changes_since(seq) == {("containers", "c1"), ("networks", "10.0.0.0/24")}
    seq = state.feed_seq
    state.apply_command("heartbeat", {"name": "h1", "ts": 2.0})  # no revision, but a change
    assert state.changes_since(seq) == {("nodes", "h1")}
    seq = state.feed_seq
    with pytest.raises(StateError):
        state.apply_command("delete_network", {"cidr": "10.0.0.0/24"})  # still used: refused
    assert state.changes_since(seq) == set() and state.feed_seq == seq
    state.apply_command("remove_container", {"name": "c1"})
    state.apply_command("delete_network", {"cidr": "10.0.0.0/24"})
    assert state.changes_since(seq) == {("containers", "c1"), ("networks", "10.0.0.0/24")}
    assert state.changes_since(state.feed_seq) == set()


def test_a_reader_behind_a_gap_or_the_feeds_end_reads_everything_again(monkeypatch):
    from cantainer_agent.cluster import state as state_module

    state = state_with_nodes("h1")
    seq = state.feed_seq
    monkeypatch.delitem(state_module._TOUCHES, "heartbeat")  # now a command the feed cannot describe
    state.apply_command("heartbeat", {"name": "h1", "ts": 2.0})
    assert state.changes_since(seq) is None  # behind the gap
    after = state.feed_seq
    state.apply_command("register_node", {"name": "h2", "address": "10.9.0.9", "raft_addr": "10.9.0.9:7480",
                                          "join_addr": "10.9.0.9:7481", "version": "v", "bundle": "b", "ts": 3.0})
    assert state.changes_since(after) == {("nodes", "h2")}  # after it: fine again

    monkeypatch.setattr(state_module, "FEED_MAX", 3)
    start = state.feed_seq
    for ts in range(5):
        state.apply_command("register_node", {"name": "h2", "address": "10.9.0.9", "raft_addr": "10.9.0.9:7480",
                                              "join_addr": "10.9.0.9:7481", "version": "v", "bundle": "b",
                                              "ts": float(ts)})
    assert state.changes_since(start) is None  # fell off the end of the feed
    assert state.changes_since(state.feed_seq - 2) == {("nodes", "h2")}


def test_a_restored_replica_is_a_new_feed_and_the_feed_is_never_pickled():
    state = state_with_nodes("h1")
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state and restored.feed_epoch != state.feed_epoch and restored.feed_seq == 0
    assert b"_feed" not in pickle.dumps(state)
    records = pickle.loads(state.records_bytes({("nodes", "h1"), ("nodes", "gone")}))
    assert records[("nodes", "h1")] == state.nodes["h1"] and records[("nodes", "gone")] is None


def test_every_command_says_what_it_touches():
    """A command missing from the feed's table would only cost full reads, silently: every command is
    described (None for a rename the feed cannot name), and a new one must be too."""
    from cantainer_agent.cluster import state as state_module

    assert set(state_module._TOUCHES) == set(ClusterState.COMMANDS)


def test_a_network_deleted_by_name_is_a_feed_gap_and_by_cidr_names_its_record():
    state = state_with_nodes("h1")
    state.apply_command("create_network", {"cidr": "10.5.0.0/24", "ts": 1.0, "name": "blue", "gateway": True})
    state.apply_command("create_network", {"cidr": "10.6.0.0/24", "ts": 1.0, "gateway": True})
    seq = state.feed_seq
    state.apply_command("delete_network", {"cidr": "10.6.0.0/24"})
    assert state.changes_since(seq) == {("networks", "10.6.0.0/24")}
    seq = state.feed_seq
    state.apply_command("delete_network", {"cidr": "blue"})  # the name went with the record
    assert state.changes_since(seq) is None and "10.5.0.0/24" not in state.networks
