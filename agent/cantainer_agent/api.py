"""Local API: JSON lines (see protocol.py) on the unix socket ``run_dir/agent.sock``.

The socket is created with mode 0600 (umask 0177 around ``bind``, then ``chmod``), so only root
reaches it; the workstation gets there over SSH (direct-streamlocal). One thread per connection;
a connection may carry any number of requests, answered in order.

Methods
-------
``hello``  -> ``{"agent_version", "protocol", "node", "cluster", "pid", "bundle"}``
``status`` -> ``{"node", "cluster", "leader": name|null, "term", "commit_index",
              "raft": {"role", "self", "leader_addr", "members", "connected", "has_quorum",
                       "last_applied", "log_len", "ready", "voters"},
              "nodes": [{"name", "address", "raft_addr", "role", "state": "up"|"down",
                         "version", "bundle", "last_seen", "joined_at", "registered"}],
              "networks": [], "containers": []}``
``stop``   -> ``{"stopping": true}``, then the agent shuts down gracefully.

Writes that must reach the leader are replicated SyncObj calls; PySyncObj forwards them from a
follower to the leader itself (see raft.py).
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from typing import Any, Callable, Mapping

from . import protocol
from .liveness import down_after
from .views import container_view, network_views

log = logging.getLogger(__name__)


class AfterReply:
    """Handler result wrapper: send *result*, then call *action* (e.g. shut down)."""

    def __init__(self, result: Any, action: Callable[[], None]):
        self.result = result
        self.action = action


def build_status(*, node: str, cluster: str, snap: dict, now: float, heartbeat_interval: float,
                 voters: int) -> dict:
    """Pure: turn a raft snapshot (RaftNode.snapshot()) into the ``status`` result."""
    state = snap["state"]
    leader_addr = snap["leader"]
    members = set(snap["members"])
    up_window = down_after(heartbeat_interval, len(state["nodes"]))
    nodes = []
    seen_addrs = set()
    for name in sorted(state["nodes"]):
        rec = state["nodes"][name]
        raft_addr = rec["raft_addr"]
        seen_addrs.add(raft_addr)
        if raft_addr == snap["self"]:
            role = snap["role"]
        elif raft_addr == leader_addr:
            role = "leader"
        elif raft_addr in members:
            role = "follower"
        else:
            role = "standby"  # registered, not a voter: a non-voting member (roles.py)
        is_self = name == node
        up = is_self or (now - rec["heartbeat"]) < up_window
        nodes.append({
            "name": name,
            "address": rec["address"],
            "raft_addr": raft_addr,
            "role": role,
            "state": "up" if up else "down",
            "version": rec["version"],
            "bundle": rec["bundle"],
            "last_seen": now if is_self else rec["heartbeat"],
            "overlay": rec.get("overlay"),
            "joined_at": rec["joined_at"],
            "registered": True,
        })
    for addr in sorted(members - seen_addrs):  # added to raft, not registered yet
        is_self = addr == snap["self"]
        nodes.append({
            "name": node if is_self else addr, "address": addr.rpartition(":")[0], "raft_addr": addr,
            "role": snap["role"] if is_self else ("leader" if addr == leader_addr else "follower"),
            "state": "up" if is_self else "down", "version": None, "bundle": None,
            "last_seen": now if is_self else None, "joined_at": None, "registered": False,
        })
    leader_name = None
    for n in nodes:
        if n["raft_addr"] == leader_addr and n["registered"]:
            leader_name = n["name"]
    return {
        "node": node,
        "cluster": cluster,
        "leader": leader_name,
        "term": snap["term"],
        "commit_index": snap["commit_index"],
        "raft": {
            "role": snap["role"],
            "self": snap["self"],
            "leader_addr": leader_addr,
            "members": snap["members"],
            "connected": snap["connected"],
            "has_quorum": snap["has_quorum"],
            "last_applied": snap["last_applied"],
            "log_len": snap["log_len"],
            "ready": snap["ready"],
            "voters": voters,
        },
        "nodes": nodes,
        "networks": network_views(state),
        "containers": [container_view(record) for _, record in sorted(state["containers"].items())],
    }


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 32

    def server_bind(self) -> None:
        old = os.umask(0o177)
        try:
            super().server_bind()
        finally:
            os.umask(old)
        os.chmod(self.server_address, 0o600)


def _claim_socket_path(path: str) -> None:
    """Remove a stale socket; refuse if a live agent answers on it."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listening: stale
        return
    finally:
        probe.close()
    raise OSError(f"another agent is already serving {path}")


class ApiServer:
    """Binds in the constructor (fail fast), serves after :meth:`start`."""

    def __init__(self, path: str, handlers: Mapping[str, Callable[[dict], Any]]):
        self.path = path
        self._handlers = handlers
        _claim_socket_path(path)
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._serve(self.rfile, self.wfile)

        self._server = _UnixServer(path, Handler)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="api-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self, rfile: Any, wfile: Any) -> None:
        after: list[Callable[[], None]] = []

        def capture(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
            def inner(params: dict) -> Any:
                res = fn(params)
                if isinstance(res, AfterReply):
                    after.append(res.action)
                    return res.result
                return res
            return inner

        handlers = {name: capture(fn) for name, fn in self._handlers.items()}
        while True:
            try:
                line = rfile.readline(protocol.MAX_LINE + 1)
            except OSError:
                return
            if not line:
                return
            if len(line) > protocol.MAX_LINE:
                self._write(wfile, protocol.encode_error(None, protocol.TOO_LARGE,
                                                         f"request exceeds {protocol.MAX_LINE} bytes"))
                return  # cannot resynchronise inside an oversized line
            if not line.strip():
                continue
            response, _req = protocol.dispatch(line, handlers)
            if not self._write(wfile, response):
                return
            while after:
                action = after.pop()
                try:
                    action()
                except Exception:  # noqa: BLE001
                    log.exception("post-reply action failed")

    @staticmethod
    def _write(wfile: Any, data: bytes) -> bool:
        try:
            wfile.write(data)
            wfile.flush()
            return True
        except OSError:
            return False
