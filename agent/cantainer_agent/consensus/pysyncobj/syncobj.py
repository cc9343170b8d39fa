"""PySyncObj's SyncObj as the raft node uses it: tuned, polled before judging timeouts, one
append round per batch, PreVote and a fast election when the leader's process dies (election.py),
and read through a small public surface instead of private names.

* :class:`StateStore` holds the state machine; its single ``@replicated`` method is the only one
  there will ever be (PySyncObj numbers replicated methods by sorted name: a second one would
  make old logs call the wrong function).
* :func:`submit` replicates one command and turns PySyncObj's failure codes into the
  consensus errors (not submitted / outcome unknown / failed / rejected).
* :func:`make_conf` is the tuned configuration; the timing rationale is in docs/design/raft.md.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass
from queue import Full as QueueFull
from typing import Any, Callable

from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as raft_clock  # CLOCK_MONOTONIC_RAW: PySyncObj's deadlines
from pysyncobj.syncobj import SyncObjException
from pysyncobj.transport import TransportNotReadyError

from ... import raftkey
from ...errors import StateError
from ..errors import CommandFailed, CommandRejected, NotLeader, NotSubmitted, OutcomeUnknown, RaftError
from . import election
from .fernet import Fernet
from .transport import START_RETRY

log = logging.getLogger(__name__)

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_FOLLOWER, _CANDIDATE, _LEADER = 0, 1, 2  # PySyncObj's _RAFT_STATE
STANDBY_HEARTBEAT = 0.5  # seconds between bare heartbeats to standbys (voters: every append period)
FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}
# Failures that prove the command was never appended to any log (safe to resubmit).
_NOT_APPENDED = frozenset({FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.QUEUE_FULL,
                           FAIL_REASON.DISCARDED})
_RETRY_CHANGE = frozenset({FAIL_REASON.REQUEST_DENIED, FAIL_REASON.QUEUE_FULL})
_LOST_LEAD = frozenset({FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED})


# ------------------------------------------------------------------ the state machine holder


def _guarded(fn: Callable[..., Any], *args: Any) -> dict:
    """Run an apply function; never let an exception escape into PySyncObj's apply loop
    (it would retry the same entry forever and wedge the node)."""
    try:
        return {"ok": True, "value": fn(*args)}
    except StateError as exc:
        return {"ok": False, "error": str(exc), "code": exc.code}
    except Exception as exc:  # noqa: BLE001 - deterministic bug: same on every node, reported, not applied
        log.exception("apply failed")
        return {"ok": False, "error": f"internal: {type(exc).__name__}: {exc}"}


class StateStore(SyncObjConsumer):
    """Replicated holder of a state machine (only ``state`` is snapshotted).

    The state machine is any picklable object with ``apply_command(command, args, session)``;
    commands are named by string so that a node that does not know one rejects it instead of
    misapplying it. (Adding the *session* parameter kept the method's name, hence its number.)
    """

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state

    @replicated
    def apply(self, command, args, session=None):
        return _guarded(self.state.apply_command, command, args, session)


# ------------------------------------------------------------------ SyncObj


class AgentSyncObj(SyncObj):
    """PySyncObj's SyncObj, reading what already arrived *before* judging timeouts, sending one
    append round per batch of queued commands, electing with PreVote (and at once when the
    leader's connection closes), and answering a few questions publicly.

    PySyncObj's tick checks the election and leader-fallback deadlines first and polls its
    sockets last: after any stall of the tick thread longer than the election timeout a follower
    started an election although the leader's heartbeats sat unread (leaders flapped under load).
    A zero-timeout poll first makes the checks judge what peers actually sent — but only once the
    transport is up and the dump file loaded, before which no message may be handled.

    A tick sends at most one append round: the one PySyncObj sends after applying committed
    entries (to spread the commit index) waits until the tick has appended the queued commands,
    so a single round carries both.
    """

    _settled = False  # a tick has got past transport start-up and loading the dump file
    _queueing = False  # inside _checkCommandsToApply
    _send_owed = False  # an append-entries round was asked for while queueing
    _deferring = False  # from the start of PySyncObj's tick until its commands are queued
    _wake_pending = False  # a wake-up byte is in the pipe and the tick has not taken the commands yet
    _read_round = False  # a read asked for a round this tick (all reads of a tick share it)
    _elect_early = False  # stand for election as soon as a majority is connected (elect_early)
    _standby_beat_due = 0.0  # when the standbys get their next bare heartbeat (raft_clock)
    _standby_commit = -1  # the commit index the standbys were last sent

    def __init__(self, selfNode, otherNodes, conf: SyncObjConf, *args, key_file: str | None = None, **kwargs):
        # Set before SyncObj.__init__, which may start the tick thread.
        if not conf.password:  # without a key PySyncObj unpickles whatever arrives on its port
            raise RaftError("a cluster secret is mandatory for the raft port")
        # PySyncObj's encryption (fernet.py), its key derived once per secret (raftkey.py), not per start
        self._fernet = Fernet(raftkey.load(conf.password, key_file))
        conf = copy.copy(conf)
        conf.password = None  # so PySyncObj does not derive it again; `encryptor` below gives ours
        self._prevote_term = 0        # the term the running pre-vote round asks for (0: none)
        self._prevote_grants: set[str] = set()
        self._election_cleared = False  # a pre-vote round was won: elect at the next tick
        self._leader_heard = 0.0      # when the current leader's append-entries last arrived
        self._fast_until = 0.0        # the leader's connection closed: quick pre-vote rounds until then
        self.election_stats = {"prevote_rounds": 0, "prevotes_won": 0, "prevotes_granted": 0,
                               "prevotes_refused": 0, "fast_starts": 0}
        super().__init__(selfNode, otherNodes, conf, *args, **kwargs)

    def peer_connected(self, _node) -> None:
        """A peer's connection is up (tick thread). A leader sends its next append round in this
        tick instead of at the next heartbeat (``append_period`` away): the peer learns who leads
        now, and can forward its first write (a starting node's registration) at once."""
        if self._SyncObj__raftState == _LEADER:
            self._SyncObj__newAppendEntriesTime = 0

    @property
    def encryptor(self):  # what PySyncObj's transport encrypts every connection with
        return self._fernet

    def _getEncryptor(self):
        return self._fernet

    def _onTick(self, timeToWait=0.0):
        term = self.raftCurrentTerm
        if self._settled:
            self._poller.poll(0)
            if self._elect_early:
                self._maybe_elect_now()  # moves the deadline; _elect still asks for pre-votes first
            self._elect()
            timeToWait = tick_wait(timeToWait, raft_clock(), self._SyncObj__raftState == _LEADER,
                                   self._SyncObj__selfNode is not None, self._SyncObj__raftElectionDeadline,
                                   self._SyncObj__newAppendEntriesTime)
            reaching = getattr(self._SyncObj__transport, "reaching", None)  # AgentTransport's
            if reaching is not None and reaching():  # a founding peer was not listening yet: retry soon
                timeToWait = min(timeToWait, START_RETRY)
        self._deferring = True
        try:
            super()._onTick(timeToWait)
        finally:
            if self._deferring:  # PySyncObj returned before queueing (transport not ready)
                self._deferring = False
                self._send_owed_round()
        if (self.raftCurrentTerm > term and self._SyncObj__raftState == _CANDIDATE
                and raft_clock() < self._fast_until):
            # An election while the leader is known dead: should the vote split, retry soon.
            self._SyncObj__raftElectionDeadline = raft_clock() + election.split_retry_delay()
        if not self._settled:
            self._settled = self._SyncObj__transport.ready and not self._SyncObj__needLoadDumpFile

    # -- elections (election.py says why) ----------------------------------------------------------

    def _elect(self) -> None:
        """Before PySyncObj's tick judges the election deadline: turn an expired deadline into a
        pre-vote round; let the election through once a round was won (or a TimeoutNow asked)."""
        if self._SyncObj__raftState == _LEADER or self._SyncObj__selfNode is None:
            self._prevote_term = 0
            return
        if self._election_cleared:
            self._election_cleared = False
            self._SyncObj__raftElectionDeadline = 0  # PySyncObj starts the election in this tick
            return
        if self._SyncObj__transferInProgress:
            return  # the leader asked us to take over (TimeoutNow): elect at once, no pre-vote
        now = raft_clock()
        if self._SyncObj__raftElectionDeadline >= now or not self._SyncObj__connectedToAnyone():
            return
        others = self._SyncObj__otherNodes
        if not others:
            return  # alone: PySyncObj elects this node without asking anyone
        fast = now < self._fast_until
        self._SyncObj__raftElectionDeadline = now + (election.retry_delay() if fast else
                                                     self._SyncObj__generateRaftTimeout())
        self._prevote_term = self.raftCurrentTerm + 1
        self._prevote_grants = set()
        self.election_stats["prevote_rounds"] += 1
        request = {"type": "pre_vote", "term": self._prevote_term,
                   "last_log_index": self._SyncObj__getCurrentLogIndex(),
                   "last_log_term": self._SyncObj__getCurrentLogTerm()}
        transport = self._SyncObj__transport
        for node in others:
            transport.send(node, request)

    def _leader_alive(self) -> bool:
        leader = self._SyncObj__raftLeader
        return election.leader_alive(
            is_leader=self._SyncObj__raftState == _LEADER, leader_known=leader is not None,
            leader_connected=leader is not None and self.isNodeConnected(leader),
            since_heard=raft_clock() - self._leader_heard, election_min=self._SyncObj__conf.raftMinTimeout)

    def _answer_pre_vote(self, node, message: dict) -> None:
        granted = election.grant_pre_vote(
            proposed_term=message["term"], cand_last_term=message["last_log_term"],
            cand_last_index=message["last_log_index"], own_term=self.raftCurrentTerm,
            own_last_term=self._SyncObj__getCurrentLogTerm(), own_last_index=self._SyncObj__getCurrentLogIndex(),
            leader_alive=self._leader_alive(), voter=self._SyncObj__selfNode is not None)
        self.election_stats["prevotes_granted" if granted else "prevotes_refused"] += 1
        self._SyncObj__transport.send(node, {"type": "pre_vote_reply", "term": message["term"], "granted": granted,
                                             "current": self.raftCurrentTerm})

    def _count_pre_vote(self, node, message: dict) -> None:
        state = self._SyncObj__raftState
        if state == _LEADER or self._SyncObj__selfNode is None:
            return
        current = message.get("current")
        if type(current) is int and current > self.raftCurrentTerm:
            # A voter is at a later term (it voted in an election we missed): adopt it, as raft
            # does for any answer with a higher term, so our next round can ask for a term above it.
            self._SyncObj__setCurrentTerm(current, None)
            self._SyncObj__setState(_FOLLOWER)
            self._SyncObj__raftLeader = None
            self._prevote_term = 0
            return
        if not message.get("granted") or message.get("term") != self._prevote_term \
                or self._prevote_term != self.raftCurrentTerm + 1:
            return
        self._prevote_grants.add(node.id)
        if election.pre_vote_won(1 + len(self._prevote_grants), 1 + len(self._SyncObj__otherNodes)):
            self._prevote_term = 0
            self._election_cleared = True
            self.election_stats["prevotes_won"] += 1
            self.wake()

    def _SyncObj__onMessageReceived(self, node, message):  # what the transport's callback resolves to
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "pre_vote":
            return self._answer_pre_vote(node, message)
        if kind == "pre_vote_reply":
            return self._count_pre_vote(node, message)
        if kind == "append_entries" and message.get("term", -1) >= self.raftCurrentTerm:
            self._leader_heard = raft_clock()  # the current leader (a lower term is ignored)
            self._fast_until = 0.0
            if "prevLogIdx" not in message:
                return self._receive_snapshot_part(node, message)
        return SyncObj._SyncObj__onMessageReceived(self, node, message)

    # A message of a snapshot transfer carries no prevLogIdx: nothing in it proves that this node's
    # log matches the leader's, yet PySyncObj took its commit index as covering our log up to its
    # end. A follower with a tail the cluster never committed (a cut-off leader's own entries) then
    # applied that tail — and told the writers waiting for it "done" — before the last part of the
    # snapshot replaced its state. Such a message moves the commit index only as far as the
    # snapshot it completes (committed by definition); append-entries with prevLogIdx do the rest.
    def _receive_snapshot_part(self, node, message):
        capped = min(message["commit_index"], self._SyncObj__raftCommitIndex)
        SyncObj._SyncObj__onMessageReceived(self, node, {**message, "commit_index": capped})
        applied = self._SyncObj__raftLastApplied
        if applied > self._SyncObj__raftCommitIndex:  # the snapshot was loaded: it is committed up to there
            self._SyncObj__raftCommitIndex = applied
            self._SyncObj__raftLog.setRaftCommitIndex(applied)

    def _SyncObj__onNodeDisconnected(self, node):
        was_connected = self.isNodeConnected(node)
        SyncObj._SyncObj__onNodeDisconnected(self, node)
        leader = self._SyncObj__raftLeader
        if (not was_connected or leader is None or node != leader or self._SyncObj__selfNode is None
                or self._SyncObj__raftState != _FOLLOWER):
            return
        # The leader's connection closed (a failed reconnect attempt never counts: it was not
        # connected): its process is probably gone. Pre-vote soon; a live leader is safe anyway.
        now = raft_clock()
        self._fast_until = now + self._SyncObj__conf.raftMaxTimeout
        delay = election.fast_delay(self._SyncObj__selfNode.id, [n.id for n in self._SyncObj__otherNodes], node.id)
        self._SyncObj__raftElectionDeadline = min(self._SyncObj__raftElectionDeadline, now + delay)
        self.election_stats["fast_starts"] += 1
        log.info("raft: the connection to leader %s closed; pre-vote in %.0f ms", node.id, 1000 * delay)

    # With appendEntriesUseBatch=False PySyncObj sends a full append round to every member after
    # *each* command it appends; one round after the whole queue carries the same entries. And
    # its tick sends a round after applying committed entries, then appends the queued commands
    # and sends another: the first waits (``_deferring``) and the one round carries both — under
    # concurrent writes, half the messages, acknowledgements and their encryption on every node.
    def _checkCommandsToApply(self):
        self._queueing = True
        self._wake_pending = False  # before taking the queue: a command put after this wakes the tick again
        try:
            super()._checkCommandsToApply()
        finally:
            self._queueing = False
            self._deferring = False
        self._send_owed_round()
        if getattr(self._SyncObj__commandsQueue, "_FastQueue__queue", None):
            self.wake()  # PySyncObj stopped taking commands after an append period: the next tick goes on

    # Every command PySyncObj queues writes a byte to the tick thread's wake-up pipe: a system call
    # (and a GIL hand-off) per write in the writer's thread, and a tick woken for nothing when it
    # was busy anyway. One byte per batch suffices: the tick takes the whole queue.
    def _applyCommand(self, command, callback, commandType=None):
        queue = self._SyncObj__commandsQueue
        try:
            if commandType is None:
                queue.put_nowait((command, callback))
            else:
                queue.put_nowait((bytes([commandType]) + command, callback))
        except QueueFull:
            self._SyncObj__callErrCallback(FAIL_REASON.QUEUE_FULL, callback)
            return
        if not self._wake_pending:
            self._wake_pending = True
            self.wake()

    def _send_owed_round(self) -> None:
        if self._send_owed:
            self._send_owed = False
            if self._SyncObj__raftState == _LEADER:
                self._send_round()

    def _SyncObj__sendAppendEntries(self):  # what SyncObj's own calls resolve to
        if self._queueing or self._deferring:
            self._send_owed = True
            return
        self._send_round()

    # Standbys (read-only nodes) neither vote nor count for a commit, and time nothing out. They get
    # a round when it carries something they can use: a commit index they have not been sent
    # (PySyncObj sends a round right after each commit: it brings them the entries and the commit
    # together) or committed entries they lack (catching up); else a bare heartbeat every
    # STANDBY_HEARTBEAT instead of every append period. Entries not yet committed wait for their
    # commit round, one message later for nothing: a standby cannot apply them sooner anyway.
    def _send_round(self) -> None:
        readonly = self._SyncObj__readonlyNodes
        now = raft_clock()
        if readonly and now < self._standby_beat_due and self._standbys_current(readonly):
            self._SyncObj__readonlyNodes = set()  # this round: the voters only
            try:
                SyncObj._SyncObj__sendAppendEntries(self)
            finally:
                self._SyncObj__readonlyNodes = readonly
            return
        SyncObj._SyncObj__sendAppendEntries(self)
        self._standby_beat_due = now + STANDBY_HEARTBEAT
        self._standby_commit = self.raftCommitIndex

    def _standbys_current(self, readonly) -> bool:
        """Have the standbys been sent every committed entry and the current commit index?"""
        commit = self.raftCommitIndex
        if commit != self._standby_commit:
            return False
        next_index = self._SyncObj__raftNextIndex
        return all(next_index.get(node, 0) > commit for node in readonly)

    def _maybe_elect_now(self) -> None:
        """Move the election deadline to now once this node could win: no other voter (a one-voter
        group then leads at once instead of after its 1-2 s timeout), or a majority connected (the
        first initial voter of a group started together). Only while nobody leads and no vote was
        cast: raft's safety never depends on timing, and a node that saw a term uses the timeout."""
        if self._getLeader() is not None or (self.otherNodes and self.raftCurrentTerm > 0):
            self._elect_early = False
            return
        if 2 * (1 + len(self.connected_ids())) > 1 + len(self.otherNodes):
            self._elect_early = False
            self._SyncObj__raftElectionDeadline = 0

    # -- a public surface (tick thread only, except where noted) -------------------------------

    def elect_early(self) -> None:
        """Stand for election as soon as this node could win (any thread; see _maybe_elect_now)."""
        self._elect_early = True
        self.wake()

    def wake(self) -> None:
        """Make the tick thread run now instead of at the end of its poll timeout (any thread)."""
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            try:
                notifier.notify()
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def is_leader(self) -> bool:
        return self._isLeader()

    def leader_id(self) -> str | None:
        leader = self._getLeader()
        return leader.id if leader is not None else None

    def peer_ids(self) -> set[str]:
        """Raft addresses of the other voters (a standby: all voters)."""
        return {n.id for n in self.otherNodes}

    def connected_ids(self) -> set[str]:
        return {n.id for n in self.otherNodes if self.isNodeConnected(n)}

    def leader_reachable(self) -> bool:
        """Racy read from any thread (a tick round trip would cost up to a tick per write): is
        there a leader this node can hand a command to right now?"""
        try:
            if self._isLeader():
                return self.hasQuorum
            leader = self._getLeader()
            return leader is not None and self.isNodeConnected(leader)
        except RuntimeError:  # a set changed size under us: ask again
            return False

    def status_fields(self) -> dict:
        st = self.getStatus()
        return {"state": st["state"], "term": self.raftCurrentTerm, "commit_index": self.raftCommitIndex,
                "last_applied": self.raftLastApplied, "log_len": st["log_len"], "has_quorum": self.hasQuorum,
                "ready": self.isReady()}

    def begin_read(self) -> tuple[int, int, list[str], Any]:
        """ReadIndex, first half (tick thread): the commit index a read must see, the round number
        the confirmation must exceed, the other voters, and the transport that counts their echoes.
        Asks for a heartbeat round (:meth:`send_read_round`, once for all the reads of a tick). Raises
        unless this node leads and has committed an entry of its own term (before that its commit
        index may lag the cluster's)."""
        if not self._isLeader():
            raise NotLeader(self.leader_id())
        noop = self._SyncObj__noopIDx
        if noop is None or self.raftCommitIndex < noop:
            raise RaftError("the new raft leader has not committed its first entry yet; retry in a moment")
        self._read_round = True
        transport = self._SyncObj__transport
        return self.raftCommitIndex, transport.stamped, sorted(self.peer_ids()), transport

    def send_read_round(self) -> None:
        """Send the heartbeat round the reads of this tick asked for — now, not after the tick's
        poll (PySyncObj runs tick callbacks just before it waits for input, up to a tick period)."""
        if self._read_round:
            self._read_round = False
            if self._isLeader():
                SyncObj._SyncObj__sendAppendEntries(self)

    def change_membership(self, kind: str, addr: str, callback: Callable[[Any, int], None]) -> None:
        (self.addNodeToCluster if kind == "add" else self.removeNodeFromCluster)(addr, callback=callback)

    def request_transfer(self, callback: Callable[[Any, int], None]) -> None:
        self.transferLeadership(None, callback)


def tick_wait(tick: float, now: float, leader: bool, voter: bool, election_deadline: float,
              next_append: float) -> float:
    """How long the tick thread may sleep when nothing arrives: the tick period (long: input,
    commands and reads wake it anyway), but the leader wakes for its next heartbeat round and a
    voter for its election deadline (the fast start's is close), not up to a tick later."""
    if leader:
        return min(tick, max(0.0, next_append - now))
    if voter and election_deadline > now:  # (one already past waits for a peer to connect: no spin)
        return min(tick, election_deadline - now)
    return tick


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class SyncTuning:
    """Raft timing (seconds). The defaults are measured; docs/design/raft.md says why."""

    election_min: float = 1.0
    election_max: float = 2.0
    append_period: float = 0.1
    tick_period: float = 0.25  # the longest sleep of an idle tick thread (tick_wait)
    leader_fallback: float = 2.0
    connection_retry: float = 0.5
    log_compaction_min_entries: int | None = None  # None: PySyncObj's default
    extra: tuple[tuple[str, Any], ...] = ()  # further SyncObjConf fields (benchmarks, tests)


def make_conf(bind_addr: str | None, secret: bytes, journal: Any, dump_file: str | None,
              tuning: SyncTuning = SyncTuning(),
              on_role: Callable[[int, int], None] | None = None) -> SyncObjConf:
    """The SyncObjConf for one node; *journal* is a JournalSpec or None (in memory: standbys)."""
    if not secret:
        # Without a password PySyncObj unpickles whatever arrives on its port.
        raise RaftError("a cluster secret is mandatory for the raft port")
    options = dict(
        password=secret,
        appendEntriesUseBatch=False,
        raftMinTimeout=tuning.election_min,
        raftMaxTimeout=tuning.election_max,
        appendEntriesPeriod=tuning.append_period,
        autoTickPeriod=tuning.tick_period,
        connectionRetryTime=tuning.connection_retry,
        leaderFallbackTimeout=tuning.leader_fallback,
        dynamicMembershipChange=True,
        # Never queue a command while no leader is known: a queued command survives its caller's
        # timeout and would be applied later although the caller was told it failed.
        commandsWaitLeader=False,
        journalFile=journal,
        tcp_keepalive=None,  # AgentTransport sets keepalive and TCP_USER_TIMEOUT on every socket
        fullDumpFile=dump_file,
        bindAddress=bind_addr,
        maxBindRetries=2,
        bindRetryTime=0.3,
        # Serialise snapshots in the tick thread: fork() in a multi-threaded process risks
        # deadlocks in the child, and our state is small.
        useFork=False,
        onStateChanged=on_role,
    )
    if tuning.log_compaction_min_entries is not None:
        options["logCompactionMinEntries"] = tuning.log_compaction_min_entries
    options.update(dict(tuning.extra))
    return SyncObjConf(**options)


# ------------------------------------------------------------------ writes


def submit(sync: Callable[[], AgentSyncObj | None], store: Callable[[], StateStore], command: str, args: dict,
           *, timeout: float, leader_wait: float, who: str, session: dict | None = None) -> Any:
    """Replicate one command and return the state machine's value, or raise.

    While no leader is reachable the command is not submitted; after *leader_wait* seconds that is
    :class:`NotSubmitted`. Failures proving the command was never appended are retried within
    *timeout*. *sync*/*store* are resolved at each attempt: a role change replaces both.
    """
    now = time.monotonic()
    deadline, leader_deadline = now + timeout, now + min(timeout, leader_wait)
    while True:
        current = sync()
        if current is None or not current.leader_reachable():
            if time.monotonic() >= leader_deadline:
                raise NotSubmitted(f"no raft leader reachable from {who}: this node is cut off from the "
                                   "majority of the cluster, or the majority is down")
            time.sleep(0.02)
            continue
        try:
            res = store().apply(command, args, session, sync=True, timeout=max(0.05, deadline - time.monotonic()))
            break
        except Exception as exc:  # SyncObjException carries a FAIL_REASON code or 'Timeout'
            code = getattr(exc, "errorCode", None)
            submitted = isinstance(exc, SyncObjException)  # else it failed before reaching PySyncObj
            if (code in _NOT_APPENDED or not submitted) and time.monotonic() < deadline:
                time.sleep(0.02)  # (not submitted: e.g. the raft object is being replaced on a role change)
                continue
            if not submitted or code in _NOT_APPENDED:
                raise NotSubmitted(f"command not submitted: {FAIL_NAMES.get(code, code) if submitted else exc}") \
                    from None
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
        raise CommandRejected(str(res.get("error")), res.get("code") or "invalid")
    return res.get("value")


def change_membership(node: AgentSyncObj, kind: str, addr: str, *, deadline: float,
                      done_early: Callable[[], bool] = lambda: False) -> None:
    """One membership change (``kind`` add/remove) on the leader, retried while PySyncObj refuses
    it because the previous change or the leader's no-op is not committed yet. Returns once it is
    committed (or *done_early* says so); raises :class:`NotLeader` or :class:`RaftError`."""
    while True:
        box: list = []
        done = threading.Event()
        node.change_membership(kind, addr, lambda _res, err, box=box, done=done: (box.append(err), done.set()))
        err = None
        while time.monotonic() < deadline:
            if done.wait(0.02):
                err = box[0]
                break
            if done_early():
                return
        if err == FAIL_REASON.SUCCESS:
            return
        if err is None:
            raise RaftError(f"{'adding' if kind == 'add' else 'removing'} {addr} did not commit in time")
        if err in _RETRY_CHANGE and time.monotonic() < deadline:
            time.sleep(0.05)  # previous change or the leader's no-op not committed yet
            continue
        if err in _LOST_LEAD:
            raise NotLeader(None)
        raise RaftError(f"{'adding' if kind == 'add' else 'removing'} {addr} failed: {FAIL_NAMES.get(err, err)}")


def transfer_succeeded(err: int) -> bool:
    return err == FAIL_REASON.SUCCESS


# ------------------------------------------------------------------ the tick thread

def _tick_thread(sync: Any) -> None:
    """PySyncObj's tick thread (``SyncObj._autoTickThread``: started with a weak proxy of the node)
    without its fixed 0.1 s sleep between getting the transport ready and the first tick: every
    agent start paid it, and its first snapshot, first election and join waited for it. The rest
    as PySyncObj does it: signal the constructor, tick until destroyed or its creator thread ends."""
    try:
        sync._SyncObj__transport.tryGetReady()
    except TransportNotReadyError:
        log.exception("raft: the transport did not get ready")
        return
    finally:
        sync._SyncObj__initialised.set()
    try:
        period = sync._SyncObj__conf.autoTickPeriod
        while sync._SyncObj__mainThread.is_alive():
            if sync._SyncObj__destroying:
                sync._doDestroy()
                break
            try:
                sync._onTick(period)
            except Exception:  # noqa: BLE001 - as PySyncObj: log, wait a little and tick again
                log.exception("raft: a tick failed")
                time.sleep(period)
    except ReferenceError:  # the node was garbage-collected
        pass


def install_prompt_tick() -> None:
    """Idempotent: SyncObj starts ``_tick_thread`` (it names its target as ``SyncObj._autoTickThread``)."""
    SyncObj._autoTickThread = _tick_thread


if not callable(getattr(SyncObj, "_autoTickThread", None)):  # pragma: no cover - guarded upgrade
    raise ImportError("PySyncObj has no SyncObj._autoTickThread: review consensus/pysyncobj/syncobj.py")
