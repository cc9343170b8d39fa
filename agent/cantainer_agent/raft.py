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
  lives in ``<journal>.meta`` and is rewritten about once per second (and not fsynced). A member
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
  and the follower's callback fires once that entry is applied locally). With
  ``commandsWaitLeader=True`` calls queue while no leader is known.

Durability (later issue)
------------------------
PySyncObj 0.3.17 already stores currentTerm/votedFor in ``<journal>.meta`` synchronously on every
change (``FileJournal.setCurrentTerm``) but without fsync, and the journal itself is an mmap
flushed only on close. The clean hook is ``pysyncobj.syncobj.createJournal`` (module global called
from ``SyncObj.__init__``): substitute a ``FileJournal`` subclass whose ``add``/``setCurrentTerm``
msync + fsync before returning.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.config import FAIL_REASON

from .fsutil import atomic_write
from .state import ClusterState, StateError

log = logging.getLogger(__name__)

MEMBERS_FILE = "members.json"
JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}


class RaftError(Exception):
    """The raft node could not start or answer."""


class NotLeader(RaftError):
    def __init__(self, leader: str | None):
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class CommandFailed(RaftError):
    """A replicated command did not commit (leader change, timeout, rejected by the state)."""


class CommandRejected(CommandFailed):
    """The command committed but the state machine refused it (the user's input is at fault)."""


# ------------------------------------------------------------------ members file


@dataclass(frozen=True)
class Members:
    cluster: str
    self_addr: str
    members: tuple[str, ...]  # all raft addresses, self included, sorted

    @property
    def partners(self) -> list[str]:
        return [m for m in self.members if m != self.self_addr]


def members_path(data_dir: str) -> str:
    return os.path.join(data_dir, MEMBERS_FILE)


def journal_path(data_dir: str) -> str:
    return os.path.join(data_dir, JOURNAL_FILE)


def save_members(data_dir: str, cluster: str, self_addr: str, members: list[str] | set[str] | tuple[str, ...]) -> Members:
    allm = tuple(sorted(set(members) | {self_addr}))
    body = {"version": 1, "cluster": cluster, "self": self_addr, "members": list(allm)}
    atomic_write(members_path(data_dir), (json.dumps(body, indent=1) + "\n").encode(), 0o600)
    return Members(cluster, self_addr, allm)


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
        return Members(str(data["cluster"]), str(data["self"]), tuple(sorted(members)))
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


# ------------------------------------------------------------------- raft node


def make_conf(data_dir: str, bind_addr: str, secret: bytes) -> SyncObjConf:
    """The tuned configuration from DESIGN.md."""
    return SyncObjConf(
        password=secret,
        appendEntriesUseBatch=False,
        raftMinTimeout=0.15,
        raftMaxTimeout=0.3,
        appendEntriesPeriod=0.03,
        autoTickPeriod=0.01,
        connectionRetryTime=0.5,
        leaderFallbackTimeout=1.0,
        dynamicMembershipChange=True,
        commandsWaitLeader=True,
        journalFile=journal_path(data_dir),
        fullDumpFile=os.path.join(data_dir, DUMP_FILE),
        bindAddress=bind_addr,
        maxBindRetries=2,
        bindRetryTime=0.3,
        # Serialise snapshots in the tick thread: fork() in a multi-threaded process risks
        # deadlocks in the child, and our state is small.
        useFork=False,
    )


class RaftNode:
    """Owns one SyncObj. Create and :meth:`start` it from the main thread (PySyncObj's tick
    thread exits when the thread that created the SyncObj exits)."""

    def __init__(self, *, cluster: str, self_addr: str, partners: list[str], data_dir: str, secret: bytes):
        self.cluster = cluster
        self.self_addr = self_addr
        self.data_dir = data_dir
        self._initial_partners = sorted(set(partners) - {self_addr})
        self._secret = secret
        self.store = StateStore()
        self._sync: SyncObj | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._membership_lock = threading.Lock()
        self._saved_members: frozenset[str] = frozenset(self._initial_partners)
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def start(self, bind_timeout: float = 5.0) -> None:
        conf = make_conf(self.data_dir, self.self_addr, self._secret)
        try:
            self._sync = SyncObj(self.self_addr, self._initial_partners, conf, consumers=[self.store])
        except Exception as exc:  # noqa: BLE001
            raise RaftError(f"cannot start raft on {self.self_addr}: {exc}") from None
        bound = threading.Event()
        failure: list[BaseException] = []

        def waiter() -> None:
            try:
                self._sync.waitBinded()
            except BaseException as exc:  # noqa: BLE001
                failure.append(exc)
            bound.set()

        threading.Thread(target=waiter, name="raft-bind-wait", daemon=True).start()
        if not bound.wait(bind_timeout) or failure:
            self.stop()
            raise RaftError(f"cannot bind the raft port {self.self_addr} (address in use or not on this host)")
        self._sync.addOnTickCallback(self._on_tick)
        log.info("raft started on %s with partners %s", self.self_addr, self._initial_partners or "none")

    def stop(self) -> None:
        if self._stopped or self._sync is None:
            return
        self._stopped = True
        try:
            self._sync.destroy_synchronous()
        except Exception:  # noqa: BLE001
            log.exception("error while stopping raft")

    # ----------------------------------------------------- tick-thread work

    def _on_tick(self) -> None:
        """Runs inside PySyncObj's tick thread (must never raise or block long)."""
        try:
            others = frozenset(n.id for n in self._sync.otherNodes)
            if others != self._saved_members:
                save_members(self.data_dir, self.cluster, self.self_addr, others)
                log.info("raft membership changed: %s", sorted(others | {self.self_addr}))
                self._saved_members = others
        except Exception:  # noqa: BLE001
            log.exception("cannot persist the member list")
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
            "role": ROLE_NAMES.get(st["state"], str(st["state"])),
            "leader": leader.id if leader is not None else None,
            "term": s.raftCurrentTerm,
            "commit_index": s.raftCommitIndex,
            "last_applied": s.raftLastApplied,
            "log_len": st["log_len"],
            "has_quorum": s.hasQuorum,
            "members": sorted([n.id for n in others] + [self.self_addr]),
            "connected": sorted(n.id for n in others if s.isNodeConnected(n)),
            "ready": s.isReady(),
            "state": self.store.state.to_dict(),
        }

    def snapshot(self, timeout: float = 2.0) -> dict:
        """Raft status plus a copy of the state, taken consistently in the tick thread."""
        return self.run_in_tick(self._snapshot_in_tick, timeout)

    def members(self) -> list[str]:
        return self.run_in_tick(lambda: sorted([n.id for n in self._sync.otherNodes] + [self.self_addr]))

    # -------------------------------------------------------------- writes

    def _call(self, method: Callable[..., Any], *args: Any, timeout: float) -> Any:
        try:
            res = method(*args, sync=True, timeout=timeout)
        except Exception as exc:  # SyncObjException carries a FAIL_REASON code or 'Timeout'
            code = getattr(exc, "errorCode", None)
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

    def heartbeat(self, name: str, ts: float | None = None, timeout: float = 3.0) -> bool:
        return self.apply("heartbeat", {"name": name, "ts": time.time() if ts is None else ts}, timeout=timeout)

    def remove_node(self, name: str, timeout: float = 3.0) -> bool:
        return self.apply("remove_node", {"name": name}, timeout=timeout)

    def apply(self, command: str, args: dict, timeout: float = 5.0) -> Any:
        """Replicate ``ClusterState.apply_<command>(**args)``; returns its result or raises."""
        return self._call(self.store.apply, command, args, timeout=timeout)

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
