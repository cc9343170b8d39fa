"""Three RaftNodes in one process on loopback: snapshots (log compaction) with our state, a
member that was down through a compaction catching up from the snapshot, restart from a
snapshot, and the transport's socket options and pre-authentication limits."""

import os
import socket
import stat
import struct
import time

import pytest

from cantainer_agent import ratelog
from cantainer_agent.consensus import disk_storage, save_members
from cantainer_agent.consensus.pysyncobj import SyncTuning, transport
from tests.agent.raftkit import raft_node
from tests.ports import free_ports


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Trio:
    def __init__(self, root):
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        self.dirs = [str(root / f"n{i}") for i in range(3)]
        self.nodes = [None, None, None]
        self.config = {}  # RaftConfig fields every node starts with
        self.journals = {}  # data dir -> the journal spec its node got through the storage seam
        for d, a in zip(self.dirs, self.addrs, strict=True):
            os.makedirs(d)
            save_members(d, "c", a, self.addrs)

    def start(self, i):
        node = raft_node(self.dirs[i], self.addrs[i], self.addrs, storage=self._storage, **self.config)
        node.start()
        self.nodes[i] = node
        return node

    def _storage(self, data_dir):
        self.journals[data_dir] = disk_storage(data_dir)
        return self.journals[data_dir]

    def stop(self, i):
        if self.nodes[i] is not None:
            self.nodes[i].stop()
            self.nodes[i] = None

    def stop_abruptly(self, i):
        """Stop without handing leadership over: its sockets close, as when its process dies."""
        if self.nodes[i] is not None:
            self.nodes[i].stop(handover_timeout=0)
            self.nodes[i] = None

    def leader(self, among=None):
        def find():
            for node in (among or [n for n in self.nodes if n is not None]):
                if node.snapshot()["role"] == "leader":
                    return node
            return None
        return wait(find, 10, "a leader")

    def close(self):
        for i in range(3):
            self.stop(i)


@pytest.fixture
def trio(tmp_path):
    t = Trio(tmp_path)
    yield t
    t.close()


def networks(node):
    return sorted(node.snapshot()["state"]["networks"])


def create_networks(node, start, count):
    for k in range(start, start + count):
        node.apply("create_network", {"cidr": f"10.{k}.0.0/24", "ts": float(k)}, timeout=5)


def journal_of(trio, node):
    return trio.journals[node.data_dir].journal


def cut_off(trio, old):
    """Partition *old* from the other nodes (it sends nothing, and nobody sends to it); returns the
    others and a function that heals the partition."""
    others = [n for n in trio.nodes if n is not old]
    transports = {n: n._sync._SyncObj__transport for n in trio.nodes}
    real_sends = {n: t.send for n, t in transports.items()}
    transports[old].send = lambda node, msg: None
    for n in others:
        transports[n].send = lambda node, msg, real=real_sends[n]: None if node.id == old.self_addr else real(node, msg)

    def heal() -> None:
        for n, t in transports.items():
            t.send = real_sends[n]

    return others, heal


def test_member_down_through_compaction_catches_up_from_snapshot(trio):
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    create_networks(leader, 1, 10)
    down = next(i for i, n in enumerate(trio.nodes) if n is not leader)
    wait(lambda: len(networks(trio.nodes[down])) == 10, 5, "replication to the member about to go down")
    trio.stop(down)
    create_networks(leader, 11, 10)
    live = [n for n in trio.nodes if n is not None]
    for node in live:
        node.compact_log()
    wait(lambda: all(journal_of(trio, n)[0][1] > 20 for n in live), 10, "log compaction on the live members")
    assert all(os.path.exists(os.path.join(n.data_dir, "raft.dump")) for n in live)
    # the snapshot holds the whole state (container environments too): owner-only, like the journal
    assert all(stat.S_IMODE(os.stat(os.path.join(n.data_dir, "raft.dump")).st_mode) == 0o600 for n in live)
    create_networks(leader, 21, 3)

    back = trio.start(down)
    wait(lambda: networks(back) == networks(leader) and len(networks(back)) == 23, 15, "catch-up from the snapshot")
    j = journal_of(trio, back)
    assert j[0][1] > 20  # its log now starts at the snapshot, not at entry 1
    assert os.path.exists(os.path.join(back.data_dir, "raft.dump"))
    assert stat.S_IMODE(os.stat(os.path.join(back.data_dir, "raft.dump")).st_mode) == 0o600  # received, not made
    assert back.snapshot()["state"]["networks"] == leader.snapshot()["state"]["networks"]

    # and it survives its own restart from that snapshot + journal
    trio.stop(down)
    again = trio.start(down)
    wait(lambda: len(networks(again)) == 23, 10, "restart from the installed snapshot")


def test_restart_after_compaction_keeps_state(trio):
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    create_networks(leader, 1, 5)
    for node in trio.nodes:
        wait(lambda node=node: len(networks(node)) == 5, 5, "replication")
        node.compact_log()
    wait(lambda: all(journal_of(trio, n)[0][1] > 1 for n in trio.nodes), 10, "compaction")
    create_networks(leader, 6, 2)  # entries after the snapshot, in the journal only
    wait(lambda: all(len(networks(n)) == 7 for n in trio.nodes), 5, "replication")
    before = trio.nodes[0].snapshot()["state"]["networks"]
    trio.close()
    for i in range(3):
        trio.start(i)
    wait(lambda: all(n.snapshot()["state"]["networks"] == before for n in trio.nodes), 10, "state after restart")
    trio.leader().apply("create_network", {"cidr": "10.99.0.0/24", "ts": 1.0})
    # Reading sockets before the timeout checks starts only once the dump file is loaded.
    assert all(n._sync._settled for n in trio.nodes)


def test_raft_sockets_are_tuned(trio):
    for i in range(3):
        trio.start(i)
    trio.leader()
    pid = os.getpid()
    seen = 0
    for fd_name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(fd_name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.family != socket.AF_INET or s.type != socket.SOCK_STREAM:
                continue
            try:
                peer = s.getpeername()
            except OSError:
                continue
            local = s.getsockname()
            if f"127.0.0.1:{local[1]}" not in trio.addrs and f"127.0.0.1:{peer[1]}" not in trio.addrs:
                continue
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == transport.USER_TIMEOUT_MS
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == transport.KEEPALIVE_IDLE_S
            seen += 1
        finally:
            s.close()
    assert seen >= 6  # 3 links, both ends (outgoing and accepted) tuned


def test_oversized_and_idle_unauthenticated_connections_are_dropped(trio, monkeypatch, caplog):
    monkeypatch.setattr(transport, "PREAUTH_TIMEOUT", 30.0)
    monkeypatch.setattr(ratelog, "SUMMARY_INTERVAL", 0.2)  # drops after the first are summarised
    node = trio.start(0)
    host, port = trio.addrs[0].rsplit(":", 1)
    # a frame announcing 1 GiB, then data: dropped once 64 KiB are buffered, nothing decoded
    big = socket.create_connection((host, int(port)), timeout=5)
    big.sendall(struct.pack("i", 1 << 30))
    closed = False
    try:
        for _ in range(200):
            big.sendall(b"\0" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    if not closed:
        big.settimeout(5)
        try:
            closed = big.recv(10) == b""
        except ConnectionResetError:
            closed = True
    big.close()
    assert closed
    # a connection that never authenticates is closed by the server's pre-authentication deadline
    # (not by our own timeout, which is far longer and would raise)
    caplog.set_level("WARNING", logger="cantainer_agent.consensus.pysyncobj.transport")
    monkeypatch.setattr(transport, "PREAUTH_TIMEOUT", 0.5)
    idle = socket.create_connection((host, int(port)), timeout=5)
    idle.settimeout(30)
    try:
        assert idle.recv(10) == b""
    except ConnectionResetError:
        pass
    idle.close()
    deadline = time.monotonic() + 10
    while not any("no authentication within" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    assert node.snapshot()["role"] in ("follower", "candidate", "leader")  # still serving


def test_nothing_is_acknowledged_or_committed_before_it_is_on_disk(trio, monkeypatch):
    """The durability contract, checked on every message while writes run concurrently through
    all members and the leader is stopped and restarted: a follower's acknowledgement and a vote
    leave only with a synced journal (and a vote with the term file already holding it), and a
    leader publishes a commit index only over entries on its disk."""
    import json
    import threading

    from pysyncobj.transport import TCPTransport

    from cantainer_agent.consensus.pysyncobj.journal import DurableJournal

    violations, checked = [], {"ack": 0, "vote": 0, "commit": 0}
    original_send = TCPTransport.send

    def checked_send(self, node, message):
        kind = message.get("type") if isinstance(message, dict) else None
        journal = getattr(getattr(self, "_journal", None), "journal", None)
        if kind in ("next_node_idx", "response_vote") and journal is not None:
            checked["ack" if kind == "next_node_idx" else "vote"] += 1
            if journal.dirty:
                violations.append(f"{kind} sent with unsynced entries")
            if kind == "response_vote":
                with open(journal.meta_path) as f:
                    meta = json.load(f)
                if meta["term"] < message["term"] or meta["voted_for"] is None:
                    violations.append(f"vote for term {message['term']} sent before it was persisted: {meta}")
        return original_send(self, node, message)

    original_commit = DurableJournal.setRaftCommitIndex

    def checked_commit(self, index):
        original_commit(self, index)
        checked["commit"] += 1
        view_last = self[-1][1] if len(self) else 0
        if min(index, view_last) > self._durable_idx:
            violations.append(f"commit index {index} published over unsynced entries (durable {self._durable_idx})")

    monkeypatch.setattr(TCPTransport, "send", checked_send)
    monkeypatch.setattr(DurableJournal, "setRaftCommitIndex", checked_commit)
    for i in range(3):
        trio.start(i)
    trio.leader()
    stop = threading.Event()
    done = []

    def writer(w):
        k = 0
        while not stop.is_set():
            node = trio.nodes[(w + k) % 3]
            k += 1
            if node is None:
                continue
            try:
                node.apply("create_network", {"cidr": f"10.{w}.{k % 250}.0/24", "ts": 1.0}, timeout=2)
                done.append(1)
            except Exception:  # noqa: BLE001 - leader changes, stopped node
                time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(1, 4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        victim = trio.nodes.index(trio.leader())
        trio.stop(victim)  # forces an election: votes under load
        time.sleep(1.0)
        trio.start(victim)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not violations, violations[:5]
    assert len(done) > 50 and checked["ack"] > 50 and checked["vote"] >= 1 and checked["commit"] > 50, (
        len(done),
        checked,
    )


def test_graceful_stop_hands_leadership_over(trio):
    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    create_networks(leader, 1, 3)
    term = leader.snapshot()["term"]
    idx = trio.nodes.index(leader)
    trio.stop(idx)  # RaftNode.stop(): hand over first
    rest = [n for n in trio.nodes if n is not None]
    new = trio.leader(rest)
    assert new.snapshot()["term"] == term + 1  # one election, started by TimeoutNow, no failed rounds
    create_networks(new, 4, 1)
    trio.start(idx)
    wait(lambda: len(networks(trio.nodes[idx])) == 4, 10, "restarted member catching up")


def test_member_with_a_conflicting_tail_catches_up_when_far_behind(trio, caplog):
    """A leader that appended entries it never got replicated, then lost leadership, must take the
    new leader's log once it is a follower again, however far behind it is.

    PySyncObj pipelines: a leader sends a lagging follower several append-entries messages per
    round (one per appendEntriesBatchSizeBytes). The follower rejects the first (its last entry
    conflicts: "try from there") and every later one ("no such entry: try from my end"); the
    leader takes the *last* rejection, so it never walked back past the conflict — a livelock
    seen on the 30-host lab (three members stuck 1500 entries behind, for good)."""
    import logging

    # a few entries per message, as 64 KiB is for a real backlog
    trio.config = {"tuning": SyncTuning(extra=(("appendEntriesBatchSizeBytes", 256),))}
    caplog.set_level(logging.CRITICAL, logger="pysyncobj")
    for i in range(3):
        trio.start(i)
    old = trio.leader()
    create_networks(old, 1, 3)
    others, heal = cut_off(trio, old)
    for k in (4, 5):  # appended to the old leader's log only: they conflict with the next leader's
        old._write_store.apply("create_network", {"cidr": f"10.{k}.0.0/24", "ts": 1.0}, callback=lambda *_: None)
    new = trio.leader(among=others)
    create_networks(new, 6, 30)  # the majority moves far ahead meanwhile
    heal()
    expected = networks(new)
    assert len(expected) == 33 and "10.4.0.0/24" not in expected
    wait(lambda: networks(old) == expected, 15, "the old leader taking the new leader's log")
    assert not [r for r in caplog.records if "already-applied" in r.getMessage()]


def test_commands_queued_together_share_one_append_round(trio, monkeypatch):
    """PySyncObj (appendEntriesUseBatch=False) sent a full append-entries round to every member
    per command; AgentSyncObj sends one round after each batch of queued commands."""
    from pysyncobj import SyncObj

    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    rounds = []
    real_round = SyncObj._SyncObj__sendAppendEntries
    monkeypatch.setattr(SyncObj, "_SyncObj__sendAppendEntries",
                        lambda self: (rounds.append(1), real_round(self))[1])
    done = []
    for k in range(60):  # queued faster than the tick thread takes them
        leader._write_store.apply("create_network", {"cidr": f"10.{k}.0.0/24", "ts": 1.0},
                                  callback=lambda res, err: done.append(err))
    wait(lambda: len(done) == 60, 10, "the 60 commands to commit")
    assert done == [0] * 60  # FAIL_REASON.SUCCESS
    assert len(rounds) < 30, len(rounds)  # one per command (60+) without the batching
    assert len(networks(leader)) == 60


def test_the_commit_round_waits_for_the_queued_commands_one_round_carries_both(trio, monkeypatch):
    """PySyncObj's tick sent a round after applying committed entries (the commit index) and then
    another after appending the commands queued meanwhile; AgentSyncObj sends one round with both.
    Staged: the leader's tick thread is held right after it sent command A, until both followers
    have acknowledged A and command C is queued; the next tick commits A and appends C."""
    import threading

    from pysyncobj import SyncObj

    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    create_networks(leader, 1, 1)  # the leader's no-op and a first entry are committed
    sync = leader._sync
    index_a = sync._SyncObj__getCurrentLogIndex() + 1
    followers = [n for n in trio.nodes if n is not leader]
    acked = {n.self_addr: threading.Event() for n in followers}
    for node in followers:
        transport, addr = node._sync._SyncObj__transport, node.self_addr
        real_send = transport.send

        def send(peer, message, real_send=real_send, addr=addr):
            if message.get("type") == "next_node_idx" and message.get("success") \
                    and message["next_node_idx"] > index_a:
                acked[addr].set()
            return real_send(peer, message)

        transport.send = send
    held, go = threading.Event(), threading.Event()

    def hold_after_sending_a():  # a tick callback: PySyncObj has queued and sent the tick's commands
        if sync._SyncObj__getCurrentLogIndex() >= index_a and not go.is_set():
            held.set()
            go.wait(10)

    sync.addOnTickCallback(hold_after_sending_a)
    rounds = []  # (commit index, last log index) of every round the leader sends
    real_round = SyncObj._SyncObj__sendAppendEntries
    monkeypatch.setattr(SyncObj, "_SyncObj__sendAppendEntries", lambda self: (
        rounds.append((self.raftCommitIndex, self._SyncObj__getCurrentLogIndex())) if self is sync else None,
        real_round(self))[1])
    done = []
    store = leader._write_store
    store.apply("create_network", {"cidr": "10.50.0.0/24", "ts": 1.0}, callback=lambda res, err: done.append(err))
    try:
        wait(held.is_set, 10, "the leader's tick to send command A")
        wait(lambda: all(e.is_set() for e in acked.values()), 10, "both followers to acknowledge A")
        store.apply("create_network", {"cidr": "10.51.0.0/24", "ts": 1.0}, callback=lambda res, err: done.append(err))
    finally:
        go.set()
    wait(lambda: len(done) == 2, 10, "A and C to commit")
    sync.removeOnTickCallback(hold_after_sending_a)
    assert done == [0, 0]
    first_with_a = next(r for r in rounds if r[0] >= index_a)
    assert first_with_a[1] >= index_a + 1, rounds  # the round spreading A's commit carries C too
    wait(lambda: all(networks(n) == networks(leader) for n in followers), 10, "the followers to apply both")
    assert "10.51.0.0/24" in networks(leader)


def test_commands_queued_while_the_tick_is_busy_wake_it_once(trio):
    """Each queued command wrote a byte to the tick thread's wake-up pipe (a system call per write in
    the writer's thread); one byte per batch suffices, and the next command after the tick took the
    queue wakes it again. Staged: the tick thread is held while 20 commands queue up."""
    import threading

    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    sync = leader._sync
    notifier = sync._SyncObj__pipeNotifier
    real_notify, wakes = notifier.notify, []
    notifier.notify = lambda: (wakes.append(1), real_notify())[1]
    held, go, done = threading.Event(), threading.Event(), []
    stall = threading.Thread(target=leader.run_in_tick, args=(lambda: (held.set(), go.wait(10)),),
                             kwargs={"timeout": 15})
    stall.start()
    try:
        wait(held.is_set, 10, "the tick thread to be held")
        wakes.clear()
        for k in range(20):
            leader._write_store.apply("create_network", {"cidr": f"10.{k}.0.0/24", "ts": 1.0},
                                      callback=lambda res, err: done.append(err))
        assert len(wakes) == 1
    finally:
        go.set()
        stall.join(15)
    wait(lambda: len(done) == 20, 10, "the 20 commands to commit")
    assert done == [0] * 20
    wakes.clear()
    leader.apply("create_network", {"cidr": "10.99.0.0/24", "ts": 1.0}, timeout=5)  # after the tick took the queue
    assert len(wakes) >= 1 and len(networks(leader)) == 21


def test_standbys_get_bare_heartbeats_less_often_and_entries_at_once(trio, tmp_path):
    """A standby neither votes, nor counts for a commit, nor times anything out: the leader sends
    it a heartbeat carrying nothing new every STANDBY_HEARTBEAT (0.5 s) instead of every append
    period (0.1 s), and entries with their commit in one round."""
    from cantainer_agent.consensus.pysyncobj import syncobj

    for i in range(3):
        trio.start(i)
    leader = trio.leader()
    standby_dir = tmp_path / "standby"
    standby_dir.mkdir()
    standby_addr = f"127.0.0.1:{free_ports(1)[0]}"
    save_members(str(standby_dir), "c", standby_addr, trio.addrs, role="standby")
    standby = raft_node(standby_dir, standby_addr, trio.addrs)
    standby.start()
    try:
        wait(lambda: standby.snapshot()["leader"] == leader.self_addr, 10, "the standby to follow the leader")
        transport = leader._sync._SyncObj__transport
        sent: dict[str, int] = {}
        real = transport.send

        def counting(node, message, real=real):
            if isinstance(message, dict) and message.get("type") == "append_entries":
                sent[node.id] = sent.get(node.id, 0) + 1
            return real(node, message)

        transport.send = counting
        time.sleep(2.0)  # idle: heartbeats only
        transport.send = real
        voter = next(a for a in trio.addrs if a != leader.self_addr)
        heartbeats_to_standby = sum(v for k, v in sent.items() if k not in trio.addrs)
        assert sent.get(voter, 0) >= 2 * heartbeats_to_standby >= 2, sent
        assert syncobj.STANDBY_HEARTBEAT >= 4 * leader._sync._SyncObj__conf.appendEntriesPeriod
        create_networks(leader, 1, 3)  # entries and their commit reach the standby without waiting
        wait(lambda: networks(standby) == ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"], 10,
             "the standby applying the writes")
    finally:
        standby.stop()


def test_a_follower_receiving_a_snapshot_applies_nothing_of_its_own_uncommitted_tail(trio, caplog, monkeypatch):
    """A leader cut off appends commands it never commits; the majority moves on and compacts its
    log, so when the old leader returns it is sent a snapshot, in several messages. PySyncObj took
    the commit index of every such message as covering the follower's own log (no prevLogIdx
    checks it): the old leader applied its never-committed tail and answered its waiting writers
    "done" before the snapshot replaced its state — a write acknowledged that never happened."""
    import logging

    from cantainer_agent.cluster.state import ClusterState

    caplog.set_level(logging.CRITICAL, logger="pysyncobj")
    for i in range(3):
        trio.start(i)
    old = trio.leader()
    create_networks(old, 1, 3)
    others, heal = cut_off(trio, old)
    answers = []
    for k in (4, 5):  # appended to the cut-off leader's log only: never committed
        old._write_store.apply("create_network", {"cidr": f"10.{k}.0.0/24", "ts": 1.0},
                               callback=lambda res, err, k=k: answers.append((k, err)))
    applied = []  # every command the old leader's state machine applies from now on
    real_apply = ClusterState.apply_command

    def spy(self, command, args, session=None):
        if self is old._write_store.state:
            applied.append(args.get("cidr"))
        return real_apply(self, command, args, session)

    ClusterState.apply_command = spy
    # A large snapshot arrives over several polls, with ticks (which apply what is committed) between
    # its messages: staged by applying right after each message of the transfer.
    from pysyncobj import SyncObj

    real_receive = SyncObj._SyncObj__onMessageReceived

    def receive(self, node, message):
        real_receive(self, node, message)
        if self is old._sync and isinstance(message, dict) and "serialized" in message:
            self._SyncObj__applyLogEntries()

    monkeypatch.setattr(SyncObj, "_SyncObj__onMessageReceived", receive)
    try:
        new = trio.leader(among=others)
        create_networks(new, 6, 30)
        for node in others:
            node.compact_log()
        wait(lambda: all(journal_of(trio, n)[0][1] > 10 for n in others), 10, "log compaction on the majority")
        heal()
        expected = networks(new)
        wait(lambda: networks(old) == expected, 15, "the old leader taking the new leader's snapshot")
    finally:
        ClusterState.apply_command = real_apply
    assert "10.4.0.0/24" not in expected
    assert not [a for a in answers if a[1] == 0], answers  # 0: FAIL_REASON.SUCCESS
    assert "10.4.0.0/24" not in applied and "10.5.0.0/24" not in applied, applied
