"""PySyncObj's TCP transport, hardened: durable-before-send, fast dead-peer detection, and
limits on unauthenticated connections.

``AgentTransport`` subclasses ``pysyncobj.transport.TCPTransport`` and is handed to
``SyncObj(..., transportClass=...)`` (a documented parameter). It overrides these methods:

``send``
    Before an acknowledgement (``next_node_idx``) or a vote (``response_vote``) leaves the
    node, the journal is synced (fdatasync, a no-op when nothing was written since): a
    follower never acknowledges an entry that is not on its disk. Other messages (a leader's
    append-entries, forwarded commands) claim nothing about the local disk and go out at
    once: the leader's own copy is synced at the end of the tick that sent it (``_onTick``),
    i.e. while the followers write theirs, and in any case before the leader counts it
    (``DurableJournal.setRaftCommitIndex``); all entries a leader appends in one tick share
    one fdatasync. (Queueing acknowledgements to share one fdatasync per poll as well was
    measured: no gain on this machine, so not done.)

    A follower's rejection (``next_node_idx`` with ``reset``) asks for everything after its
    commit index instead of PySyncObj's "my log's end" / "one entry back": see
    :meth:`AgentTransport._rejection_from_commit` (a livelock otherwise).
``_onMessageReceived``
    On the leader, keeps ``nextIndex`` of a follower from moving *backwards* on a success
    acknowledgement. PySyncObj sets ``nextIndex = acknowledged + 1`` even when it has already
    sent further entries (pipelining, ``appendEntriesUseBatch=False``), so under concurrent
    writes it re-sent entries the follower had, and the follower cut and re-appended its
    log for each of them (see ``DurableJournal.deleteEntriesFrom``). Raft only needs
    ``matchIndex`` from an acknowledgement; ``nextIndex`` moves back on a rejection only.
``_connectIfNecessarySingle`` / ``_onNewIncomingConnection``
    Tune every raft socket, outgoing right after ``connect()`` started and incoming right after
    ``accept()`` (see :func:`tune_socket`): ``TCP_USER_TIMEOUT`` 2 s, keepalive after 1 s idle
    every 1 s. Why: PySyncObj only notices a dead peer when a read times out, and only while it
    is sending to it; a peer that vanishes without a RST (power loss, cable, partition) left
    its connection "established" and — worse — a reconnect attempt stuck in SYN retries
    (1, 3, 7, 15, 31 s ...), so a rebooted host was reconnected after 10-60 s (31 s measured
    here, bench/raft_failover.py). With these
    options unacknowledged data, unanswered keepalives and unanswered SYNs fail after ~2 s and
    PySyncObj retries every ``connectionRetryTime`` (0.5 s).
``_onTick`` (also)
    Drops connections that have not authenticated (PySyncObj's Fernet key exchange) within
    ``PREAUTH_TIMEOUT`` seconds, and incoming connections beyond ``MAX_PREAUTH``.

Unauthenticated input never reaches pickle: PySyncObj decrypts (Fernet = AES + HMAC) every
frame before ``pickle.loads`` once a password is set, and the agent always sets one. What it
does not bound is the *size* of a frame it buffers before checking it (the length prefix is a
signed 32-bit int), so a stranger could make the tick thread buffer — and quadratically copy —
up to 2 GiB. :func:`_cap_preauth_reads` wraps the read of connections still in the
unauthenticated set and drops one whose buffer exceeds ``MAX_PREAUTH_BYTES`` (the key exchange
is a few hundred bytes). That and the ``nextIndex`` fix are the only places touching private
(name-mangled) members of PySyncObj; the module refuses to import with another PySyncObj version.
"""

from __future__ import annotations

import logging
import socket
import time
import types
from typing import Any, Callable

from pysyncobj import version as pysyncobj_version
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

log = logging.getLogger(__name__)

USER_TIMEOUT_MS = 2000      # unacknowledged data / SYN / keepalive probes -> connection error
KEEPALIVE_IDLE_S = 1        # first keepalive probe after 1 s without traffic
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 2
PREAUTH_TIMEOUT = 5.0       # seconds to finish the key exchange and name the peer
MAX_PREAUTH = 64            # concurrent unauthenticated incoming connections
MAX_PREAUTH_BYTES = 64 * 1024

# The private PySyncObj 0.3.17 members used here (guarded, so an upgrade fails loudly at import):
_READ_ATTR = "_TcpConnection__processRead"
_BUF_ATTR = "_TcpConnection__readBuffer"
_NEXT_INDEX_ATTR = "_SyncObj__raftNextIndex"
_CLAIMS_DURABLE = frozenset({"next_node_idx", "response_vote"})
if not hasattr(TcpConnection, _READ_ATTR) or pysyncobj_version.VERSION != "0.3.17":  # pragma: no cover
    raise ImportError("PySyncObj is not 0.3.17: review cantainer_agent/transport.py and journal.py")


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


def _cap_preauth_reads(conn: TcpConnection, still_unauthenticated: Callable[[], bool]) -> None:
    original = getattr(conn, _READ_ATTR)

    def capped_read(self: TcpConnection) -> bool:
        more = original()
        if still_unauthenticated() and len(getattr(self, _BUF_ATTR, b"")) > MAX_PREAUTH_BYTES:
            log.warning("raft port: dropped an unauthenticated connection sending an oversized frame")
            self.disconnect()
            return False
        return more

    setattr(conn, _READ_ATTR, types.MethodType(capped_read, conn))


class AgentTransport(TCPTransport):
    """See the module docstring. *before_send* is called before every outgoing message."""

    def __init__(self, syncObj, selfNode, otherNodes, *, journal: Any):
        self._journal = journal  # has .sync()
        self._preauth_since: dict[TcpConnection, float] = {}
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node, message):
        if isinstance(message, dict) and message.get("type") in _CLAIMS_DURABLE:
            self._journal.sync()
            if message.get("reset") and not message.get("success"):
                message = self._rejection_from_commit(message)
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

    def _onMessageReceived(self, node, message):
        if not (isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success")
                and not message.get("reset")):
            return super()._onMessageReceived(node, message)
        next_index = getattr(self._syncObj, _NEXT_INDEX_ATTR)
        before = next_index.get(node)
        super()._onMessageReceived(node, message)
        after = next_index.get(node)
        if before is not None and after is not None and after < before:
            next_index[node] = before

    def _connectIfNecessarySingle(self, node):
        conn = self._connections.get(node)
        before = conn.state if conn is not None else None
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
        if len(self._preauth_since) >= MAX_PREAUTH:
            conn.disconnect()
            return
        super()._onNewIncomingConnection(conn)
        fd = conn.fileno()
        if fd is not None:
            try:
                tune_socket(fd)
            except OSError as exc:  # pragma: no cover
                log.debug("cannot tune raft socket: %s", exc)
        self._preauth_since[conn] = time.monotonic()
        _cap_preauth_reads(conn, lambda: conn in self._unknownConnections)

    def _onTick(self):
        self._journal.sync()  # the leader's entries of this tick (group commit), before polling
        super()._onTick()
        if self._preauth_since:
            now = time.monotonic()
            for conn, since in list(self._preauth_since.items()):
                if conn not in self._unknownConnections:
                    del self._preauth_since[conn]  # authenticated (or already dropped)
                elif now - since > PREAUTH_TIMEOUT:
                    del self._preauth_since[conn]
                    log.warning("raft port: dropped a connection that did not authenticate within %.0f s",
                                PREAUTH_TIMEOUT)
                    conn.disconnect()
