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


def task(name, host, ip, state="running", health=None, **extra):
    return {"name": name, "id": name.replace(".", ""), "host": host, "network": "10.0.0.0/24", "ip": ip,
            "mac": "m", "image": "app", "command": ["x"], "desired": "running", "created_at": 1.0,
            "service": "web", "service_id": "s", "slot": name.split(".")[1], "version": 1,
            **({"health": {"test": ["CMD", "x"]}} if health is not None else {}),
            "observed": {"state": state, **({"health": {"status": health, "since": 1.0, "streak": 0, "output": ""}}
                                            if health and health != "starting" else {})}, **extra}


def test_service_endpoints_and_published_ports_list_only_tasks_that_serve():
    from cantainer_agent.cluster.views import published_ports, service_endpoints

    publish = [{"host_port": 8080, "container_port": 80, "protocol": "tcp"}]
    tasks = [task("web.1", "h1", "10.0.0.1", publish=publish),
             task("web.2", "h2", "10.0.0.2", health="healthy", publish=publish),
             task("web.3", "h2", "10.0.0.3", health="starting", publish=publish),   # not yet healthy
             task("web.4", "h3", "10.0.0.4", publish=publish),                     # its host is down
             task("web.5", "h1", "10.0.0.5", state="exited", publish=publish),
             task("web.6.0123456789ab", "h1", "10.0.0.6", retire={"at": 1.0}, publish=publish),  # retiring
             task("web.7", "h2", "10.0.0.7", health="unhealthy")]
    state = {"services": {"web": {}, "idle": {}}, "containers": {t["name"]: t for t in tasks}}
    down = {"h3": 1.0}
    assert service_endpoints(state, down) == {
        "web": [{"task": "web.1", "ip": "10.0.0.1", "host": "h1"}, {"task": "web.2", "ip": "10.0.0.2", "host": "h2"}],
        "idle": []}
    assert published_ports(state, down) == {
        "h1": [{"service": "web", "task": "web.1", "ip": "10.0.0.1", **publish[0]}],
        "h2": [{"service": "web", "task": "web.2", "ip": "10.0.0.2", **publish[0]}]}
