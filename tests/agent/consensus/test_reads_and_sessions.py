"""Linearizable reads (ReadIndex) and exactly-once writes on three RaftNodes in one process."""
from __future__ import annotations

import pytest

from cantainer_agent.consensus import NotLeader, RaftError
from cantainer_agent.consensus.writes import Session, replicate

from .test_cluster import Trio, wait


@pytest.fixture
def trio(tmp_path):
    t = Trio(tmp_path)
    for i in range(3):
        t.start(i)
    yield t
    t.close()


def register(node, name="h1"):
    node.apply("register_node", {"name": name, "address": "10.9.0.1", "raft_addr": "10.9.0.1:7480",
                                 "join_addr": "10.9.0.1:7481", "version": "v", "bundle": "b", "ts": 1.0})


def test_a_write_resent_with_its_session_takes_effect_once_whichever_node_gets_it(trio):
    leader = trio.leader()
    followers = [n for n in trio.nodes if n is not leader]
    register(leader)
    request = Session("cli:test").next()
    spec = {"name": "web", "id": "id1", "host": "h1", "network": "10.1.0.0/24", "image": "a", "command": ["x"]}
    first = followers[0].apply("create_container", {"spec": spec, "ts": 2.0}, session=request)
    # the same request again (its reply was lost), through another node, with another name and id
    spec2 = {**spec, "name": "web2", "id": "id2"}
    again = followers[1].apply("create_container", {"spec": spec2, "ts": 3.0}, session=request)
    assert again == first
    wait(lambda: all("web" in n.snapshot()["state"]["containers"] for n in trio.nodes), 5, "replication")
    for node in trio.nodes:
        assert list(node.snapshot()["state"]["containers"]) == ["web"]


def test_replicate_takes_one_sequence_number_per_command(trio):
    leader = trio.leader()
    session = Session("worker")
    replicate(leader, "create_network", {"cidr": "10.1.0.0/24", "ts": 1.0}, session)
    replicate(leader, "create_network", {"cidr": "10.2.0.0/24", "ts": 1.0}, session)
    clients = leader.snapshot()  # the session table is not part of snapshots handed to readers …
    assert "sessions" not in clients["state"]
    table = leader.read(lambda state: {c: sorted(r["done"]) for c, r in state.sessions.clients.items()})
    assert table == {"worker": [0, 1]}  # … but it is in the replicated state


def test_read_index_on_the_leader_covers_every_acknowledged_write(trio):
    leader = trio.leader()
    follower = next(n for n in trio.nodes if n is not leader)
    follower.apply("create_network", {"cidr": "10.5.0.0/24", "ts": 1.0})  # acknowledged through a follower
    index = leader.read_index()
    assert index >= follower.status()["commit_index"] and "10.5.0.0/24" in leader.snapshot()["state"]["networks"]
    transport = leader._sync._SyncObj__transport
    assert sum(1 for seq in transport.echoed.values() if seq > 0) >= 1  # followers echoed a round


def test_a_follower_reads_after_applying_the_leaders_index(trio):
    leader = trio.leader()
    follower = next(n for n in trio.nodes if n is not leader)
    leader.apply("create_network", {"cidr": "10.6.0.0/24", "ts": 1.0})
    follower.wait_applied(leader.read_index())
    assert "10.6.0.0/24" in follower.snapshot()["state"]["networks"]
    with pytest.raises(NotLeader):
        follower.read_index()


def test_a_leader_cut_off_from_the_majority_refuses_to_confirm_instead_of_answering_stale(trio):
    leader = trio.leader()
    others = [n for n in trio.nodes if n is not leader]
    transports = {n: n._sync._SyncObj__transport for n in trio.nodes}
    real = {n: t.send for n, t in transports.items()}
    transports[leader].send = lambda node, msg: None  # the leader's messages are lost …
    for n in others:  # … and nobody answers it
        transports[n].send = lambda node, msg, real=real[n]: None if node.id == leader.self_addr else real(node, msg)
    try:
        with pytest.raises(RaftError, match="could not confirm"):
            leader.read_index(timeout=0.5)
        # It still believes it leads (leaderFallbackTimeout has not passed): a local read would be
        # served, and stale once the majority moves on. ReadIndex refused it.
        assert leader.status()["role"] == "leader"
        new = trio.leader(among=others)
        new.apply("create_network", {"cidr": "10.7.0.0/24", "ts": 1.0})
        assert "10.7.0.0/24" in new.snapshot()["state"]["networks"]
    finally:
        for n, t in transports.items():
            t.send = real[n]
