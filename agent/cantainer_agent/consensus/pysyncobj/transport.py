"""PySyncObj's TCP transport, hardened: durable before send, fast dead-peer detection, bounded strangers.

``AgentTransport`` (handed to ``SyncObj(transportClass=...)``) overrides:

* ``send`` — syncs the journal before an acknowledgement or a vote leaves the node, and makes a
  follower's rejection ask for everything after its commit index (a livelock otherwise);
* ``_onMessageReceived`` — on the leader, a success acknowledgement never moves ``nextIndex`` back;
* both — a round number on append-entries, echoed in the answers: the leader's proof, for a read,
  that a majority still followed it after the read began (ReadIndex);
* ``_onNodeConnected`` — tells the SyncObj (``AgentSyncObj.peer_connected``: a leader greets a
  peer at once);
* ``_connectIfNecessarySingle`` / ``_onNewIncomingConnection`` — ``TCP_USER_TIMEOUT`` 2 s and
  keepalive on every raft socket (a vanished peer is noticed in ~2 s, not 30); a peer not reached
  yet is retried every 50 ms for the first seconds (``reaching``), not every 0.5 s;
* ``_onTick`` — starts syncing the tick's entries in the background, drops connections that do not
  authenticate within 5 s, refuses more than 64 at once (8 from one address), and caps an
  unauthenticated frame at 64 KiB; what it drops is logged as periodic summaries (ratelog.py).

The why of each, with measurements: docs/design/raft.md ("PySyncObj traps", "Durability").
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import types
from typing import Any, Callable

from pysyncobj.monotonic import monotonic as raft_clock  # PySyncObj's clock (CLOCK_MONOTONIC_RAW)
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from ...ratelog import Tally

log = logging.getLogger(__name__)

USER_TIMEOUT_MS = 2000      # unacknowledged data / SYN / keepalive probes -> connection error
KEEPALIVE_IDLE_S = 1        # first keepalive probe after 1 s without traffic
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 2
PREAUTH_TIMEOUT = 5.0       # seconds to finish the key exchange and name the peer
MAX_PREAUTH = 64            # concurrent unauthenticated incoming connections
MAX_PREAUTH_PER_SOURCE = 8  # ... of them from one address
MAX_PREAUTH_BYTES = 64 * 1024
# Voters founding a cluster start within ~0.1-0.2 s of each other, and a connection to a peer not
# listening yet is refused at once: retried after the configured 0.5 s, that cost the first
# election up to half a second. A peer this node has never reached is retried every START_RETRY
# during the first START_WINDOW seconds; later (a peer down for good) the configured retry holds.
START_RETRY = 0.05
START_WINDOW = 10.0

# The private PySyncObj 0.3.17 members used here (guarded, so an upgrade fails loudly at import):
_READ_ATTR = "_TcpConnection__processRead"
_BUF_ATTR = "_TcpConnection__readBuffer"
_NEXT_INDEX_ATTR = "_SyncObj__raftNextIndex"
_CLAIMS_DURABLE = frozenset({"next_node_idx", "response_vote"})


def tune_socket(fd: int) -> None:
    """Set the dead-peer options on the TCP socket *fd* (Linux)."""
    s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a dup: options apply to the shared socket
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    finally:
        s.close()


def peer_address(fd: int) -> str:
    s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a dup, closed below
    try:
        return str(s.getpeername()[0])
    except OSError:
        return "?"
    finally:
        s.close()


def _cap_preauth_reads(conn: TcpConnection, still_unauthenticated: Callable[[], bool],
                       dropped: Callable[[str], None]) -> None:
    original = getattr(conn, _READ_ATTR)

    def capped_read(self: TcpConnection) -> bool:
        more = original()
        if still_unauthenticated() and len(getattr(self, _BUF_ATTR, b"")) > MAX_PREAUTH_BYTES:
            dropped("unauthenticated frame over 64 KiB")
            self.disconnect()
            return False
        return more

    setattr(conn, _READ_ATTR, types.MethodType(capped_read, conn))


class AgentTransport(TCPTransport):
    """See the module docstring. *before_send* is called before every outgoing message."""

    def __init__(self, syncObj, selfNode, otherNodes, *, journal: Any):
        self._journal = journal  # has .sync(); None: a log kept in memory
        self._preauth_since: dict[TcpConnection, tuple[float, str]] = {}  # -> (since, peer address)
        self._dropped = Tally(log, "raft port: dropped")
        # ReadIndex (docs/design/raft.md, "Reads"): the leader stamps every append-entries message
        # with an increasing round number, a follower echoes the last one it received from its
        # leader in its answers, and the leader keeps the highest echo per follower.
        self.stamped = 0                    # leader: the last round number sent
        self._received: dict[str, int] = {}  # follower: the last round number received, per leader
        self.echoed: dict[str, int] = {}     # leader: the highest round number each follower answered
        self.echo_arrived = threading.Condition()
        self._reached: set = set()  # peers this node has had an outgoing connection to
        self._start_until = raft_clock() + START_WINDOW
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node, message):
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == "append_entries":
                self.stamped += 1
                message = {**message, "rq": self.stamped}
            elif kind in _CLAIMS_DURABLE:
                self._sync_journal()
                if message.get("reset") and not message.get("success"):
                    message = self._rejection_from_commit(message)
                if kind == "next_node_idx" and node.id in self._received:
                    message = {**message, "rq": self._received[node.id]}
        return super().send(node, message)

    def _rejection_from_commit(self, message: dict) -> dict:
        """A follower's "your entries do not fit my log" answers: ask for everything after our
        commit index. Committed entries match the leader's log (raft's leader completeness), so
        the leader's next message fits whatever conflicting tail we hold. PySyncObj answers
        "try from my log's end" when the message starts beyond our log and "try one entry
        back" on a conflict; a leader pipelining several messages per round to a follower far
        behind got the conflict answer first and "my end" for every later message, took the
        last, and never walked back past the conflict (three lab members stuck for good)."""
        hint = self._syncObj.raftCommitIndex + 1
        if hint >= message["next_node_idx"]:
            return message
        return {**message, "next_node_idx": hint}

    def _onNodeConnected(self, node):
        super()._onNodeConnected(node)
        peer_connected = getattr(self._syncObj, "peer_connected", None)  # AgentSyncObj's
        if peer_connected is not None:
            peer_connected(node)

    def _onMessageReceived(self, node, message):
        if isinstance(message, dict) and type(message.get("rq")) is int:
            if message.get("type") == "append_entries":
                self._received[node.id] = message["rq"]
            elif message.get("type") == "next_node_idx" and message["rq"] > self.echoed.get(node.id, 0):
                with self.echo_arrived:
                    self.echoed[node.id] = message["rq"]
                    self.echo_arrived.notify_all()
        if not (isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success")
                and not message.get("reset")):
            return super()._onMessageReceived(node, message)
        next_index = getattr(self._syncObj, _NEXT_INDEX_ATTR)
        before = next_index.get(node)
        super()._onMessageReceived(node, message)
        after = next_index.get(node)
        if before is not None and after is not None and after < before:
            next_index[node] = before

    def reaching(self) -> bool:
        """True while a peer this node connects to has never been reached and the start window
        is open: the tick wakes every START_RETRY to retry it (tick thread)."""
        if raft_clock() >= self._start_until:
            return False
        return any(node not in self._reached and self._shouldConnect(node) for node in self._connections)

    def _connectIfNecessarySingle(self, node):
        conn = self._connections.get(node)
        before = conn.state if conn is not None else None
        if conn is not None and node not in self._reached:
            if before == CONNECTION_STATE.CONNECTED:
                self._reached.add(node)
            elif before == CONNECTION_STATE.DISCONNECTED and raft_clock() < self._start_until:
                last = self._lastConnectAttempt.get(node)  # in PySyncObj's clock
                if last is not None and raft_clock() - last >= START_RETRY:
                    del self._lastConnectAttempt[node]  # PySyncObj then tries now
        result = super()._connectIfNecessarySingle(node)
        if conn is not None and before == CONNECTION_STATE.DISCONNECTED and conn.state != CONNECTION_STATE.DISCONNECTED:
            fd = conn.fileno()
            if fd is not None:
                try:
                    tune_socket(fd)
                except OSError as exc:  # pragma: no cover - not Linux
                    log.debug("cannot tune raft socket: %s", exc)
        return result

    def _onNewIncomingConnection(self, conn):
        fd = conn.fileno()
        source = peer_address(fd) if fd is not None else "?"
        if len(self._preauth_since) >= MAX_PREAUTH:
            self._dropped.add(source, f"more than {MAX_PREAUTH} unauthenticated connections")
            conn.disconnect()
            return
        if sum(1 for _, peer in self._preauth_since.values() if peer == source) >= MAX_PREAUTH_PER_SOURCE:
            self._dropped.add(source, f"more than {MAX_PREAUTH_PER_SOURCE} unauthenticated connections from it")
            conn.disconnect()
            return
        super()._onNewIncomingConnection(conn)
        if fd is not None:
            try:
                tune_socket(fd)
            except OSError as exc:  # pragma: no cover
                log.debug("cannot tune raft socket: %s", exc)
        self._preauth_since[conn] = (time.monotonic(), source)
        _cap_preauth_reads(conn, lambda: conn in self._unknownConnections,
                           lambda why: self._dropped.add(source, why))

    def _sync_journal(self) -> None:
        if self._journal is not None:
            self._journal.sync()

    def _onTick(self):
        # The entries this tick appended (group commit): fdatasync'd in the background while this
        # thread polls for answers; the commit and every acknowledgement still wait for it.
        if self._journal is not None:
            getattr(self._journal, "sync_soon", self._journal.sync)()
        super()._onTick()
        if self._preauth_since:
            now = time.monotonic()
            for conn, (since, source) in list(self._preauth_since.items()):
                if conn not in self._unknownConnections:
                    del self._preauth_since[conn]  # authenticated (or already dropped)
                elif now - since > PREAUTH_TIMEOUT:
                    del self._preauth_since[conn]
                    self._dropped.add(source, f"no authentication within {PREAUTH_TIMEOUT:.0f} s")
                    conn.disconnect()
