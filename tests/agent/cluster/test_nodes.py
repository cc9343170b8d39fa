import copy
import pickle

import pytest

from cantainer_agent.cluster.state import ClusterState, StateError


def reg(state, name="h1", raft_addr="10.0.0.1:7480", ts=100.0, version="0.1.0", bundle="b1"):
    host = raft_addr.rsplit(":", 1)[0]
    return state.apply_register_node(name, host, raft_addr, f"{host}:7481", version, bundle, ts)


def test_register_creates_record():
    s = ClusterState()
    rec = reg(s)
    assert rec == {"address": "10.0.0.1", "raft_addr": "10.0.0.1:7480", "join_addr": "10.0.0.1:7481",
                   "version": "0.1.0", "bundle": "b1", "heartbeat": 100.0, "joined_at": 100.0,
                   "labels": {}, "capacity": {}, "layers": []}
    assert s.to_dict() == {"nodes": {"h1": rec}, "networks": {}, "containers": {}, "services": {}, "volumes": {},
                           "stacks": {}}


def test_reregister_keeps_joined_at_and_updates_the_rest():
    s = ClusterState()
    reg(s, ts=100.0)
    rec = reg(s, ts=250.0, version="0.2.0", bundle="b2")
    assert rec["joined_at"] == 100.0 and rec["heartbeat"] == 250.0
    assert (rec["version"], rec["bundle"]) == ("0.2.0", "b2")


def test_raft_addr_belongs_to_one_name():
    s = ClusterState()
    reg(s, "h1", "10.0.0.1:7480")
    before = copy.deepcopy(s.to_dict())
    with pytest.raises(StateError, match="already belongs to node 'h1'"):
        reg(s, "h2", "10.0.0.1:7480")
    with pytest.raises(StateError, match="already registered with raft address"):
        reg(s, "h1", "10.0.0.9:7480")
    assert s.to_dict() == before  # rejected commands change nothing


def test_heartbeat():
    s = ClusterState()
    reg(s, ts=1.0)
    assert s.apply_heartbeat("h1", 5.5) is True
    assert s.nodes["h1"]["heartbeat"] == 5.5
    assert s.apply_heartbeat("ghost", 6.0) is False
    assert "ghost" not in s.nodes


def test_remove():
    s = ClusterState()
    reg(s)
    assert s.apply_remove_node("h1") is True
    assert s.apply_remove_node("h1") is False
    assert s.nodes == {}


@pytest.mark.parametrize(
    "args",
    [
        ("bad name", "a", "a:1", "a:2", "v", "b", 1.0),
        ("h1", 5, "a:1", "a:2", "v", "b", 1.0),
        ("h1", "a", "a:1", "a:2", "v" * 65, "b", 1.0),
        ("h1", "a", "a:1", "a:2", "v", "b", -1),
        ("h1", "a", "a:1", "a:2", "v", "b", float("nan")),
        ("h1", "a", "a:1", "a:2", "v", "b", "now"),
    ],
)
def test_invalid_register_rejected(args):
    s = ClusterState()
    with pytest.raises(StateError):
        s.apply_register_node(*args)
    assert s.nodes == {}


def test_invalid_heartbeat_rejected():
    s = ClusterState()
    reg(s)
    with pytest.raises(StateError):
        s.apply_heartbeat("h1", "soon")
    with pytest.raises(StateError):
        s.apply_heartbeat("", 1.0)


def test_deterministic_replay():
    log = [
        ("reg", ("h1", "10.0.0.1", "10.0.0.1:7480", "10.0.0.1:7481", "1", "b", 1.0)),
        ("reg", ("h2", "10.0.0.2", "10.0.0.2:7480", "10.0.0.2:7481", "1", "b", 2.0)),
        ("hb", ("h1", 3.0)),
        ("reg", ("h3", "10.0.0.2", "10.0.0.2:7480", "10.0.0.2:7481", "1", "b", 4.0)),  # rejected
        ("rm", ("h2",)),
        ("hb", ("h2", 5.0)),  # unknown now: no-op
    ]

    def replay():
        s = ClusterState()
        for op, args in log:
            try:
                {"reg": s.apply_register_node, "hb": s.apply_heartbeat, "rm": s.apply_remove_node}[op](*args)
            except StateError:
                pass
        return s

    a, b = replay(), replay()
    assert a == b
    assert set(a.nodes) == {"h1"} and a.nodes["h1"]["heartbeat"] == 3.0


def test_pickle_round_trip_uses_plain_data():
    s = ClusterState()
    reg(s)
    s.networks["net1"] = {"name": "net1", "cidr": "10.1.0.0/24"}
    data = pickle.dumps(s)
    t = pickle.loads(data)
    assert t == s and t.to_dict() == s.to_dict()
    assert s.__getstate__()["schema"] == 2


def test_to_dict_is_a_copy():
    s = ClusterState()
    reg(s)
    d = s.to_dict()
    d["nodes"]["h1"]["heartbeat"] = 999.0
    assert s.nodes["h1"]["heartbeat"] == 100.0


def test_node_by_raft_addr():
    s = ClusterState()
    reg(s, "h1", "10.0.0.1:7480")
    assert s.node_by_raft_addr("10.0.0.1:7480") == "h1"
    assert s.node_by_raft_addr("10.0.0.2:7480") is None
