"""Elections: PreVote, the fast start when the leader's connection closes, and CheckQuorum.

The rules are pure functions (election.py) tested directly; the mechanisms are tested on three
real RaftNodes on loopback. Nothing here times anything: a fast election is proven by making the
election timeout far longer than the test waits, so only the fast path can elect.
"""
import random

import pytest

from cantainer_agent.consensus.pysyncobj import election

from .test_cluster import Trio, create_networks, networks, wait


@pytest.fixture
def trio(tmp_path):
    t = Trio(tmp_path)
    yield t
    t.close()

SLOW = 600.0  # seconds: an election timeout no test here waits for


def tick(node, fn):
    return node.run_in_tick(lambda: fn(node._sync))


def slow_elections(node):
    """From now on, only the fast path (or a won pre-vote after a closed leader connection) can
    make *node* start an election: its timeout is ten minutes."""
    def slow(sync):
        conf = sync._SyncObj__conf
        conf.raftMinTimeout, conf.raftMaxTimeout, conf.connectionTimeout = SLOW, 2 * SLOW, 4 * SLOW
        sync._SyncObj__raftElectionDeadline = sync._SyncObj__raftElectionDeadline + SLOW
    tick(node, slow)


def stats(node):
    return tick(node, lambda s: dict(s.election_stats))


def term_and_leader(node):
    snap = node.status()
    return snap["term"], snap["leader"]


def cut(trio, victim, peers=None):
    """Drop every message between *victim* and *peers* (default: everyone); the connections stay
    up, as in a silent partition."""
    transports = {n: n._sync._SyncObj__transport for n in trio.nodes if n is not None}
    real = {n: t.send for n, t in transports.items()}
    peers = [n for n in transports if n is not victim] if peers is None else peers
    ids = {p.self_addr for p in peers}
    transports[victim].send = lambda node, msg, real=real[victim]: None if node.id in ids else real(node, msg)
    for n in peers:
        transports[n].send = lambda node, msg, real=real[n]: None if node.id == victim.self_addr else real(node, msg)

    def heal():
        for n, t in transports.items():
            t.send = real[n]
    return heal


# ---------------------------------------------------------------------------- the rules, pure


def test_a_pre_vote_is_granted_only_without_a_live_leader_to_an_up_to_date_log_at_a_later_term():
    base = dict(proposed_term=5, cand_last_term=4, cand_last_index=10, own_term=4, own_last_term=4,
                own_last_index=10, leader_alive=False, voter=True)
    assert election.grant_pre_vote(**base)
    assert not election.grant_pre_vote(**{**base, "leader_alive": True})  # never depose a live leader
    assert not election.grant_pre_vote(**{**base, "proposed_term": 4})    # not above our term
    assert not election.grant_pre_vote(**{**base, "cand_last_index": 9})  # its log is behind ours
    assert not election.grant_pre_vote(**{**base, "cand_last_term": 3, "cand_last_index": 99})
    assert election.grant_pre_vote(**{**base, "cand_last_term": 5, "cand_last_index": 1})  # later term wins
    assert not election.grant_pre_vote(**{**base, "voter": False})  # a standby has no say


def test_a_leader_is_alive_when_it_is_us_or_connected_and_heard_within_the_minimum_timeout():
    alive = dict(is_leader=False, leader_known=True, leader_connected=True, since_heard=0.2, election_min=1.0)
    assert election.leader_alive(**alive)
    assert election.leader_alive(**{**alive, "is_leader": True, "leader_known": False})
    assert not election.leader_alive(**{**alive, "leader_connected": False})  # its connection closed
    assert not election.leader_alive(**{**alive, "since_heard": 1.5})         # silent (frozen, cut off)
    assert not election.leader_alive(**{**alive, "leader_known": False})


def test_survivors_of_a_dead_leader_go_in_address_order_one_stagger_apart():
    rng = random.Random(1)
    voters = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1", "10.0.0.5:1"]
    lost = "10.0.0.2:1"
    delays = {v: election.fast_delay(v, [o for o in voters if o != v], lost, rng) for v in voters if v != lost}
    order = sorted(delays, key=delays.get)
    assert order == ["10.0.0.1:1", "10.0.0.3:1", "10.0.0.4:1", "10.0.0.5:1"]
    for earlier, later in zip(order, order[1:], strict=False):
        assert delays[later] - delays[earlier] >= election.STAGGER - election.JITTER
    assert election.pre_vote_won(2, 3) and not election.pre_vote_won(2, 4) and election.pre_vote_won(3, 5)


# --------------------------------------------------------------------- the mechanisms, live


def test_followers_elect_at_once_when_the_leaders_process_dies(trio):
    """The leader stops without handing over (its sockets close, as on SIGKILL). The followers'
    election timeout is ten minutes, so only the fast path can elect the new leader."""
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    create_networks(leader, 1, 2)
    term, _ = term_and_leader(leader)
    rest = [n for n in trio.nodes if n is not leader]
    for node in rest:
        slow_elections(node)
    won = {n: stats(n)["prevotes_won"] for n in rest}
    trio.stop_abruptly(trio.nodes.index(leader))
    new = trio.leader(among=rest)
    assert term_and_leader(new)[0] > term
    assert all(stats(n)["fast_starts"] == 1 for n in rest) and stats(new)["prevotes_won"] > won[new]
    create_networks(new, 3, 1)  # and the group commits again
    assert networks(new) == ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]


def test_a_closed_connection_to_a_live_leader_starts_no_election(trio):
    """A follower whose connection to the leader closes while the leader lives (a broken link
    between the two) asks for pre-votes at once, but the other follower still hears the leader and
    refuses: nobody's term moves, the leader stays."""
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    before = term_and_leader(leader)
    follower = next(n for n in trio.nodes if n is not leader)
    heal = cut(trio, follower, [leader])
    granted = sum(stats(n)["prevotes_granted"] for n in trio.nodes)  # in the first election

    def drop_leader_connection(sync):
        transport = sync._SyncObj__transport
        node = next(n for n in transport._connections if n.id == leader.self_addr)
        transport._connections[node].disconnect()
    won = stats(follower)["prevotes_won"]
    tick(follower, drop_leader_connection)
    assert stats(follower)["fast_starts"] == 1
    wait(lambda: sum(stats(n)["prevotes_refused"] for n in trio.nodes if n is not follower) >= 1, 10,
         "the follower's pre-vote being refused")
    assert stats(follower)["prevote_rounds"] >= 1
    assert sum(stats(n)["prevotes_granted"] for n in trio.nodes) == granted
    heal()
    wait(lambda: leader.status()["connected"] == sorted(n.self_addr for n in trio.nodes if n is not leader), 10,
         "the follower reconnecting")
    assert stats(follower)["prevotes_won"] == won
    assert [term_and_leader(n) for n in trio.nodes] == [before] * 3


def test_a_partitioned_follower_returns_without_disrupting_the_leader(trio):
    """Cut off, a follower's election timeout fires again and again; with PreVote it never raises
    its term, so when it comes back the leader is undisturbed (without PreVote its higher term
    would force an election)."""
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    before = term_and_leader(leader)
    follower = next(n for n in trio.nodes if n is not leader)
    won = stats(follower)["prevotes_won"]
    heal = cut(trio, follower)
    wait(lambda: stats(follower)["prevote_rounds"] >= 2, 15, "two timed-out pre-vote rounds")
    heal()
    wait(lambda: term_and_leader(follower) == before, 10, "the follower following the same leader again")
    assert stats(follower)["prevotes_won"] == won
    assert [term_and_leader(n) for n in trio.nodes] == [before] * 3
    create_networks(leader, 1, 1)
    wait(lambda: networks(follower) == ["10.1.0.0/24"], 10, "the follower applying the leader's write")


def test_a_leader_cut_off_from_the_majority_steps_down_and_returns_as_a_follower(trio):
    """CheckQuorum (leaderFallbackTimeout): a leader that hears from no majority steps down; the
    majority elects a new leader; back, the old one follows it without an election."""
    for i in range(3):
        trio.start(i)
    old = trio.leader()
    rest = [n for n in trio.nodes if n is not old]
    won = stats(old)["prevotes_won"]  # its first election
    heal = cut(trio, old)
    wait(lambda: old.status()["role"] != "leader", 15, "the cut-off leader stepping down")
    new = trio.leader(among=rest)
    after = term_and_leader(new)
    heal()
    wait(lambda: term_and_leader(old) == after, 10, "the old leader following the new one")
    assert [term_and_leader(n) for n in trio.nodes] == [after] * 3
    assert stats(old)["prevotes_won"] == won  # it never raised its term while cut off


def test_an_idle_tick_sleeps_long_but_wakes_for_heartbeats_and_election_deadlines():
    from cantainer_agent.consensus.pysyncobj.syncobj import tick_wait

    tick, now = 0.25, 100.0
    # the leader: its next heartbeat round is due in 0.03 s
    assert tick_wait(tick, now, leader=True, voter=True, election_deadline=0.0, next_append=now + 0.03) == \
        pytest.approx(0.03)
    assert tick_wait(tick, now, leader=True, voter=True, election_deadline=0.0, next_append=now - 1) == 0.0
    # a follower: the fast start put its election deadline 0.01 s ahead; normally it is 1-2 s away
    assert tick_wait(tick, now, leader=False, voter=True, election_deadline=now + 0.01, next_append=0.0) == \
        pytest.approx(0.01)
    assert tick_wait(tick, now, leader=False, voter=True, election_deadline=now + 1.5, next_append=0.0) == tick
    # a deadline already past (no peer connected yet, so no election starts): no busy loop
    assert tick_wait(tick, now, leader=False, voter=True, election_deadline=now - 3, next_append=0.0) == tick
    # a standby never elects: the full tick
    assert tick_wait(tick, now, leader=False, voter=False, election_deadline=now, next_append=now) == tick


def test_election_deadlines_are_read_on_pysyncobjs_own_clock(trio, monkeypatch):
    """PySyncObj keeps its deadlines on CLOCK_MONOTONIC_RAW, which drifts from CLOCK_MONOTONIC by
    NTP's slewing (0.3 s after two hours on this VM): judged on the other clock, an election
    deadline would pass that much early — more on a host up for months."""
    import pysyncobj.monotonic

    from cantainer_agent.consensus.pysyncobj import syncobj as module

    assert module.raft_clock is pysyncobj.monotonic.monotonic
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    follower = next(n for n in trio.nodes if n is not leader)
    rounds = stats(follower)["prevote_rounds"]

    def elect_at(offset):
        def probe(sync):
            deadline = sync._SyncObj__raftElectionDeadline
            monkeypatch.setattr(module, "raft_clock", lambda: deadline + offset)
            try:
                sync._elect()
            finally:
                monkeypatch.setattr(module, "raft_clock", pysyncobj.monotonic.monotonic)
        tick(follower, probe)

    elect_at(-0.01)  # just before the deadline by PySyncObj's clock: nothing
    assert stats(follower)["prevote_rounds"] == rounds
    elect_at(+0.01)  # just after it: a pre-vote round (refused: the leader is alive)
    assert stats(follower)["prevote_rounds"] == rounds + 1
