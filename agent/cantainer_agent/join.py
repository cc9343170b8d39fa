"""dqlite-style join: an authenticated JSON-lines TCP service on ``address:join_port``.

Wire format (one request and one response per connection, each a single line ≤ 64 KiB)::

    {"v":1,"kind":"req","ts":<unix s>,"nonce":"<32 hex>","re":"","body":"<JSON text>","mac":"<hex>"}
    {"v":1,"kind":"resp","ts":...,"nonce":"<fresh>","re":"<request nonce>","body":"...","mac":"..."}

``mac = HMAC-SHA256(K, "cantainer-join/1" \\0 kind \\0 ts \\0 nonce \\0 re \\0 body)`` with
``K = HMAC-SHA256(cluster secret, "cantainer join key v1")`` (a key separate from the raft
password). The server checks the MAC before parsing the body; a request with a bad MAC, bad
framing or garbage is dropped (connection closed, no answer, nothing unpickled — there is no
pickle here at all) — except that a well-formed envelope with a wrong MAC gets the fixed unsigned
line ``REJECT_LINE`` so a peer holding another secret fails fast. A correctly signed request with ``|ts - now| > 60 s`` gets a signed
``clock_skew`` error; a replayed nonce is dropped. Responses are bound to the request nonce so
a client cannot be fed a replayed answer.

Request bodies ``{"method": ..., "params": {...}}``; response bodies ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": {"code", "message", ["leader_join"]}}``.

Methods
-------
``ping`` -> ``{"cluster", "node", "leader", "leader_join", "members"}``.

``join {cluster, node, address, raft_addr, join_addr, version, bundle}`` ->
``{"members": [voters' raft addrs], "already_member": bool, "leader": raft addr, "role": "voter"|"standby"}``.
While there are fewer voters than the leader's ``voters`` setting the joiner is added as a voter
(and listed in ``members``); otherwise it joins as a non-voting standby (roles.py): no raft
change, ``members`` are the voters it follows.
If the joiner's raft address is already in this node's configuration, *any* node answers with
its member list (no second add) — this also un-wedges a joiner that crashed after being added
to a one-node cluster, when the old leader can no longer lead without it. Otherwise only the
leader adds; a follower answers ``not_leader`` with the leader's join address and the client
retries there (redirect, not proxy: simpler, and the client already has bounded retries).

The joiner starts its SyncObj only after a successful answer (PySyncObj requires the node to
be in the configuration first), then registers itself in the state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import socketserver
import threading
import time
from typing import Any, Callable

from .config import NAME_RE, split_hostport
from .raft import NotLeader, RaftError, RaftNode

log = logging.getLogger(__name__)

JOIN_VERSION = 1
MAX_JOIN_LINE = 64 * 1024
MAX_SKEW = 60
MAX_CONNECTIONS = 32
_DOMAIN = b"cantainer-join/1"

# error codes (same vocabulary as protocol.py, plus join-specific ones)
BAD_REQUEST = "bad_request"
NOT_LEADER = "not_leader"
UNAVAILABLE = "unavailable"
WRONG_CLUSTER = "wrong_cluster"
CONFLICT = "conflict"
CLOCK_SKEW = "clock_skew"
UNKNOWN_METHOD = "unknown_method"
FATAL_CODES = frozenset({BAD_REQUEST, WRONG_CLUSTER, CONFLICT, CLOCK_SKEW, UNKNOWN_METHOD})


class JoinError(Exception):
    """Joining failed; the message names each seed tried and why."""


class SecretMismatch(Exception):
    """The peer answered that our request's MAC is wrong."""


class AuthError(Exception):
    """A message failed authentication or framing (never answered)."""


class BadMac(AuthError):
    """Well-formed envelope whose MAC does not verify (the peer holds another secret)."""


class _SkewError(Exception):
    pass


# Unsigned answer to a well-formed request whose MAC fails: tells a misconfigured peer at once
# that the secrets differ (reveals nothing an attacker could not learn from the open port).
REJECT_LINE = b'{"v":1,"kind":"reject","reason":"unauthenticated"}\n'


def derive_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"cantainer join key v1", hashlib.sha256).digest()


def _mac(key: bytes, kind: str, ts: int, nonce: str, re_: str, body: str) -> str:
    msg = b"\0".join([_DOMAIN, kind.encode(), str(ts).encode(), nonce.encode(), re_.encode(), body.encode()])
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def seal(key: bytes, kind: str, body: dict, re_: str = "", now: float | None = None) -> tuple[bytes, str]:
    """Sign *body*; returns (line, nonce)."""
    ts = int(time.time() if now is None else now)
    nonce = os.urandom(16).hex()
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    env = {"v": JOIN_VERSION, "kind": kind, "ts": ts, "nonce": nonce, "re": re_, "body": text,
           "mac": _mac(key, kind, ts, nonce, re_, text)}
    line = json.dumps(env, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_JOIN_LINE:
        raise ValueError("join message too large")
    return line, nonce


def open_envelope(key: bytes, line: bytes, kind: str, re_: str = "", now: float | None = None) -> tuple[dict, str]:
    """Verify a line; returns (body, nonce). Raises AuthError, or _SkewError (MAC valid, clock off)."""
    if len(line) > MAX_JOIN_LINE or not line.endswith(b"\n"):
        raise AuthError("oversized or unterminated line")
    try:
        env = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AuthError("not JSON") from None
    if not isinstance(env, dict) or env.get("v") != JOIN_VERSION or env.get("kind") != kind:
        raise AuthError("bad envelope")
    ts, nonce, r, body, mac = (env.get(k) for k in ("ts", "nonce", "re", "body", "mac"))
    if type(ts) is not int or not all(isinstance(x, str) for x in (nonce, r, body, mac)):
        raise AuthError("bad envelope fields")
    if len(nonce) != 32 or len(mac) != 64:
        raise AuthError("bad envelope fields")
    if not hmac.compare_digest(_mac(key, kind, ts, nonce, r, body), mac):
        raise BadMac("bad MAC")
    if r != re_:
        raise AuthError("response does not answer this request")
    if abs((time.time() if now is None else now) - ts) > MAX_SKEW:
        raise _SkewError(f"clocks differ by more than {MAX_SKEW} s")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise AuthError("body is not JSON") from None
    if not isinstance(parsed, dict):
        raise AuthError("body is not an object")
    return parsed, nonce


def _ok(result: Any) -> dict:
    return {"ok": True, "result": result}


def _err(code: str, message: str, **extra: Any) -> dict:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


# ----------------------------------------------------------------- server side


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

    def __init__(self, host: str, port: int, secret: bytes, handle: Callable[[str, dict], dict]):
        self._key = derive_key(secret)
        self._handle = handle
        self._replay = _ReplayCache()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
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

    def _serve_connection(self, sock: socket.socket, peer: Any) -> None:
        if not self._slots.acquire(blocking=False):
            return  # too many concurrent connections: drop
        try:
            sock.settimeout(5.0)
            line = _read_line(sock, MAX_JOIN_LINE)
            try:
                body, nonce = open_envelope(self._key, line, "req")
            except _SkewError as exc:
                # MAC is valid: tell the (legitimate) peer why; nonce unknown here, so re-parse it
                nonce = json.loads(line)["nonce"]
                sock.sendall(seal(self._key, "resp", _err(CLOCK_SKEW, f"{exc}; synchronise the clocks (NTP)"), nonce)[0])
                return
            if not self._replay.check_and_add(nonce):
                raise AuthError("replayed nonce")
            method, params = body.get("method"), body.get("params", {})
            if not isinstance(method, str) or not isinstance(params, dict):
                answer = _err(BAD_REQUEST, "body must be {method, params}")
            else:
                try:
                    answer = self._handle(method, params)
                except Exception as exc:  # noqa: BLE001
                    log.exception("join handler failed")
                    answer = _err(UNAVAILABLE, f"internal error: {type(exc).__name__}")
            sock.sendall(seal(self._key, "resp", answer, nonce)[0])
        except BadMac:
            log.warning("join port: rejected a request from %s signed with another secret", peer[0])
            try:
                sock.sendall(REJECT_LINE)
            except OSError:
                pass
        except AuthError as exc:
            log.warning("join port: dropped unauthenticated input from %s (%s)", peer[0], exc)
        except (OSError, ValueError) as exc:
            log.debug("join port: connection from %s failed: %s", peer, exc)
        finally:
            self._slots.release()


def _read_line(sock: socket.socket, limit: int) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(min(65536, limit + 1 - len(buf)))
        if not chunk:
            return bytes(buf)
        buf += chunk
        nl = buf.find(b"\n")
        if nl >= 0:
            return bytes(buf[: nl + 1])
        if len(buf) > limit:
            raise AuthError("line too long")


class JoinService:
    """Handles join-port methods against the local raft node."""

    def __init__(self, raft_getter: Callable[[], RaftNode | None], cluster: str, node: str):
        self._raft = raft_getter
        self.cluster = cluster
        self.node = node

    def handle(self, method: str, params: dict) -> dict:
        raft = self._raft()
        if method not in ("ping", "join"):
            return _err(UNKNOWN_METHOD, f"unknown join method {method!r}")
        if raft is None:
            return _err(UNAVAILABLE, f"node {self.node} is still starting")
        try:
            snap = raft.snapshot()
        except RaftError as exc:
            return _err(UNAVAILABLE, str(exc))
        leader_join = self._join_addr_of(snap, snap["leader"])
        if method == "ping":
            return _ok({"cluster": self.cluster, "node": self.node, "leader": snap["leader"],
                        "leader_join": leader_join, "members": snap["members"]})
        return self._join(raft, snap, params, leader_join)

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
            return _err(WRONG_CLUSTER, f"this is cluster {self.cluster!r}, not {p.get('cluster')!r}")
        name, raft_addr, join_addr = p.get("node"), p.get("raft_addr"), p.get("join_addr")
        if not isinstance(name, str) or not NAME_RE.match(name):
            return _err(BAD_REQUEST, f"invalid node name {name!r}")
        try:
            split_hostport(raft_addr)
            split_hostport(join_addr)
        except ValueError as exc:
            return _err(BAD_REQUEST, str(exc))
        nodes = snap["state"]["nodes"]
        rec = nodes.get(name)
        if rec is not None and rec["raft_addr"] != raft_addr:
            return _err(CONFLICT, f"node name {name!r} is already used by raft member {rec['raft_addr']}; "
                                  "pick another name or remove the old node")
        for other, orec in nodes.items():
            if other != name and orec["raft_addr"] == raft_addr:
                return _err(CONFLICT, f"raft address {raft_addr} already belongs to node {other!r}")
        if raft_addr in snap["members"]:
            return _ok({"members": snap["members"], "already_member": True, "leader": snap["leader"], "role": "voter"})
        if snap["role"] != "leader":
            if leader_join:
                return _err(NOT_LEADER, f"{self.node} is not the leader", leader_join=leader_join)
            return _err(UNAVAILABLE, "no leader known right now (election in progress?)")
        if len(snap["members"]) >= raft.max_voters:
            # Voters are capped (roles.py): join as a non-voting standby; no raft change needed.
            log.info("join: %s (%s) joins as a standby (%d voters)", name, raft_addr, len(snap["members"]))
            return _ok({"members": snap["members"], "already_member": False, "leader": raft.self_addr,
                        "role": "standby"})
        try:
            outcome = raft.add_member(raft_addr)
            members = raft.members()
        except NotLeader:
            return _err(UNAVAILABLE, "leadership changed during the join; retry")
        except RaftError as exc:
            return _err(UNAVAILABLE, str(exc))
        log.info("join: %s (%s) %s; members now %s", name, raft_addr, outcome, members)
        return _ok({"members": members, "already_member": outcome == "already", "leader": raft.self_addr,
                    "role": "voter"})


# ----------------------------------------------------------------- client side


def request(addr: str, secret: bytes, method: str, params: dict, timeout: float = 5.0) -> dict:
    """One signed round trip. Returns the response body; raises OSError/AuthError/ValueError."""
    host, port = split_hostport(addr)
    key = derive_key(secret)
    line, nonce = seal(key, "req", {"method": method, "params": params})
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(line)
        answer = _read_line(sock, MAX_JOIN_LINE)
    if not answer:
        raise AuthError("closed the connection without an answer")
    if answer == REJECT_LINE:
        raise SecretMismatch("rejected our request: its cluster secret differs from ours")
    try:
        body, _ = open_envelope(key, answer, "resp", re_=nonce)
    except _SkewError as exc:
        raise AuthError(f"answer rejected: {exc}") from None
    if not isinstance(body.get("ok"), bool):
        raise AuthError("malformed answer")
    return body


def join_cluster(seeds: list[str] | tuple[str, ...], secret: bytes, params: dict, *, deadline: float = 30.0,
                 attempt_timeout: float = 12.0, rounds: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> dict:
    """Ask *seeds* (following leader redirects) until one adds us; returns the join result.

    Bounded by *deadline* seconds (and at most *rounds* passes over the seeds, if given).
    Raises :class:`JoinError` naming every seed and its last error; fatal answers (wrong
    cluster, name conflict, clock skew, bad request) raise at once.
    """
    if not seeds:
        raise JoinError("no seeds to join through")
    end = time.monotonic() + deadline
    last: dict[str, str] = {}
    backoff = 0.2
    n = 0
    while True:
        n += 1
        mismatched = 0
        for seed in seeds:
            target, hops = seed, 0
            while target is not None and hops <= 3:
                hops += 1
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    body = request(target, secret, "join", params, timeout=min(attempt_timeout, max(remaining, 0.5)))
                except SecretMismatch as exc:
                    last[target] = str(exc)
                    mismatched += target == seed
                    break
                except (OSError, AuthError, ValueError) as exc:
                    last[target] = str(exc) or type(exc).__name__
                    break
                if body["ok"]:
                    result = body["result"]
                    if not isinstance(result, dict) or not isinstance(result.get("members"), list):
                        last[target] = "malformed join answer"
                        break
                    result["via"] = target
                    return result
                err = body.get("error") or {}
                code, message = err.get("code"), err.get("message", "")
                last[target] = f"{code}: {message}"
                if code in FATAL_CODES:
                    raise JoinError(f"join refused by {target}: {message}")
                redirect = err.get("leader_join") if code == NOT_LEADER else None
                target = redirect if isinstance(redirect, str) and redirect != target else None
        if mismatched == len(seeds):
            raise JoinError(f"every seed ({', '.join(seeds)}) rejected our requests: this node's cluster "
                            "secret differs from the cluster's (rewrite the secret file)")
        if time.monotonic() >= end or (rounds is not None and n >= rounds):
            break
        sleep(min(backoff, max(0.0, end - time.monotonic())))
        backoff = min(backoff * 2, 2.0)
    detail = "; ".join(f"{k}: {v}" for k, v in last.items()) or "no attempt completed"
    raise JoinError(f"could not join cluster through seeds {', '.join(seeds)} ({detail})")
