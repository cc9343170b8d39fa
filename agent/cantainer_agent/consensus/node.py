"""RaftNode: one member of the raft group, with hashicorp/raft-like verbs.

``RaftNode(config, fsm, storage, transport)`` — the state machine factory, the durable storage and
the transport are passed in, so tests swap them without patching. Verbs:

* ``apply(command, args)`` replicate a command, return the state machine's value (or raise one of
  ``consensus.errors``); ``snapshot()`` raft status plus a consistent copy of the state;
* ``add_voter(addr)``, ``remove_server(addr)``, ``transfer_leadership()``, ``become_standby(voters)``
  — membership as plain verbs; *who* should vote is decided outside (controllers/voters.py);
* ``peer_contact()`` how long each voter has been unreachable from this leader.

Invariants (docs/design/raft.md): a node restarts with the member list it last saw (members.json),
never with its configured seeds; a standby (non-voting) node that sees itself added as a voter,
or a voter told it was removed, replaces its SyncObj in the owner thread; everything that reads
PySyncObj's structures runs inside the tick thread (:meth:`run_in_tick`).
"""
from __future__ import annotations

import functools
import logging
import pickle
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import pysyncobj as pso
from .errors import NotLeader, RaftError
from .members import load_members, remove_voter_files, save_members, voter_files

log = logging.getLogger(__name__)

LEADER_WAIT = 5.0  # seconds a write waits for a reachable leader before failing (> an election)
READ_WAIT = 3.0  # seconds a linearizable read waits for its confirmation and for the replica to catch up
OWNER_PERIOD = 1.0  # seconds between two looks for a role change to carry out (rare; promotion takes 10 s)


@dataclass(frozen=True)
class RaftConfig:
    cluster: str
    self_addr: str                     # "ip:port" this node's raft port binds to
    data_dir: str                      # members.json and (for a voter) the journal live here
    secret: bytes                      # the cluster secret: encrypts and authenticates raft traffic
    partners: tuple[str, ...] = ()     # the other voters this node starts with
    elect_early: bool = False          # call the first election once a majority is reachable (startup.py)
    tuning: pso.SyncTuning = field(default_factory=pso.SyncTuning)
    leader_wait: float = LEADER_WAIT
    key_file: str | None = None        # where the raft key derived from the secret is kept (raftkey.py)


def disk_storage(data_dir: str) -> pso.JournalSpec:
    """A voter's durable raft state: the fsync'd journal, the term/vote file and the snapshot."""
    return pso.JournalSpec(*voter_files(data_dir))


def memory_storage(_data_dir: str) -> None:
    """No durable state (tests; a standby always keeps its log in memory). A storage function may
    also return anything PySyncObj's ``journalFile`` takes (a path: its own FileJournal)."""
    return None


class RaftNode:
    """Owns one SyncObj at a time. Create and :meth:`start` it from a thread that outlives it
    (PySyncObj's tick thread exits when the thread that created the SyncObj exits).

    The role (voter or standby) comes from ``members.json``, which the caller writes before
    :meth:`start`. A role change replaces the SyncObj in the owner thread (``raft-owner``), which
    lives as long as the node; reads move to the new replica only once it has caught up."""

    def __init__(self, config: RaftConfig, fsm: Callable[[], Any],
                 storage: Callable[[str], Any] = disk_storage,
                 transport: Callable[..., Any] = pso.AgentTransport):
        self.config = config
        self.cluster, self.self_addr, self.data_dir = config.cluster, config.self_addr, config.data_dir
        self._fsm, self._storage, self._transport = fsm, storage, transport
        self._initial_partners = sorted(set(config.partners) - {self.self_addr})
        self.standby = False
        self.store = pso.StateStore(fsm())   # read side: the replica reads are served from
        self._write_store = self.store       # the consumer of the current SyncObj
        self._catch_up_index = 0
        self._sync: pso.AgentSyncObj | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._membership_lock = threading.Lock()
        self._saved_members: frozenset[str] = frozenset(self._initial_partners)
        self._stopped = False
        self._owner: threading.Thread | None = None
        self._owner_stop = threading.Event()
        self._lifecycle_lock = threading.Lock()
        self._restart_to: str | None = None
        self._voter_seen: dict[str, float] = {}  # leader: last time each voter was connected
        self._leader_seen = time.monotonic()     # last time this node knew a leader
        self._leader_known = threading.Event()   # set by the tick thread while a leader is known
        # Called (in the tick thread; must only signal) when the state's revision moves on.
        self.on_state_change: Callable[[], None] | None = None
        self._seen_revision = -1
        self._applied = threading.Condition()  # notified when the replica applied new entries
        self._applied_seen = -1

    # ------------------------------------------------------------ lifecycle

    def start(self, bind_timeout: float = 5.0) -> None:
        pso.install()
        try:
            known = load_members(self.data_dir)
        except RaftError:
            known = None
        self.standby = known is not None and known.role == "standby" and known.self_addr == self.self_addr
        self._sync = self._make_syncobj(self.standby, self._initial_partners, self._write_store, bind_timeout)
        if self.config.elect_early and not self.standby:
            self._sync.elect_early()
        self._owner = threading.Thread(target=self._owner_loop, name="raft-owner", daemon=True)
        self._owner.start()
        log.info("raft started on %s as %s with %s %s", self.self_addr, "standby" if self.standby else "voter",
                 "voters" if self.standby else "partners", self._initial_partners or "none")

    def _make_syncobj(self, standby: bool, partners: list[str], store: pso.StateStore,
                      bind_timeout: float = 5.0) -> pso.AgentSyncObj:
        journal = None if standby else self._storage(self.data_dir)
        conf = pso.make_conf(None if standby else self.self_addr, self.config.secret, journal,
                             getattr(journal, "dump_path", None), self.config.tuning, on_role=_log_role)
        try:
            sync = pso.AgentSyncObj(None if standby else self.self_addr, partners, conf, consumers=[store],
                                    transportClass=functools.partial(self._transport, journal=journal),
                                    key_file=self.config.key_file)
        except pso.JournalError as exc:
            raise RaftError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - PySyncObj raises bare exceptions on bad input
            raise RaftError(f"cannot start raft on {self.self_addr}: {exc}") from None
        bound = threading.Event()
        failure: list[BaseException] = []

        def waiter() -> None:
            try:
                sync.waitBinded()
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
            bound.set()

        if standby:
            bound.set()  # a read-only node binds nothing (and PySyncObj never signals it)
        else:
            threading.Thread(target=waiter, name="raft-bind-wait", daemon=True).start()
        if not bound.wait(bind_timeout) or failure:
            _destroy(sync)
            raise RaftError(f"cannot bind the raft port {self.self_addr} (address in use or not on this host)")
        sync.addOnTickCallback(functools.partial(self._on_tick, sync))
        return sync

    @property
    def leading(self) -> bool:
        """A racy look (any thread, no tick round trip): does this node believe it leads?"""
        sync = self._sync
        return sync is not None and not self._stopped and sync.is_leader()

    @property
    def running(self) -> bool:
        """False once stopped or when PySyncObj's tick thread died (the agent then exits)."""
        sync = self._sync
        return sync is not None and not self._stopped and sync.tick_thread_alive()

    def stop(self, handover_timeout: float = 2.0) -> None:
        """Stop; a leader first hands leadership to a caught-up follower (graceful stop, rolling
        upgrade), so the cluster does not wait for an election timeout to notice."""
        if self._stopped or self._sync is None:
            return
        self._owner_stop.set()
        if handover_timeout > 0 and not self.standby:
            try:
                self.transfer_leadership(handover_timeout)
            except RaftError as exc:
                log.warning("stopping without handing over leadership: %s", exc)
        with self._lifecycle_lock:  # waits for a role change in progress
            self._stopped = True
            _destroy(self._sync)
        # Only now: a SyncObj created by the owner thread stops ticking (without closing its journal
        # and sockets) as soon as that thread ends.
        if self._owner is not None and self._owner is not threading.current_thread():
            self._owner.join(10)

    # ----------------------------------------------------- tick-thread work

    def _on_tick(self, sync: pso.AgentSyncObj) -> None:
        """Runs inside PySyncObj's tick thread (must never raise or block long)."""
        if sync is not self._sync:
            return  # the SyncObj being replaced (role change): not ours to serve any more
        try:
            others = frozenset(sync.peer_ids())
            if self.standby and self.self_addr in others:
                if self._restart_to is None:  # the leader added us as a voter: become one
                    save_members(self.data_dir, self.cluster, self.self_addr, others, role="voter")
                    log.info("promoted to voter; restarting raft as a voter with %s", sorted(others))
                    self._restart_to = "voter"
            elif others != self._saved_members and self._restart_to is None:
                save_members(self.data_dir, self.cluster, self.self_addr, others,
                             role="standby" if self.standby else "voter")
                log.info("raft voters changed: %s", sorted(others if self.standby else others | {self.self_addr}))
                self._saved_members = others
        except Exception:  # noqa: BLE001 - the tick thread must survive; the next tick retries
            log.exception("cannot persist the member list")
        now = time.monotonic()
        if sync.leader_id() is not None:
            self._leader_seen = now
            if not self._leader_known.is_set():
                self._leader_known.set()
        elif self._leader_known.is_set():
            self._leader_known.clear()
        if sync.is_leader():
            connected = sync.connected_ids()
            for peer in sync.peer_ids():
                if peer in connected or peer not in self._voter_seen:
                    self._voter_seen[peer] = now
        elif self._voter_seen:
            self._voter_seen = {}
        if self.store is not self._write_store and sync.raftLastApplied >= self._catch_up_index:
            self.store = self._write_store  # the new replica has caught up: serve reads from it
        if sync.raftLastApplied != self._applied_seen:
            self._applied_seen = sync.raftLastApplied
            with self._applied:
                self._applied.notify_all()
        revision = self.store.state.revision
        if revision != self._seen_revision and self.on_state_change is not None:
            self._seen_revision = revision
            self.on_state_change()
        while True:
            try:
                fn, box, done = self._calls.get_nowait()
            except queue.Empty:
                break
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the calling thread
                box.append((False, exc))
            done.set()
        sync.send_read_round()  # one round for every read_index call just served

    def run_in_tick(self, fn: Callable[[], Any], timeout: float = 2.0) -> Any:
        """Run *fn* inside the tick thread and return its result."""
        if self._sync is None or self._stopped:
            raise RaftError("raft is not running")
        box: list = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        self._sync.wake()
        if not done.wait(timeout):
            raise RaftError("raft did not answer in time (tick thread stalled?)")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # --------------------------------------------------------------- reads

    def _status_in_tick(self) -> dict:
        s = self._sync
        fields = s.status_fields()
        others = s.peer_ids()
        now = time.monotonic()
        return {
            "self": self.self_addr,
            "role": "standby" if self.standby else pso.ROLE_NAMES.get(fields["state"], str(fields["state"])),
            "leader": s.leader_id(),
            "term": fields["term"],
            "commit_index": fields["commit_index"],
            "last_applied": fields["last_applied"],
            "log_len": fields["log_len"],
            "has_quorum": fields["has_quorum"],
            "members": sorted(others | (set() if self.standby else {self.self_addr})),
            "connected": sorted(s.connected_ids()),
            "ready": fields["ready"],
            "leaderless_for": now - self._leader_seen,
        }

    def _snapshot_in_tick(self) -> dict:
        status = self._status_in_tick()
        status["state"] = self.store.state.to_bytes()  # unpickled by the caller, outside the tick thread
        return status

    def _delta_in_tick(self, cursor: tuple[int, int] | None) -> dict:
        status = self._status_in_tick()
        state = self.store.state
        epoch, seq = getattr(state, "feed_epoch", None), getattr(state, "feed_seq", None)
        changed = None
        if cursor is not None and epoch is not None and cursor[0] == epoch:
            changed = state.changes_since(cursor[1])
        if changed is None:
            status["state"] = state.to_bytes()
        else:
            status["records"] = state.records_bytes(changed) if changed else None
        status["changes"], status["cursor"] = changed, (epoch, seq) if epoch is not None else None
        return status

    def snapshot_since(self, cursor: tuple[int, int] | None, timeout: float = 2.0) -> dict:
        """Raft status plus what changed in the replica since *cursor* (from an earlier answer):
        ``changes`` — the ``(section, key)`` of the changed records — and ``records``, a copy of
        them (None: deleted); or, when the replica cannot tell (first call, a replaced replica, a
        reader too far behind), ``changes`` None and the whole ``state``. ``cursor`` is the next
        call's argument (controllers/view.py keeps a full copy up to date this way)."""
        snap = self.run_in_tick(lambda: self._delta_in_tick(cursor), timeout)
        if snap["changes"] is None:
            snap["state"] = pickle.loads(snap["state"])
        else:
            snap["records"] = pickle.loads(snap["records"]) if snap["records"] is not None else {}
        return snap

    def status(self, timeout: float = 2.0) -> dict:
        """Raft status only (role, leader, term, indexes, members): no copy of the state."""
        return self.run_in_tick(self._status_in_tick, timeout)

    def snapshot(self, timeout: float = 2.0) -> dict:
        """Raft status plus a copy of the state, taken consistently in the tick thread."""
        snap = self.run_in_tick(self._snapshot_in_tick, timeout)
        snap["state"] = pickle.loads(snap["state"])  # our own bytes, from the state machine's to_bytes
        return snap

    def read(self, fn: Callable[[Any], Any], timeout: float = 2.0) -> Any:
        """``fn(state)`` on this node's replica, in the tick thread: *fn* must be quick and must
        return plain data it built (never a reference into the state)."""
        return self.run_in_tick(lambda: fn(self.store.state), timeout)

    def read_index(self, timeout: float = READ_WAIT) -> int:
        """On the leader: confirm leadership with a heartbeat round answered by a majority (round
        numbers sent after this call, echoed back), then wait until this replica has applied the
        commit index of the moment of the call; returns that index. A read of this replica is then
        linearizable. Raises :class:`NotLeader`, or :class:`RaftError` if it cannot confirm in time."""
        deadline = time.monotonic() + timeout
        index, round_, peers, transport = self.run_in_tick(self._sync.begin_read, timeout)
        needed = (len(peers) + 1) // 2 + 1  # a majority of the voters, this one included
        with transport.echo_arrived:
            while 1 + sum(transport.echoed.get(peer, 0) > round_ for peer in peers) < needed:
                left = deadline - time.monotonic()
                if left <= 0 or not transport.echo_arrived.wait(left):
                    raise RaftError("could not confirm the raft leadership with a majority in time "
                                    "(cut off from the majority, or the majority is down)")
        self.wait_applied(index, deadline - time.monotonic())
        return index

    def wait_for_leader(self, timeout: float) -> bool:
        """Block until this node knows a leader (as of its last tick), at most *timeout* seconds;
        True if it does. No call into the tick thread: any number of threads may wait at no cost
        to it (a founding `up` sends every joiner's request to the voters before they elect)."""
        return self._leader_known.wait(timeout)

    def wait_applied(self, index: int, timeout: float = READ_WAIT) -> None:
        """Until this node's replica has applied *index* (a read index from the leader)."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while True:
                sync = self._sync
                if sync is None or self._stopped:
                    raise RaftError("raft is not running")
                if self.store is not self._write_store:
                    raise RaftError("this node is changing its raft role; retry in a moment")
                if sync.raftLastApplied >= index:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RaftError(f"this node's replica did not catch up with the leader (index {index}) in time")
                self._applied.wait(min(left, 0.1))

    def members(self) -> list[str]:
        """The voters' raft addresses."""
        return self.run_in_tick(lambda: sorted(self._sync.peer_ids() | (set() if self.standby else {self.self_addr})))

    def peer_contact(self) -> dict[str, float]:
        """On the leader: seconds since each other voter was last connected (empty elsewhere)."""
        now = time.monotonic()
        return self.run_in_tick(lambda: {peer: now - seen for peer, seen in self._voter_seen.items()})

    # -------------------------------------------------------------- writes

    def apply(self, command: str, args: dict, timeout: float = 5.0, session: dict | None = None) -> Any:
        """Replicate ``command(**args)`` on the state machine; returns its value or raises
        (``NotSubmitted``: safe to retry; ``OutcomeUnknown``; ``CommandRejected``: refused). With a
        *session* ``{client, seq, ts}`` the command takes effect at most once, however often it is sent."""
        if self._stopped:
            raise RaftError("raft is not running")
        # both resolved at each attempt: they change when the raft object is replaced (role change)
        return pso.submit(lambda: None if self._stopped else self._sync, lambda: self._write_store, command, args,
                          timeout=timeout, leader_wait=self.config.leader_wait, who=self.self_addr,
                          session=session)

    def compact_log(self) -> None:
        """Snapshot the state and drop the log it covers now (PySyncObj also does it by itself)."""
        self.run_in_tick(self._sync.forceLogCompaction)

    # ---------------------------------------------------------- membership

    def _membership_view(self) -> tuple[list[str], bool, str | None]:
        return self.run_in_tick(lambda: (sorted(self._sync.peer_ids()), self._sync.is_leader(), self._sync.leader_id()))

    def add_voter(self, addr: str, timeout: float = 10.0) -> str:
        """Add *addr* as a voter (leader only, one change at a time). Returns ``"already"`` if it
        is a member, ``"added"`` once the change is committed — or, when growing a one-node
        cluster, once appended (it cannot commit before the new member runs). Raises
        :class:`NotLeader` or :class:`RaftError`."""
        deadline = time.monotonic() + timeout
        with self._membership_lock:
            others, is_leader, leader = self._membership_view()
            if addr == self.self_addr or addr in others:
                return "already"
            if not is_leader:
                raise NotLeader(leader)
            growing_single = not others
            pso.change_membership(self._sync, "add", addr, deadline=deadline,
                                          done_early=lambda: growing_single and addr in self.members())
            return "added"

    def remove_server(self, addr: str, timeout: float = 10.0) -> str:
        """Remove voter *addr* (leader only; waits for the commit). Returns "removed"/"absent"."""
        deadline = time.monotonic() + timeout
        with self._membership_lock:
            others, is_leader, leader = self._membership_view()
            if addr not in others:
                return "absent"
            if not is_leader:
                raise NotLeader(leader)
            pso.change_membership(self._sync, "remove", addr, deadline=deadline)
            return "removed"

    def transfer_leadership(self, timeout: float = 2.0) -> str | None:
        """If this node leads, ask the most caught-up connected voter to take over (raft
        TimeoutNow) and wait until it has; returns the new leader, or None if we did not lead."""
        deadline = time.monotonic() + timeout
        while True:
            leads, leader, anyone = self.run_in_tick(
                lambda: (self._sync.is_leader(), self._sync.leader_id(), bool(self._sync.connected_ids())))
            if not leads:
                return leader
            if not anyone:
                return None  # nobody to hand over to (last voter standing)
            box: list = []
            self.run_in_tick(lambda box=box: self._sync.request_transfer(lambda _r, err: box.append(err)))
            if box and pso.transfer_succeeded(box[0]):
                while time.monotonic() < deadline:
                    time.sleep(0.02)
                    leads, leader = self.run_in_tick(lambda: (self._sync.is_leader(), self._sync.leader_id()))
                    if not leads and leader not in (None, self.self_addr):
                        log.info("handed leadership over to %s", leader)
                        return leader
            if time.monotonic() >= deadline:
                raise RaftError("no follower took over the leadership in time (none caught up or connected)")
            time.sleep(0.05)  # denied: no connected follower is fully caught up yet

    def become_standby(self, voters: list[str]) -> None:
        """This voter was removed from the group (the voters are *voters*): continue as a standby."""
        save_members(self.data_dir, self.cluster, self.self_addr, voters, role="standby")
        self._restart_to = "standby"

    # ------------------------------------------------------------------ role changes

    def _owner_loop(self) -> None:
        """The owner thread: it creates replacement SyncObjs, so they tick as long as it lives."""
        while not self._owner_stop.wait(OWNER_PERIOD):
            if self._restart_to is None:
                continue
            try:
                with self._lifecycle_lock:
                    if not self._stopped:
                        self._restart_as(self._restart_to)
            except Exception:  # noqa: BLE001 - keep the owner thread alive; the next pass retries
                log.exception("raft: role change failed")

    def _restart_as(self, role: str) -> None:
        """Replace the SyncObj by one with *role* (runs in the owner thread)."""
        standby = role == "standby"
        known = load_members(self.data_dir)
        partners = [m for m in (known.members if known else ()) if m != self.self_addr]
        if not standby:
            remove_voter_files(self.data_dir)  # start the voter on a fresh log: the leader sends a snapshot
        store = pso.StateStore(self._fsm())
        new = self._make_syncobj(standby, partners, store)
        old = self._sync
        self._catch_up_index = old.raftLastApplied if old is not None else 0
        self._write_store, self.standby = store, standby
        self._saved_members = frozenset(partners)
        self._voter_seen = {}
        self._leader_seen = time.monotonic()
        self._sync = new
        self._restart_to = None
        if old is not None:
            old.destroy_synchronous()
        if standby:
            remove_voter_files(self.data_dir)  # not a voter any more: its log and vote are void
        log.info("raft restarted as %s with %s %s", role, "voters" if standby else "partners", partners)


def _log_role(old: int, new: int) -> None:
    # One line per role change: elections that flap (CPU starvation, a flaky link) show in the log.
    names = pso.ROLE_NAMES
    log.info("raft role: %s -> %s", names.get(old, old), names.get(new, new))


def _destroy(sync: pso.AgentSyncObj) -> None:
    try:
        sync.destroy_synchronous()
    except Exception:  # noqa: BLE001 - best effort while stopping
        log.exception("error while stopping raft")
