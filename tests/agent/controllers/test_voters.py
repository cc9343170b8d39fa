"""dqlite-style roles (controllers/voters.py): the leader's plan, standbys (PySyncObj read-only nodes)
that follow the state and forward writes, and promotion of a standby when a voter stays away."""

import os
import threading
import time

import pytest

from cantainer_agent.consensus import load_members, save_members
from cantainer_agent.controllers.loop import ControllerLoop
from cantainer_agent.controllers.voters import VotersController, plan_change
from tests.agent.raftkit import SECRET, raft_node
from tests.ports import free_ports


def test_plan_change():
    voters = {"a", "b", "c"}
    assert plan_change(voters, "a", 3, {}, []) is None
    assert plan_change(voters, "a", 3, {"b": 30.0}, []) is None  # nobody to take over: keep the dead voter
    assert plan_change(voters, "a", 3, {"b": 5.0}, ["s2", "s1"], promote_after=10) is None
    assert plan_change(voters, "a", 3, {"b": 11.0, "c": 12.0}, ["s1"], promote_after=10) == ("remove", "b")
    assert plan_change({"a", "c"}, "a", 3, {}, ["s2", "s1"]) == ("add", "s1")
    assert plan_change(voters, "a", 5, {}, ["s1"]) == ("add", "s1")  # grow to the configured count
    assert plan_change(voters, "a", 3, {"a": 99.0}, ["s1"]) is None  # never removes itself
    assert plan_change(voters, "a", 3, {}, ["a"]) is None


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except Exception:  # noqa: BLE001 - raft restarting, leader changing
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def five(tmp_path):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(5)]
    voters, standbys = addrs[:3], addrs[3:]
    nodes, loops = {}, []

    def start(addr):
        d = tmp_path / addr.replace(":", "_")
        d.mkdir(exist_ok=True)
        if load_members(str(d)) is None:
            save_members(str(d), "c", addr, voters, role="voter" if addr in voters else "standby")
        known = load_members(str(d))
        node = raft_node(d, addr, known.partners)
        node.start()
        # the agent runs the voter policy beside each node, in its own control loop
        policy = VotersController(lambda: node, SECRET, voters=3, heartbeat_interval=2.0, promote_after=1.5)
        loop = ControllerLoop("voters", [policy], node.status, period=0.25, nice=False)
        loop.start()
        loops.append(loop)
        nodes[addr] = node
        return node

    for a in addrs:
        start(a)
    yield nodes, voters, standbys, start
    for loop in loops:
        loop.stop()
    for node in nodes.values():
        node.stop(handover_timeout=0)


def leader_of(nodes):
    for node in nodes.values():
        if not node._stopped and node.snapshot()["role"] == "leader":
            return node
    return None


def test_standbys_follow_forward_writes_and_replace_a_dead_voter(five):
    nodes, voters, standbys, start = five
    leader = wait(lambda: leader_of(nodes), 10, "a leader")
    for a in standbys:
        snap = nodes[a].snapshot()
        assert snap["role"] == "standby" and snap["members"] == sorted(voters)
        assert not os.path.exists(os.path.join(nodes[a].data_dir, "raft.journal"))  # in memory only
    # a standby forwards writes and holds the state
    nodes[standbys[0]].apply("create_network", {"cidr": "10.1.0.0/24", "ts": 1.0})
    for a in nodes:
        wait(lambda a=a: "10.1.0.0/24" in nodes[a].snapshot()["state"]["networks"], 5, f"replication to {a}")
    # every member heartbeats (the agent does this every heartbeat_interval)
    names = {a: f"h{i}" for i, a in enumerate(sorted(nodes))}
    for a, name in names.items():
        leader.apply("register_node", {"name": name, "address": "127.0.0.1", "raft_addr": a, "join_addr": "127.0.0.1:1",
                                       "version": "v", "bundle": "b", "ts": 1.0})
    stop = threading.Event()

    def heartbeats():
        ts = 2.0
        while not stop.wait(0.3):
            ts += 1
            for a, name in names.items():
                node = nodes[a]
                if node._stopped:
                    continue
                try:
                    node.apply("heartbeat", {"name": name, "ts": ts}, timeout=1)
                except Exception:  # noqa: BLE001
                    pass

    hb = threading.Thread(target=heartbeats)
    hb.start()
    try:
        dead = next(a for a in voters if nodes[a] is not leader)
        nodes[dead].stop(handover_timeout=0)  # a voter goes away for good
        promoted = wait(lambda: next((a for a in standbys if not nodes[a].standby), None), 15, "a promotion")
        leader = wait(lambda: leader_of(nodes), 10, "a leader")
        expected = sorted((set(voters) - {dead}) | {promoted})
        wait(lambda: leader.members() == expected, 10, "the new voter set on the leader")
        wait(lambda: nodes[promoted].snapshot()["role"] in ("follower", "leader"), 10, "the promoted node voting")
        assert load_members(nodes[promoted].data_dir).role == "voter"
        wait(lambda: os.path.exists(os.path.join(nodes[promoted].data_dir, "raft.journal")), 5, "a durable log")
        other = next(a for a in standbys if a != promoted)
        wait(lambda: nodes[other].snapshot()["members"] == expected, 10, "the other standby following the new voters")
        # the group still commits, and the promoted voter has the whole state
        leader.apply("create_network", {"cidr": "10.2.0.0/24", "ts": 2.0})
        wait(lambda: set(nodes[promoted].snapshot()["state"]["networks"]) == {"10.1.0.0/24", "10.2.0.0/24"}, 10,
             "the promoted voter's replica")
        # losing one more voter: the remaining two of three still commit
        third = next(a for a in expected if a not in (promoted,) and nodes[a] is not leader_of(nodes))
        nodes[third].stop(handover_timeout=0)
        leader = wait(lambda: leader_of(nodes), 10, "a leader")
        wait(lambda: leader.apply("create_network", {"cidr": "10.3.0.0/24", "ts": 3.0}, timeout=2) is not None, 10,
             "a write with one voter down")
    finally:
        stop.set()
        hb.join()


def test_standby_started_after_compaction_gets_the_snapshot(tmp_path):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(4)]
    voters, standby = addrs[:3], addrs[3]
    nodes = []
    try:
        for a in addrs:
            d = tmp_path / a.replace(":", "_")
            d.mkdir()
            save_members(str(d), "c", a, voters, role="voter" if a in voters else "standby")
            if a == standby:
                continue
            node = raft_node(d, a, [v for v in voters if v != a])
            node.start()
            nodes.append(node)
        leader = wait(lambda: leader_of({n.self_addr: n for n in nodes}), 10, "a leader")
        for k in range(5):
            leader.apply("create_network", {"cidr": f"10.{k}.0.0/24", "ts": 1.0})
        for n in nodes:
            wait(lambda n=n: len(n.snapshot()["state"]["networks"]) == 5, 5, "replication")
            n.compact_log()
        wait(lambda: all(n.snapshot()["log_len"] < 3 for n in nodes), 10, "compaction")
        d = tmp_path / standby.replace(":", "_")
        node = raft_node(d, standby, voters)
        node.start()
        nodes.append(node)
        wait(lambda: len(node.snapshot()["state"]["networks"]) == 5, 10, "the standby's replica from the snapshot")
        assert node.snapshot()["role"] == "standby"
        assert sorted(os.listdir(d)) == ["members.json"]  # a standby keeps nothing else on disk
    finally:
        for n in nodes:
            n.stop(handover_timeout=0)
