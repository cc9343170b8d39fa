"""The raft group: a PySyncObj SyncObj holding :class:`~cantainer_agent.state.ClusterState`.

Layout
------
* :class:`StateStore` is a ``SyncObjConsumer`` whose only attribute is ``state``; its ``@replicated``
  methods delegate to ``state.py``. Because it is a consumer handed to ``SyncObj(...)`` at
  construction, the state exists before the tick thread starts (a SyncObj *subclass* would have to
  assign its state after ``super().__init__`` returned, racing the tick thread that replays the
  journal / loads the snapshot). Snapshots pickle only ``StateStore.state``.
* :class:`RaftNode` is a plain wrapper: the SyncObj, locks, queues and the members file live here,
  never on anything PySyncObj pickles.
* Everything that reads PySyncObj internals (status, membership) runs *inside* the tick thread via
  :meth:`RaftNode.run_in_tick`, because those structures are mutated there without locks.

Restart and membership (what the PySyncObj 0.3.17 source does, verified by experiment)
-------------------------------------------------------------------------------------
* ``SyncObj(self, partners)`` uses *partners* as the initial configuration. Membership entries
  in the journal are re-applied only while replaying up to the persisted commit index, which
  is rewritten about once per second (``raft.term``, see journal.py). A member
  that dynamically joined others and restarts with its *original* partner list (``[]`` for the
  bootstrap node) can therefore start as a one-node cluster and elect itself leader before it
  learns about the other members — observed here: SIGKILL of the bootstrap leader < 1 s after an
  add, restarted with ``[]``: it became leader at a new term alone and committed entries without
  the other member.
* Hence every node persists the *current* member list (``members.json`` in data_dir, written
  atomically with fsync whenever ``otherNodes`` changes, checked on every tick) and restarts
  with exactly that list. Replayed "add" entries for members already in the list are no-ops in
  PySyncObj (``__doChangeCluster`` returns False), "rem" entries still apply.
* A joiner must be in the leader's configuration before it starts: PySyncObj drops incoming
  connections from addresses it does not know. A joiner starts with the member list it got
  from the leader (itself excluded); membership entries it later receives for itself are ignored.
* Adding the second member to a one-node cluster cannot commit until that member runs (it needs
  2 of 2), so for that case the add is considered done once appended; otherwise we wait for the
  commit callback. PySyncObj itself refuses (REQUEST_DENIED) a change while the previous one is
  uncommitted or before the leader's no-op is committed; :meth:`RaftNode.add_member` retries.
* Writes from a follower: a ``@replicated`` call on a follower is forwarded by PySyncObj to the
  leader (``_checkCommandsToApply`` sends ``apply_command``; the leader answers with the log index
  and the follower's callback fires once that entry is applied locally).
* No write is queued while no leader is reachable (``commandsWaitLeader=False``): a queued
  command outlives its caller's timeout and would be applied after a partition heals although
  the caller was told it failed. :meth:`RaftNode._call` waits up to ``LEADER_WAIT`` s for a
  reachable leader (elections take ~0.2 s), resubmits only on failures proving the command was
  never appended, then fails with "no raft leader reachable ... cut off from the majority".

Durability, detection, limits (issue 6; PySyncObj 0.3.17 as shipped has none of them)
-------------------------------------------------------------------------------------
* ``journal.py``: the raft log, term and vote are made durable before anything reflecting them
  leaves the node; the log format survives torn writes; compaction is crash-atomic and never
  drops entries before the snapshot holding them is fsynced. Hooked in through
  ``SyncObjConf.journalFile`` = :class:`~cantainer_agent.journal.JournalSpec` (see there).
* ``transport.py`` (``SyncObj(transportClass=...)``): syncs the log before acknowledgements and
  votes, detects dead peers in ~2 s (TCP_USER_TIMEOUT + keepalive on every raft socket), bounds
  unauthenticated connections, and stops the leader from re-sending acknowledged entries.
* Timeouts are the measured ones from DESIGN.md (:func:`make_conf`); a leader that has not heard
  from a majority for ``leaderFallbackTimeout`` = 2 s steps down.
* Snapshots: PySyncObj pickles ``StateStore.state`` (plain dicts, see state.py) into
  ``raft.dump``; a member that was down through a compaction gets the snapshot from the leader.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.syncobj import SyncObjException
from pysyncobj.config import FAIL_REASON

from .fsutil import atomic_write
from .journal import JournalError, JournalSpec, install_journal_hook
from .liveness import down_after
from .roles import PROMOTE_AFTER, STANDBY_FRESH, plan_change
from .transport import AgentTransport
from .state import ClusterState, StateError

log = logging.getLogger(__name__)

MEMBERS_FILE = "members.json"
JOURNAL_FILE = "raft.journal"
TERM_FILE = "raft.term"
DUMP_FILE = "raft.dump"

install_journal_hook()

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
ROLES = ("voter", "standby")
FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}
# Failures that prove the command was never appended to any log (safe to resubmit).
_NOT_APPENDED = frozenset({FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.QUEUE_FULL,
                           FAIL_REASON.DISCARDED})
LEADER_WAIT = 5.0  # seconds a write waits for a reachable leader before failing (> an election)
DEMOTE_PROBE_AFTER = 5.0  # a voter without a leader this long asks its peers whether it still votes


class RaftError(Exception):
    """The raft node could not start or answer."""


class NotLeader(RaftError):
    def __init__(self, leader: str | None):
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class CommandFailed(RaftError):
    """A replicated command did not commit (leader change, timeout, rejected by the state)."""


class OutcomeUnknown(CommandFailed):
    """The command was submitted but its fate is unknown (leader changed, no confirmation in time)."""


class CommandRejected(CommandFailed):
    """The command committed but the state machine refused it (the user's input is at fault)."""


# ------------------------------------------------------------------ members file


@dataclass(frozen=True)
class Members:
    cluster: str
    self_addr: str
    members: tuple[str, ...]  # the voters' raft addresses, sorted (self included when a voter)
    role: str = "voter"  # or "standby": a non-voting member (see roles.py)

    @property
    def partners(self) -> list[str]:
        return [m for m in self.members if m != self.self_addr]


def members_path(data_dir: str) -> str:
    return os.path.join(data_dir, MEMBERS_FILE)


def journal_path(data_dir: str) -> str:
    return os.path.join(data_dir, JOURNAL_FILE)


def save_members(data_dir: str, cluster: str, self_addr: str, members: list[str] | set[str] | tuple[str, ...],
                 role: str = "voter") -> Members:
    if role not in ROLES:
        raise ValueError(f"unknown raft role {role!r}")
    allm = tuple(sorted(set(members) | {self_addr} if role == "voter" else set(members) - {self_addr}))
    body = {"version": 1, "cluster": cluster, "self": self_addr, "role": role, "members": list(allm)}
    atomic_write(members_path(data_dir), (json.dumps(body, indent=1) + "\n").encode(), 0o600)
    return Members(cluster, self_addr, allm, role)


def load_members(data_dir: str) -> Members | None:
    path = members_path(data_dir)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RaftError(f"{path} is unreadable ({exc}); move it away to rejoin through the seeds") from None
    try:
        members = data["members"]
        if not (isinstance(members, list) and all(isinstance(m, str) for m in members)):
            raise TypeError("members")
        role = data.get("role", "voter")
        if role not in ROLES:
            raise TypeError("role")
        return Members(str(data["cluster"]), str(data["self"]), tuple(sorted(members)), role)
    except (KeyError, TypeError):
        raise RaftError(f"{path} is malformed; move it away to rejoin through the seeds") from None


# ------------------------------------------------------------------ state store


def _guarded(fn: Callable[..., Any], *args: Any) -> dict:
    """Run an apply function; never let an exception escape into PySyncObj's apply loop
    (it would retry the same entry forever and wedge the node)."""
    try:
        return {"ok": True, "value": fn(*args)}
    except StateError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - deterministic bug: same on every node
        log.exception("apply failed")
        return {"ok": False, "error": f"internal: {type(exc).__name__}: {exc}"}


class StateStore(SyncObjConsumer):
    """Replicated holder of the cluster state (only ``state`` is snapshotted)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ClusterState()

    # The ONE replicated method. PySyncObj numbers replicated methods by sorted name, and log
    # entries carry that number: adding or renaming a method would make an older log (or an
    # older node in a rolling upgrade) call the wrong function. Commands are therefore named by
    # string, and a node that does not know a command rejects it instead of misapplying it.
    @replicated
    def apply(self, command, args):
        return _guarded(self.state.apply_command, command, args)


class AgentSyncObj(SyncObj):
    """PySyncObj's SyncObj, reading what already arrived *before* judging timeouts.

    PySyncObj's tick checks the election deadline (follower) and the leader-fallback deadline
    (leader) first and polls its sockets last. After any stall of the tick thread longer than
    the election timeout — not scheduled on a starved CPU, a slow fdatasync, a long apply — the
    follower therefore started an election although the leader's heartbeats sat unread in its
    socket, and a leader stepped down although its followers' answers sat unread in its own:
    under load the cluster changed leaders every second or two, and writes failed with "no raft
    leader reachable" (seen in tests/reliability/test_load.py). A zero-timeout poll first makes
    the checks judge what the peers actually sent. It is the same as one more poll at the end
    of the previous tick — once a tick has got that far: before the transport is up and the
    dump file loaded, a message must not be handled ahead of them, so no early poll until then.
    """

    _settled = False  # a tick has got past transport start-up and loading the dump file
    _queueing = False  # inside _checkCommandsToApply
    _send_owed = False  # an append-entries round was asked for while queueing

    def _onTick(self, timeToWait=0.0):
        if self._settled:
            self._poller.poll(0)
        super()._onTick(timeToWait)
        if not self._settled:
            self._settled = self._SyncObj__transport.ready and not self._SyncObj__needLoadDumpFile

    # With appendEntriesUseBatch=False PySyncObj sends a full append-entries round to every member
    # after *each* command it appends: N commands queued in one tick cost N rounds of M messages
    # (each encrypted, answered and decrypted). On the 30-host lab the leader fell ~80 s behind
    # its queue on heartbeats alone. One round after the whole queue carries the same entries.
    def _checkCommandsToApply(self):
        self._queueing = True
        try:
            super()._checkCommandsToApply()
        finally:
            self._queueing = False
        if self._send_owed:
            self._send_owed = False
            SyncObj._SyncObj__sendAppendEntries(self)

    def _SyncObj__sendAppendEntries(self):  # what SyncObj's own calls resolve to
        if self._queueing:
            self._send_owed = True
            return
        SyncObj._SyncObj__sendAppendEntries(self)

    def wake(self) -> None:
        """Make the tick thread run now instead of at the end of its poll timeout."""
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            try:
                notifier.notify()
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already


# ------------------------------------------------------------------- raft node


def journal_spec(data_dir: str) -> JournalSpec:
    return JournalSpec(journal_path(data_dir), os.path.join(data_dir, TERM_FILE), os.path.join(data_dir, DUMP_FILE))


def make_conf(data_dir: str, bind_addr: str, secret: bytes, spec: JournalSpec | None = None,
              standby: bool = False) -> SyncObjConf:
    """The tuned configuration from DESIGN.md. A standby keeps its log in memory (roles.py).

    Election timeout 1-2 s (etcd's default is 1 s), leader fallback 2 s. DESIGN.md's measured
    0.15-0.3 s / 1 s fail over in ~0.2 s on a quiet machine, but on a loaded one (2 cores, load
    average 15-25: 200 concurrent `run`s while other labs run) every agent thread waits 100 ms
    and more for a CPU, so followers missed heartbeats and leaders their answers: the leader
    changed every second or two, and writes failed with "no raft leader reachable"
    (tests/reliability/test_load.py).

    Heartbeats every 100 ms (etcd's default, a tenth of the election timeout) and a 50 ms tick:
    the tick thread wakes at once on socket input, on commands (PySyncObj's pipe notifier) and
    on reads (:meth:`RaftNode.run_in_tick`), so the tick period only sets timer precision. At
    30 ms / 10 ms the heartbeats and idle ticks of 30 lab agents took most of this 2-core
    machine (leader 20-30 %, each standby 4-6 %).
    """
    if not secret:
        # Without a password PySyncObj unpickles whatever arrives on its port.
        raise RaftError("a cluster secret is mandatory for the raft port")
    return SyncObjConf(
        password=secret,
        appendEntriesUseBatch=False,
        raftMinTimeout=1.0,
        raftMaxTimeout=2.0,
        appendEntriesPeriod=0.1,
        autoTickPeriod=0.05,
        connectionRetryTime=0.5,
        leaderFallbackTimeout=2.0,
        dynamicMembershipChange=True,
        # Never queue a command while no leader is known: a queued command survives its caller's
        # timeout and would be applied later (after a partition heals) although the caller was
        # told it failed. RaftNode._call waits for a reachable leader and retries instead.
        commandsWaitLeader=False,
        journalFile=None if standby else (spec if spec is not None else journal_spec(data_dir)),
        tcp_keepalive=None,  # AgentTransport sets keepalive and TCP_USER_TIMEOUT on every socket
        fullDumpFile=None if standby else os.path.join(data_dir, DUMP_FILE),
        bindAddress=bind_addr,
        maxBindRetries=2,
        bindRetryTime=0.3,
        # Serialise snapshots in the tick thread: fork() in a multi-threaded process risks
        # deadlocks in the child, and our state is small.
        useFork=False,
        # One line per role change: elections that flap (CPU starvation, a flaky link) show in the log.
        onStateChanged=lambda old, new: log.info("raft role: %s -> %s", ROLE_NAMES.get(old, old),
                                                 ROLE_NAMES.get(new, new)),
    )


class RaftNode:
    """Owns one SyncObj. Create and :meth:`start` it from the main thread (PySyncObj's tick
    thread exits when the thread that created the SyncObj exits).

    The role (voter or standby, see roles.py) comes from ``members.json``, which the agent writes
    before starting raft. A changed role replaces the SyncObj: the owner thread (``raft-owner``,
    alive as long as the node, so the SyncObjs it creates keep ticking) builds the new one,
    swaps it in, then destroys the old; ``self.store`` (what reads see) moves to the new replica
    only once it has caught up with the old one."""

    def __init__(self, *, cluster: str, self_addr: str, partners: list[str], data_dir: str, secret: bytes,
                 voters: int = 3, promote_after: float = PROMOTE_AFTER, heartbeat_interval: float = 2.0):
        self.cluster = cluster
        self.heartbeat_interval = heartbeat_interval  # the configured one: standbys' liveness
        self.self_addr = self_addr
        self.data_dir = data_dir
        self._initial_partners = sorted(set(partners) - {self_addr})
        self._secret = secret
        self.max_voters = voters
        self.promote_after = promote_after
        self.standby = False
        self.store = StateStore()        # read side: the replica reads are served from
        self._write_store = self.store  # the consumer of the current SyncObj
        self._catch_up_index = 0
        self._sync: SyncObj | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._membership_lock = threading.Lock()
        self._saved_members: frozenset[str] = frozenset(self._initial_partners)
        self._stopped = False
        self._spec: JournalSpec | None = None
        self._owner: threading.Thread | None = None
        self._owner_stop = threading.Event()
        self._lifecycle_lock = threading.Lock()
        self._restart_to: str | None = None
        self._voter_seen: dict[str, float] = {}  # leader: last time each voter was connected
        self._leader_seen = time.monotonic()     # last time this node knew a leader
        self._hb_seen: dict[str, tuple[float, float]] = {}  # leader: node -> (heartbeat, when it moved)
        self._last_probe = 0.0
        self._removal_seen = False
        # Called (in the tick thread; must only signal) when the state's revision moves on.
        self.on_state_change: Callable[[], None] | None = None
        self._seen_revision = -1

    # ------------------------------------------------------------ lifecycle

    def start(self, bind_timeout: float = 5.0) -> None:
        try:
            known = load_members(self.data_dir)
        except RaftError:
            known = None
        self.standby = known is not None and known.role == "standby" and known.self_addr == self.self_addr
        self._sync = self._make_syncobj(self.standby, self._initial_partners, self._write_store, bind_timeout)
        self._owner = threading.Thread(target=self._owner_loop, name="raft-owner", daemon=True)
        self._owner.start()
        log.info("raft started on %s as %s with %s %s", self.self_addr, "standby" if self.standby else "voter",
                 "voters" if self.standby else "partners", self._initial_partners or "none")

    def _make_syncobj(self, standby: bool, partners: list[str], store: "StateStore",
                      bind_timeout: float = 5.0) -> SyncObj:
        spec = self._spec = journal_spec(self.data_dir)
        conf = make_conf(self.data_dir, self.self_addr, self._secret, spec, standby=standby)
        try:
            sync = AgentSyncObj(None if standby else self.self_addr, partners, conf, consumers=[store],
                           transportClass=functools.partial(AgentTransport, journal=spec))
        except JournalError as exc:
            raise RaftError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise RaftError(f"cannot start raft on {self.self_addr}: {exc}") from None
        bound = threading.Event()
        failure: list[BaseException] = []

        def waiter() -> None:
            try:
                sync.waitBinded()
            except BaseException as exc:  # noqa: BLE001
                failure.append(exc)
            bound.set()

        if standby:
            bound.set()  # a read-only node binds nothing (and PySyncObj never signals it)
        else:
            threading.Thread(target=waiter, name="raft-bind-wait", daemon=True).start()
        if not bound.wait(bind_timeout) or failure:
            try:
                sync.destroy_synchronous()
            except Exception:  # noqa: BLE001
                log.exception("error while stopping raft")
            raise RaftError(f"cannot bind the raft port {self.self_addr} (address in use or not on this host)")
        sync.addOnTickCallback(functools.partial(self._on_tick, sync))
        return sync

    def stop(self, handover_timeout: float = 2.0) -> None:
        """Stop; a leader first hands leadership to a caught-up follower (graceful stop, rolling
        upgrade), so the cluster does not wait for an election timeout to notice."""
        if self._stopped or self._sync is None:
            return
        self._owner_stop.set()
        if handover_timeout > 0 and not self.standby:
            try:
                self.hand_over_leadership(handover_timeout)
            except RaftError as exc:
                log.warning("stopping without handing over leadership: %s", exc)
        with self._lifecycle_lock:  # waits for a role change in progress
            self._stopped = True
            try:
                self._sync.destroy_synchronous()
            except Exception:  # noqa: BLE001
                log.exception("error while stopping raft")
        # Only now: a SyncObj created by the owner thread stops ticking (without closing its journal
        # and sockets) as soon as that thread ends.
        if self._owner is not None and self._owner is not threading.current_thread():
            self._owner.join(10)

    def hand_over_leadership(self, timeout: float = 2.0) -> str | None:
        """If this node leads, ask the most caught-up connected voter to take over (raft
        TimeoutNow) and wait until it has; returns the new leader, or None if we did not lead."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_in_tick(lambda: (self._sync._isLeader(), getattr(self._sync._getLeader(), "id", None),
                                              any(self._sync.isNodeConnected(n) for n in self._sync.otherNodes)))
            if not state[0]:
                return state[1]
            if not state[2]:
                return None  # nobody to hand over to (last voter standing)
            box: list = []
            self.run_in_tick(lambda: self._sync.transferLeadership(None, lambda _r, err: box.append(err)))
            if box and box[0] == FAIL_REASON.SUCCESS:
                while time.monotonic() < deadline:
                    time.sleep(0.02)
                    leader = self.run_in_tick(lambda: (self._sync._isLeader(),
                                                       getattr(self._sync._getLeader(), "id", None)))
                    if not leader[0] and leader[1] not in (None, self.self_addr):
                        log.info("handed leadership over to %s", leader[1])
                        return leader[1]
            if time.monotonic() >= deadline:
                raise RaftError("no follower took over the leadership in time (none caught up or connected)")
            time.sleep(0.05)  # denied: no connected follower is fully caught up yet

    # ----------------------------------------------------- tick-thread work

    def _on_tick(self, sync: SyncObj) -> None:
        """Runs inside PySyncObj's tick thread (must never raise or block long)."""
        if sync is not self._sync:
            return  # the SyncObj being replaced (role change): not ours to serve any more
        try:
            others = frozenset(n.id for n in sync.otherNodes)
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
        except Exception:  # noqa: BLE001
            log.exception("cannot persist the member list")
        now = time.monotonic()
        if sync._getLeader() is not None:
            self._leader_seen = now
        if sync._isLeader():
            for n in sync.otherNodes:
                if sync.isNodeConnected(n) or n.id not in self._voter_seen:
                    self._voter_seen[n.id] = now
        elif self._voter_seen:
            self._voter_seen = {}
        if self.store is not self._write_store and sync.raftLastApplied >= self._catch_up_index:
            self.store = self._write_store  # the new replica has caught up: serve reads from it
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
            except BaseException as exc:  # noqa: BLE001
                box.append((False, exc))
            done.set()

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

    def _snapshot_in_tick(self) -> dict:
        s = self._sync
        st = s.getStatus()
        leader = s._getLeader()
        others = s.otherNodes
        return {
            "self": self.self_addr,
            "role": "standby" if self.standby else ROLE_NAMES.get(st["state"], str(st["state"])),
            "leader": leader.id if leader is not None else None,
            "term": s.raftCurrentTerm,
            "commit_index": s.raftCommitIndex,
            "last_applied": s.raftLastApplied,
            "log_len": st["log_len"],
            "has_quorum": s.hasQuorum,
            "members": sorted({n.id for n in others} | (set() if self.standby else {self.self_addr})),
            "connected": sorted(n.id for n in others if s.isNodeConnected(n)),
            "ready": s.isReady(),
            "state": self.store.state.to_bytes(),  # unpickled by the caller, outside the tick thread
        }

    def snapshot(self, timeout: float = 2.0) -> dict:
        """Raft status plus a copy of the state, taken consistently in the tick thread."""
        snap = self.run_in_tick(self._snapshot_in_tick, timeout)
        snap["state"] = pickle.loads(snap["state"])  # our own bytes, from ClusterState.to_bytes
        return snap

    def members(self) -> list[str]:
        """The voters' raft addresses."""
        return self.run_in_tick(lambda: sorted({n.id for n in self._sync.otherNodes}
                                               | (set() if self.standby else {self.self_addr})))

    # -------------------------------------------------------------- writes

    def _leader_reachable(self) -> bool:
        """Racy read from the caller's thread (a tick round trip would cost up to one tick per
        write): is there a leader this node can hand a command to right now?"""
        s = self._sync
        if s is None or self._stopped:
            return False
        try:
            if s._isLeader():
                return s.hasQuorum
            leader = s._getLeader()
            return leader is not None and s.isNodeConnected(leader)
        except RuntimeError:  # a set changed size under us: ask again
            return False

    def _call(self, method: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """Replicate one command. While no leader is reachable (election, partition) the command
        is not submitted; we wait up to LEADER_WAIT seconds for one, then fail with a clear
        error. Rejections that prove the command was not appended are retried."""
        now = time.monotonic()
        deadline, leader_deadline = now + timeout, now + min(timeout, LEADER_WAIT)
        while True:
            if not self._leader_reachable():
                if time.monotonic() >= leader_deadline:
                    raise CommandFailed(f"no raft leader reachable from {self.self_addr}: this node is cut off "
                                        "from the majority of the cluster, or the majority is down")
                time.sleep(0.02)
                continue
            try:
                res = method(*args, sync=True, timeout=max(0.05, deadline - time.monotonic()))
                break
            except Exception as exc:  # SyncObjException carries a FAIL_REASON code or 'Timeout'
                code = getattr(exc, "errorCode", None)
                submitted = isinstance(exc, SyncObjException)  # else it failed before reaching PySyncObj
                if (code in _NOT_APPENDED or not submitted) and time.monotonic() < deadline:
                    time.sleep(0.02)  # (not submitted: e.g. the raft object is being replaced, roles.py)
                    continue
                if not submitted:
                    raise CommandFailed(f"command not submitted: {type(exc).__name__}: {exc}") from None
                if code == "Timeout":
                    raise OutcomeUnknown(f"command not confirmed within {timeout:g} s; it may still commit "
                                        "(leader lost or cluster overloaded)") from None
                if code in (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME):
                    raise OutcomeUnknown("the raft leader changed while the command was in flight; it may or may "
                                        "not have been applied") from None
                raise CommandFailed(f"command not committed: {FAIL_NAMES.get(code, code)}") from None
        if not isinstance(res, dict):
            raise CommandFailed(str(res))
        if not res.get("ok"):
            raise CommandRejected(str(res.get("error")))
        return res.get("value")

    def register_node(self, *, name: str, address: str, join_addr: str, version: str, bundle: str,
                      ts: float | None = None, timeout: float = 3.0) -> dict:
        return self.apply("register_node", {"name": name, "address": address, "raft_addr": self.self_addr,
                                            "join_addr": join_addr, "version": version, "bundle": bundle,
                                            "ts": time.time() if ts is None else ts}, timeout=timeout)

    def heartbeat(self, name: str, ts: float | None = None, timeout: float = 3.0, overlay: dict | None = None) -> bool:
        args = {"name": name, "ts": time.time() if ts is None else ts}
        if overlay is not None:
            args["overlay"] = overlay
        return self.apply("heartbeat", args, timeout=timeout)

    def remove_node(self, name: str, timeout: float = 3.0) -> bool:
        return self.apply("remove_node", {"name": name}, timeout=timeout)

    def apply(self, command: str, args: dict, timeout: float = 5.0) -> Any:
        """Replicate ``ClusterState.apply_<command>(**args)``; returns its result or raises."""
        # resolved at each attempt: the store changes when the raft object is replaced (roles.py)
        return self._call(lambda *a, **k: self._write_store.apply(*a, **k), command, args, timeout=timeout)

    def add_member(self, addr: str, timeout: float = 10.0) -> str:
        """Add *addr* to the raft configuration (leader only, one change at a time).

        Returns ``"already"`` if it is a member, ``"added"`` once the change is committed (or,
        when growing a one-node cluster, once it is appended — it cannot commit before the new
        member runs). Raises :class:`NotLeader` or :class:`RaftError`.
        """
        deadline = time.monotonic() + timeout
        with self._membership_lock:
            while True:
                info = self.run_in_tick(
                    lambda: (sorted(n.id for n in self._sync.otherNodes), self._sync._isLeader(),
                             getattr(self._sync._getLeader(), "id", None))
                )
                others, is_leader, leader = info
                if addr == self.self_addr or addr in others:
                    return "already"
                if not is_leader:
                    raise NotLeader(leader)
                growing_single = not others
                box: list = []
                done = threading.Event()

                def cb(_res: Any, err: int) -> None:
                    box.append(err)
                    done.set()

                self._sync.addNodeToCluster(addr, callback=cb)
                err = None
                while time.monotonic() < deadline:
                    if done.wait(0.02):
                        err = box[0]
                        break
                    if growing_single and addr in self.members():
                        return "added"
                if err == FAIL_REASON.SUCCESS:
                    return "added"
                if err is None:
                    raise RaftError(f"adding {addr} did not commit within {timeout:.0f} s")
                if err in (FAIL_REASON.REQUEST_DENIED, FAIL_REASON.QUEUE_FULL) and time.monotonic() < deadline:
                    time.sleep(0.05)  # previous change or the leader's no-op not committed yet
                    continue
                if err in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED):
                    raise NotLeader(None)
                raise RaftError(f"adding {addr} failed: {FAIL_NAMES.get(err, err)}")

    def remove_member(self, addr: str, timeout: float = 10.0) -> str:
        """Remove voter *addr* (leader only; waits for the commit). Returns "removed"/"absent"."""
        deadline = time.monotonic() + timeout
        with self._membership_lock:
            while True:
                others, is_leader, leader = self.run_in_tick(
                    lambda: (sorted(n.id for n in self._sync.otherNodes), self._sync._isLeader(),
                             getattr(self._sync._getLeader(), "id", None)))
                if addr not in others:
                    return "absent"
                if not is_leader:
                    raise NotLeader(leader)
                box: list = []
                done = threading.Event()
                self._sync.removeNodeFromCluster(addr, callback=lambda _r, err: (box.append(err), done.set()))
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    raise RaftError(f"removing {addr} did not commit within {timeout:.0f} s")
                err = box[0]
                if err == FAIL_REASON.SUCCESS:
                    return "removed"
                if err in (FAIL_REASON.REQUEST_DENIED, FAIL_REASON.QUEUE_FULL) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if err in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED):
                    raise NotLeader(None)
                raise RaftError(f"removing {addr} failed: {FAIL_NAMES.get(err, err)}")

    # ------------------------------------------------------------------ roles (see roles.py)

    def _owner_loop(self) -> None:
        """The owner thread: role changes of this node, and the leader's voter maintenance."""
        while not self._owner_stop.wait(0.25):
            try:
                if self._restart_to is not None:
                    with self._lifecycle_lock:
                        if not self._stopped:
                            self._restart_as(self._restart_to)
                    continue
                if self._stopped or self._sync is None:
                    continue
                is_leader = self._sync._isLeader()
                if is_leader:
                    self._maintain_voters()
                elif not self.standby and time.monotonic() - self._leader_seen > DEMOTE_PROBE_AFTER:
                    self._probe_membership()
            except RaftError as exc:
                log.info("roles: %s", exc)
            except Exception:  # noqa: BLE001 - keep the owner thread alive: it keeps the SyncObj ticking
                log.exception("roles: unexpected error")

    def _maintain_voters(self) -> None:
        now = time.monotonic()
        voters, seen, nodes = self.run_in_tick(lambda: (
            {n.id for n in self._sync.otherNodes} | {self.self_addr}, dict(self._voter_seen),
            {name: (rec["raft_addr"], rec["heartbeat"]) for name, rec in self.store.state.nodes.items()}))
        healthy = []
        # Fit to vote: a standby whose heartbeat moved within STANDBY_FRESH, or within the time after
        # which status calls it down where heartbeats are slower (large clusters, liveness.py).
        fresh = max(STANDBY_FRESH, down_after(self.heartbeat_interval, len(nodes)))
        for name, (raft_addr, heartbeat) in nodes.items():
            before = self._hb_seen.get(name)
            if before is None or before[0] != heartbeat:  # the first sight proves nothing: stale
                self._hb_seen[name] = (heartbeat, now if before is not None else float("-inf"))
            if raft_addr not in voters and now - self._hb_seen[name][1] < fresh:
                healthy.append(raft_addr)
        unreachable = {v: now - t for v, t in seen.items()}
        change = plan_change(voters, self.self_addr, self.max_voters, unreachable, healthy, self.promote_after)
        if change is None:
            return
        kind, addr = change
        if kind == "remove":
            log.warning("roles: voter %s unreachable for %.0f s and a healthy standby exists: removing it",
                        addr, unreachable.get(addr, 0))
            self.remove_member(addr)
        else:
            log.warning("roles: promoting standby %s to voter (%d of %d voters)", addr, len(voters) + 1,
                        self.max_voters)
            self.add_member(addr)

    def _probe_membership(self) -> None:
        """A voter without a leader for a while: has the group removed us? Ask the peers' join
        ports (signed ping); a member that has a leader and does not list us — twice in a row,
        DEMOTE_PROBE_AFTER apart, so a peer that has not yet seen our own addition cannot demote
        us — settles it."""
        if time.monotonic() - self._last_probe < DEMOTE_PROBE_AFTER:
            return
        self._last_probe = time.monotonic()
        from .join import request  # join.py imports this module

        join_addrs = [rec["join_addr"] for rec in self.store.state.nodes.values()
                      if rec.get("raft_addr") != self.self_addr and rec.get("join_addr")]
        for addr in join_addrs:
            try:
                body = request(addr, self._secret, "ping", {}, timeout=1.0)
            except Exception:  # noqa: BLE001 - unreachable peer
                continue
            result = body.get("result") if body.get("ok") else None
            if not isinstance(result, dict) or result.get("cluster") != self.cluster or not result.get("leader"):
                continue
            members = result.get("members")
            if isinstance(members, list) and members and self.self_addr not in members:
                if not self._removal_seen:
                    self._removal_seen = True  # confirm on the next probe
                    return
                log.warning("roles: %s says the voters are %s without us: becoming a standby", addr, members)
                save_members(self.data_dir, self.cluster, self.self_addr, members, role="standby")
                self._restart_to = "standby"
            self._removal_seen = False
            return
        self._removal_seen = False

    def _restart_as(self, role: str) -> None:
        """Replace the SyncObj by one with *role* (runs in the owner thread)."""
        standby = role == "standby"
        known = load_members(self.data_dir)
        partners = [m for m in (known.members if known else ()) if m != self.self_addr]
        if not standby:
            _remove_voter_files(self.data_dir)  # start the voter on a fresh log: the leader sends a snapshot
        store = StateStore()
        new = self._make_syncobj(standby, partners, store)
        old = self._sync
        self._catch_up_index = old.raftLastApplied if old is not None else 0
        self._write_store, self.standby = store, standby
        self._saved_members = frozenset(partners)
        self._voter_seen, self._hb_seen = {}, {}
        self._leader_seen = time.monotonic()
        self._removal_seen = False
        self._sync = new
        self._restart_to = None
        if old is not None:
            old.destroy_synchronous()
        if standby:
            _remove_voter_files(self.data_dir)  # not a voter any more: its log and vote are void
        log.info("raft restarted as %s with %s %s", role, "voters" if standby else "partners", partners)


def _remove_voter_files(data_dir: str) -> None:
    for name in (JOURNAL_FILE, TERM_FILE, DUMP_FILE):
        try:
            os.unlink(os.path.join(data_dir, name))
        except FileNotFoundError:
            pass
