"""The join port's server: answers ``ping`` and ``join`` for the local raft node.

``ping`` -> ``{"cluster", "node", "leader", "leader_join", "members"}``.
``read_index`` -> ``{"index"}`` (the leader only): the commit index a linearizable read on another
node must wait for, after this leader confirmed itself with a majority (RaftNode.read_index).
``join {cluster, node, address, raft_addr, join_addr, version, bundle}`` ->
``{"members", "already_member", "leader", "role": "voter"|"standby"}``: while there are fewer voters
than the ``voters`` setting the joiner is added as a voter, otherwise it follows as a standby (no
raft change). A joiner already in the configuration gets the member list from *any* node (this
un-wedges a joiner that crashed right after being added to a one-node cluster); otherwise only the
leader adds, and a follower answers ``not_leader`` with the leader's join address. A wrongly signed
request gets the unsigned ``REJECT_LINE``; garbage, replays and overlong lines are dropped.

Strangers cannot starve it: a connection has ``DEADLINE`` seconds in all to deliver its line (not
per read), each address at most ``PER_SOURCE`` connections at once and strangers ``MAX_CONNECTIONS``
together, while cluster members (``is_member``) have slots of their own. Rejections are logged as
periodic summaries (ratelog.py), never a line per connection.
"""
from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from typing import Any, Callable

from ..config import NAME_RE
from ..consensus import NotLeader, RaftError, RaftNode
from ..netaddr import split_hostport
from ..ratelog import Tally
from .wire import (
    BAD_REQUEST,
    CLOCK_SKEW,
    CONFLICT,
    MAX_JOIN_LINE,
    MAX_SKEW,
    NOT_LEADER,
    REJECT_LINE,
    UNAVAILABLE,
    UNKNOWN_METHOD,
    WRONG_CLUSTER,
    AuthError,
    BadMac,
    SkewError,
    derive_key,
    err,
    ok,
    open_envelope,
    seal,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32  # strangers' connections at once (joiners, and anyone else on the underlay)
MEMBER_CONNECTIONS = 32  # cluster members' own, which strangers cannot take
PER_SOURCE = 4  # connections at once from one stranger address
DEADLINE = 5.0  # seconds for a connection to deliver its request line, in all
LEADER_WAIT = 3.0  # seconds a join waits for a leader to be elected before "unavailable"


class _Slots:
    """Admission: per-address and per-class limits on connections being served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_source: dict[str, int] = {}
        self._strangers = 0
        self._members = 0

    def take(self, source: str, member: bool) -> str | None:
        """None if admitted (call ``give_back``), else why not."""
        with self._lock:
            if member:
                if self._members >= MEMBER_CONNECTIONS:
                    return "too many connections from members"
                self._members += 1
                return None
            if self._by_source.get(source, 0) >= PER_SOURCE:
                return f"more than {PER_SOURCE} connections from one address"
            if self._strangers >= MAX_CONNECTIONS:
                return "too many connections"
            self._strangers += 1
            self._by_source[source] = self._by_source.get(source, 0) + 1
            return None

    def give_back(self, source: str, member: bool) -> None:
        with self._lock:
            if member:
                self._members -= 1
                return
            self._strangers -= 1
            left = self._by_source[source] - 1
            if left:
                self._by_source[source] = left
            else:
                del self._by_source[source]


def read_line_by(sock: socket.socket, limit: int, deadline: float) -> bytes:
    """One line of at most *limit* bytes, all of it before *deadline* (time.monotonic)."""
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AuthError(f"no complete request within {DEADLINE:.0f} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(65536, limit + 1 - len(buf)))
        except socket.timeout:
            raise AuthError(f"no complete request within {DEADLINE:.0f} s") from None
        if not chunk:
            return bytes(buf)
        buf += chunk
        newline = buf.find(b"\n")
        if newline >= 0:
            return bytes(buf[: newline + 1])
        if len(buf) > limit:
            raise AuthError("line too long")


class _ReplayCache:
    def __init__(self, limit: int = 20000):
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def check_and_add(self, nonce: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > self._limit // 2:
                for k in [k for k, exp in self._seen.items() if exp < now]:
                    del self._seen[k]
            if nonce in self._seen or len(self._seen) >= self._limit:
                return False
            self._seen[nonce] = now + 2 * MAX_SKEW + 5
            return True


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64


class JoinServer:
    """Authenticated JSON-lines server. Binds in the constructor (fail fast); :meth:`start` serves."""

    def __init__(self, host: str, port: int, secret: bytes, handle: Callable[[str, dict], dict],
                 is_member: Callable[[str], bool] = lambda _address: False):
        self._key = derive_key(secret)
        self._handle = handle
        self._is_member = is_member
        self._replay = _ReplayCache()
        self._slots = _Slots()
        self._rejected = Tally(log, "join port: rejected")
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request, self.client_address)

        try:
            self._server = _TCPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind the join port {host}:{port}: {exc.strerror}") from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="join-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        self._rejected.close()

    def _serve_connection(self, sock: socket.socket, peer: Any) -> None:
        deadline = time.monotonic() + DEADLINE
        source = peer[0]
        member = self._is_member(source)
        refusal = self._slots.take(source, member)
        if refusal is not None:
            self._rejected.add(source, refusal)
            return  # dropped unread
        try:
            line = read_line_by(sock, MAX_JOIN_LINE, deadline)
            try:
                body, nonce = open_envelope(self._key, line, "req")
            except SkewError as exc:
                # MAC is valid: tell the (legitimate) peer why; nonce unknown here, so re-parse it
                nonce = json.loads(line)["nonce"]
                sock.settimeout(DEADLINE)
                sock.sendall(seal(self._key, "resp", err(CLOCK_SKEW, f"{exc}; synchronise the clocks (NTP)"), nonce)[0])
                return
            if not self._replay.check_and_add(nonce):
                raise AuthError("replayed nonce")
            method, params = body.get("method"), body.get("params", {})
            if not isinstance(method, str) or not isinstance(params, dict):
                answer = err(BAD_REQUEST, "body must be {method, params}")
            else:
                try:
                    answer = self._handle(method, params)
                except Exception as exc:  # noqa: BLE001
                    log.exception("join handler failed")
                    answer = err(UNAVAILABLE, f"internal error: {type(exc).__name__}")
            sock.settimeout(DEADLINE)  # a reader that never reads does not hold the slot longer
            sock.sendall(seal(self._key, "resp", answer, nonce)[0])
        except BadMac:
            self._rejected.add(source, "signed with another secret")
            try:
                sock.settimeout(1.0)
                sock.sendall(REJECT_LINE)
            except OSError:
                pass
        except AuthError as exc:
            self._rejected.add(source, str(exc))
        except (OSError, ValueError) as exc:
            log.debug("join port: connection from %s failed: %s", peer, exc)
        finally:
            self._slots.give_back(source, member)


class JoinService:
    """Handles join-port methods against the local raft node."""

    def __init__(self, raft_getter: Callable[[], RaftNode | None], cluster: str, node: str, voters: int):
        self._raft = raft_getter
        self.cluster = cluster
        self.node = node
        self.voters = voters  # at most this many voters; later joiners follow as standbys

    def handle(self, method: str, params: dict) -> dict:
        raft = self._raft()
        if method not in ("ping", "join", "read_index"):
            return err(UNKNOWN_METHOD, f"unknown join method {method!r}")
        if raft is None:
            return err(UNAVAILABLE, f"node {self.node} is still starting")
        if method == "read_index":
            try:
                return ok({"index": raft.read_index()})
            except NotLeader:
                return err(NOT_LEADER, f"{self.node} is not the leader")
            except RaftError as exc:
                return err(UNAVAILABLE, str(exc))
        try:
            if method == "join":
                self._await_leader(raft)
            snap = raft.snapshot()
        except RaftError as exc:
            return err(UNAVAILABLE, str(exc))
        leader_join = self._join_addr_of(snap, snap["leader"])
        if method == "ping":
            return ok({"cluster": self.cluster, "node": self.node, "leader": snap["leader"],
                        "leader_join": leader_join, "members": snap["members"]})
        return self._join(raft, snap, params, leader_join)

    @staticmethod
    def _await_leader(raft: RaftNode) -> None:
        """A join that arrives while the group elects its first leader (a founding `up` starts every
        node at once) waits for the election — up to LEADER_WAIT — instead of being sent away to
        retry later. It waits on an event the tick thread sets: polling `status` (a call into the
        tick thread) every 20 ms from each of dozens of waiting joins kept 100 hosts' founding
        voters from electing for ~20 s."""
        raft.wait_for_leader(LEADER_WAIT)

    @staticmethod
    def _join_addr_of(snap: dict, raft_addr: str | None) -> str | None:
        if raft_addr is None:
            return None
        for rec in snap["state"]["nodes"].values():
            if rec["raft_addr"] == raft_addr:
                return rec["join_addr"]
        return None

    def _join(self, raft: RaftNode, snap: dict, p: dict, leader_join: str | None) -> dict:
        if p.get("cluster") != self.cluster:
            return err(WRONG_CLUSTER, f"this is cluster {self.cluster!r}, not {p.get('cluster')!r}")
        name, raft_addr, join_addr = p.get("node"), p.get("raft_addr"), p.get("join_addr")
        if not isinstance(name, str) or not NAME_RE.match(name):
            return err(BAD_REQUEST, f"invalid node name {name!r}")
        try:
            split_hostport(raft_addr)
            split_hostport(join_addr)
        except ValueError as exc:
            return err(BAD_REQUEST, str(exc))
        nodes = snap["state"]["nodes"]
        rec = nodes.get(name)
        if rec is not None and rec["raft_addr"] != raft_addr:
            return err(CONFLICT, f"node name {name!r} is already used by raft member {rec['raft_addr']}; "
                                  "pick another name or remove the old node")
        for other, orec in nodes.items():
            if other != name and orec["raft_addr"] == raft_addr:
                return err(CONFLICT, f"raft address {raft_addr} already belongs to node {other!r}")
        if raft_addr in snap["members"]:
            return ok({"members": snap["members"], "already_member": True, "leader": snap["leader"], "role": "voter"})
        if snap["role"] != "leader":
            if leader_join:
                return err(NOT_LEADER, f"{self.node} is not the leader", leader_join=leader_join)
            return err(UNAVAILABLE, "no leader known right now (election in progress?)")
        if len(snap["members"]) >= self.voters:
            # Voters are capped (controllers/voters.py): join as a non-voting standby; no raft change needed.
            log.info("join: %s (%s) joins as a standby (%d voters)", name, raft_addr, len(snap["members"]))
            return ok({"members": snap["members"], "already_member": False, "leader": raft.self_addr,
                        "role": "standby"})
        try:
            outcome = raft.add_voter(raft_addr)
            members = raft.members()
        except NotLeader:
            return err(UNAVAILABLE, "leadership changed during the join; retry")
        except RaftError as exc:
            return err(UNAVAILABLE, str(exc))
        log.info("join: %s (%s) %s; members now %s", name, raft_addr, outcome, members)
        return ok({"members": members, "already_member": outcome == "already", "leader": raft.self_addr,
                    "role": "voter"})
