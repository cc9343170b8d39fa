"""The join port's wire format: signed JSON lines (a leaf module: no agent imports but netaddr).

One request and one response per connection, each a single line of at most ``MAX_JOIN_LINE``::

    {"v":1,"kind":"req","ts":<unix s>,"nonce":"<32 hex>","re":"","body":"<JSON text>","mac":"<hex>"}
    {"v":1,"kind":"resp","ts":...,"nonce":"<fresh>","re":"<request nonce>","body":"...","mac":"..."}

``mac = HMAC-SHA256(K, "cantainer-join/1" \\0 kind \\0 ts \\0 nonce \\0 re \\0 body)`` with
``K = HMAC-SHA256(cluster secret, "cantainer join key v1")`` — a key separate from the raft password.
The MAC is checked before the body is parsed; a response is bound to its request's nonce; a
request more than ``MAX_SKEW`` seconds off the receiver's clock is refused. Nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import time
from typing import Any

from ..netaddr import split_hostport

JOIN_VERSION = 1
MAX_JOIN_LINE = 64 * 1024
MAX_SKEW = 60
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


class SecretMismatch(Exception):
    """The peer answered that our request's MAC is wrong."""


class AuthError(Exception):
    """A message failed authentication or framing (never answered)."""


class BadMac(AuthError):
    """Well-formed envelope whose MAC does not verify (the peer holds another secret)."""


class SkewError(Exception):
    """The MAC is valid but the clocks differ too much."""


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
    """Verify a line; returns (body, nonce). Raises AuthError, or SkewError (MAC valid, clock off)."""
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
        raise SkewError(f"clocks differ by more than {MAX_SKEW} s")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise AuthError("body is not JSON") from None
    if not isinstance(parsed, dict):
        raise AuthError("body is not an object")
    return parsed, nonce


def ok(result: Any) -> dict:
    return {"ok": True, "result": result}


def err(code: str, message: str, **extra: Any) -> dict:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


def read_line(sock: socket.socket, limit: int) -> bytes:
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


def request(addr: str, secret: bytes, method: str, params: dict, timeout: float = 5.0) -> dict:
    """One signed round trip. Returns the response body; raises OSError/AuthError/ValueError."""
    host, port = split_hostport(addr)
    key = derive_key(secret)
    line, nonce = seal(key, "req", {"method": method, "params": params})
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(line)
        answer = read_line(sock, MAX_JOIN_LINE)
    if not answer:
        raise AuthError("closed the connection without an answer")
    if answer == REJECT_LINE:
        raise SecretMismatch("rejected our request: its cluster secret differs from ours")
    try:
        body, _ = open_envelope(key, answer, "resp", re_=nonce)
    except SkewError as exc:
        raise AuthError(f"answer rejected: {exc}") from None
    if not isinstance(body.get("ok"), bool):
        raise AuthError("malformed answer")
    return body
