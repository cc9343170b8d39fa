"""cluster/views.py: the status document built from a raft snapshot (pure)."""
from cantainer_agent.cluster.views import build_status


def snap(**over):
    s = {
        "self": "10.0.0.1:7480",
        "role": "leader",
        "leader": "10.0.0.1:7480",
        "term": 4,
        "commit_index": 40,
        "last_applied": 40,
        "log_len": 12,
        "has_quorum": True,
        "members": ["10.0.0.1:7480", "10.0.0.2:7480", "10.0.0.3:7480"],
        "connected": ["10.0.0.2:7480"],
        "ready": True,
        "state": {
            "nodes": {
                name: {"address": f"10.0.0.{i}", "raft_addr": f"10.0.0.{i}:7480", "join_addr": f"10.0.0.{i}:7481",
                       "version": "0.1.0", "bundle": "b", "heartbeat": hb, "joined_at": 1.0}
                for i, (name, hb) in enumerate([("h1", 50.0), ("h2", 99.0), ("h3", 10.0)], start=1)
            },
            "networks": {},
            "containers": {},
        },
    }
    s.update(over)
    return s


def test_build_status_shapes_and_liveness():
    st = build_status(node="h1", cluster="c", snap=snap(), now=100.0, heartbeat_interval=2.0, voters=3)
    assert st["node"] == "h1" and st["leader"] == "h1" and st["term"] == 4 and st["commit_index"] == 40
    assert st["raft"]["role"] == "leader" and st["raft"]["voters"] == 3
    by = {n["name"]: n for n in st["nodes"]}
    assert by["h1"]["state"] == "up"  # this node: always up, even with an old heartbeat
    assert by["h2"]["state"] == "up"  # 1 s old < 3 intervals
    assert by["h3"]["state"] == "down" and by["h3"]["last_seen"] == 10.0
    assert [by[n]["role"] for n in ("h1", "h2", "h3")] == ["leader", "follower", "follower"]
    assert st["networks"] == [] and st["containers"] == []
    assert set(by["h2"]) >= {"name", "address", "role", "state", "version", "bundle", "last_seen"}


def test_build_status_follower_view_and_unregistered_member():
    s = snap(self="10.0.0.2:7480", role="follower", leader="10.0.0.1:7480",
             members=["10.0.0.1:7480", "10.0.0.2:7480", "10.0.0.3:7480", "10.0.0.4:7480"])
    st = build_status(node="h2", cluster="c", snap=s, now=100.0, heartbeat_interval=2.0, voters=3)
    by = {n["name"]: n for n in st["nodes"]}
    assert st["leader"] == "h1" and by["h2"]["role"] == "follower"
    assert by["10.0.0.4:7480"]["registered"] is False and by["10.0.0.4:7480"]["state"] == "down"


def test_build_status_no_leader():
    st = build_status(node="h1", cluster="c", snap=snap(leader=None, role="candidate"), now=100.0,
                      heartbeat_interval=2.0, voters=3)
    assert st["leader"] is None and st["raft"]["role"] == "candidate"
    assert {n["name"]: n["role"] for n in st["nodes"]}["h1"] == "candidate"


def test_build_status_down_window_grows_with_the_cluster():
    """30 nodes beat every 6 s (liveness.py), so a 10 s old heartbeat is still up; 20 s is down."""
    s = snap()
    nodes = s["state"]["nodes"]
    template = nodes["h2"]
    for i in range(4, 31):
        nodes[f"h{i}"] = {**template, "address": f"10.0.1.{i}", "raft_addr": f"10.0.1.{i}:7480", "heartbeat": 100.0}
    nodes["h2"] = {**template, "heartbeat": 90.0}
    nodes["h3"] = {**nodes["h3"], "heartbeat": 80.0}
    by = {n["name"]: n for n in build_status(node="h1", cluster="c", snap=s, now=100.0, heartbeat_interval=2.0,
                                             voters=3)["nodes"]}
    assert len(by) == 30 and by["h2"]["state"] == "up" and by["h3"]["state"] == "down"
