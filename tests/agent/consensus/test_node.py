"""RaftNode on one loopback port in-process: replicated commands, journal replay, members file."""

import json
import os
import socket
import time

import pytest

from cantainer_agent.consensus import (
    CommandRejected,
    NotSubmitted,
    RaftError,
    load_members,
    members_path,
    save_members,
)
from tests.agent.raftkit import SECRET, heartbeat, raft_node, register


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_leader(node, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.snapshot()["role"] == "leader":
            return
        time.sleep(0.05)
    raise AssertionError("no leader")


def test_members_file_round_trip(tmp_path):
    m = save_members(str(tmp_path), "c", "10.0.0.1:7480", ["10.0.0.3:7480", "10.0.0.2:7480"])
    assert m.members == ("10.0.0.1:7480", "10.0.0.2:7480", "10.0.0.3:7480")
    assert load_members(str(tmp_path)) == m
    assert load_members(str(tmp_path)).partners == ["10.0.0.2:7480", "10.0.0.3:7480"]
    assert os.stat(members_path(str(tmp_path))).st_mode & 0o777 == 0o600
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_members_file_missing_or_corrupt(tmp_path):
    assert load_members(str(tmp_path)) is None
    with open(members_path(str(tmp_path)), "w") as f:
        f.write("{nope")
    with pytest.raises(RaftError, match="unreadable"):
        load_members(str(tmp_path))
    with open(members_path(str(tmp_path)), "w") as f:
        json.dump({"cluster": "c", "self": "a:1", "members": "a:1"}, f)
    with pytest.raises(RaftError, match="malformed"):
        load_members(str(tmp_path))


def test_single_node_commands_and_replay_after_restart(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    node = raft_node(tmp_path, addr)
    node.start()
    try:
        wait_leader(node)
        rec = register(node, "h1", ts=10.0)
        assert rec["joined_at"] == 10.0
        assert heartbeat(node, "h1", ts=20.0) is True
        assert heartbeat(node, "ghost", ts=20.0) is False
        # a rejected command comes back as an error and does not wedge the apply loop
        with pytest.raises(CommandRejected, match="already belongs"):
            node.apply("register_node", {"name": "h2", "address": "127.0.0.1", "raft_addr": addr, "join_addr": "x:1",
                                          "version": "v", "bundle": "b", "ts": 30.0}, timeout=3)
        assert heartbeat(node, "h1", ts=25.0) is True
        snap = node.snapshot()
        assert snap["state"]["nodes"]["h1"]["heartbeat"] == 25.0 and snap["members"] == [addr]
        assert snap["leader"] == addr and snap["term"] >= 1
        assert node.add_voter(addr) == "already"
    finally:
        node.stop()

    again = raft_node(tmp_path, addr)
    again.start()
    try:
        wait_leader(again)
        deadline = time.monotonic() + 5
        while again.snapshot()["state"]["nodes"].get("h1", {}).get("heartbeat") != 25.0:
            assert time.monotonic() < deadline, "journal not replayed"
            time.sleep(0.05)
    finally:
        again.stop()


def test_bind_failure_is_reported(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    addr = f"127.0.0.1:{blocker.getsockname()[1]}"
    try:
        node = raft_node(tmp_path, addr)
        with pytest.raises(RaftError, match="cannot bind the raft port"):
            node.start()
    finally:
        blocker.close()


def test_conf_is_tuned_and_needs_a_secret(tmp_path):
    from cantainer_agent.consensus import disk_storage
    from cantainer_agent.consensus.pysyncobj import JournalSpec, make_conf

    spec = disk_storage(str(tmp_path))
    conf = make_conf("10.0.0.1:7480", SECRET, spec, spec.dump_path)
    conf.validate()
    assert conf.password == SECRET and conf.bindAddress == "10.0.0.1:7480"  # never 0.0.0.0
    assert conf.appendEntriesUseBatch is False  # a sync write does not wait for the batch period
    # Elections survive a CPU-starved host (see make_conf); a lost leader is noticed within 1-2 s;
    # ten heartbeats per election timeout, as etcd.
    assert (conf.raftMinTimeout, conf.raftMaxTimeout, conf.appendEntriesPeriod) == (1.0, 2.0, 0.1)
    assert conf.raftMinTimeout >= 10 * conf.appendEntriesPeriod and conf.autoTickPeriod <= conf.raftMinTimeout / 4
    assert conf.leaderFallbackTimeout <= conf.raftMaxTimeout and conf.commandsWaitLeader is False
    assert isinstance(conf.journalFile, JournalSpec)
    standby = make_conf(None, SECRET, None, None)  # what a standby node gets: its log in memory
    assert standby.journalFile is None and standby.fullDumpFile is None
    for empty in (b"", None):
        with pytest.raises(RaftError, match="secret is mandatory"):
            make_conf("10.0.0.1:7480", empty, spec, spec.dump_path)


def test_write_without_a_reachable_leader_fails_fast_and_is_not_queued(tmp_path):
    addr, ghost = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    save_members(str(tmp_path), "c", addr, [addr, ghost])  # a partner that never comes: no majority
    node = raft_node(tmp_path, addr, [ghost], leader_wait=1.0)
    node.start()
    try:
        # refused before it reached any log (NotSubmitted: safe to retry), not left to time out
        with pytest.raises(NotSubmitted, match="cut off from the majority"):
            heartbeat(node, "h1", timeout=10)
        assert node.snapshot()["log_len"] == 1  # nothing was appended or queued for later
    finally:
        node.stop()


def test_a_local_view_reads_everything_once_then_only_changed_records(tmp_path):
    """controllers/view.LocalView through RaftNode.snapshot_since: after the first full copy each
    read patches the view with the changed records only, and the view equals a full snapshot."""
    from cantainer_agent.controllers.view import LocalView

    addr = f"127.0.0.1:{free_port()}"
    node = raft_node(tmp_path, addr)
    node.start()
    try:
        wait_leader(node)
        register(node, "h1")
        view = LocalView(lambda: node)
        first = view.read()
        assert first["changes"] is None and view.full_reads == 1 and first["ready"]
        node.apply("create_network", {"cidr": "10.5.0.0/24", "ts": 1.0})
        heartbeat(node, "h1", ts=7.0)
        second = view.read()
        assert second["changes"] == {("networks", "10.5.0.0/24"), ("nodes", "h1")}
        assert view.full_reads == 1 and view.delta_reads == 1
        node.apply("delete_network", {"cidr": "10.5.0.0/24"})
        third = view.read()
        assert third["changes"] == {("networks", "10.5.0.0/24")} and "10.5.0.0/24" not in view.state["networks"]
        assert view.state == node.snapshot()["state"] and view.state["nodes"]["h1"]["heartbeat"] == 7.0
        assert view.read()["changes"] == set()  # nothing new
    finally:
        node.stop()
