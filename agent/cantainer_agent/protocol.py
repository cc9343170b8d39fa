"""Versioned JSON-lines wire protocol between the workstation and an agent.

The agent owns this module; the workstation imports it from here (never the other way round).
It is pure: no sockets, no threads, no I/O — only encoding, decoding and dispatch of single lines.

One message per line, UTF-8 JSON object, terminated by ``\\n``, at most ``MAX_LINE`` bytes
(newline included)::

    request   {"v":1,"id":N,"method":"status","params":{},"session":{"client":"…","seq":N}}
    success   {"v":1,"id":N,"ok":true,"result":...}
    failure   {"v":1,"id":N,"ok":false,"error":{"code":"not_found","message":"..."}}

``session`` (optional, for writes) names the caller and a sequence number it keeps across retries:
a write is applied at most once however often it is sent (cluster/sessions.py). Error codes a
client acts on: ``not_found``, ``already_exists``, ``conflict`` (collides with the state),
``invalid`` (bad input), ``unavailable`` (nothing was done: safe to retry), ``outcome_unknown`` (it
may have been done: retry with the same session, or read), plus the protocol's own ``bad_request``,
``unsupported_version``, ``unknown_method``, ``too_large``, ``internal``.

A request with ``"parts": true`` accepts a large result in parts (so no line is ever near
``MAX_LINE``, whatever the cluster's size): the result's largest list (the result itself when it is
a list) goes in lines of at most ``PART_BYTES``::

    head      {"v":1,"id":N,"ok":true,"result":{... "containers": []},"more":"containers"}   ("more":"" for a list)
    items     {"v":1,"id":N,"items":[...]}        (as many as needed, in order)
    end       {"v":1,"id":N,"end":true}

``id`` is an int chosen by the client and echoed back; it is ``null`` in an error response to a
line whose id could not be read. Every malformed input (oversized, not JSON, not an object, wrong
version, bad field types, unknown method) yields an error response, never an exception escaping
:func:`dispatch`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import AgentError

PROTOCOL_VERSION = 1
MAX_LINE = 1024 * 1024  # bytes, including the trailing newline
PART_BYTES = 256 * 1024  # a result in parts: each line at most about this long

# Error codes (the "code" field of an error response).
BAD_REQUEST = "bad_request"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_METHOD = "unknown_method"
TOO_LARGE = "too_large"
NOT_LEADER = "not_leader"
UNAVAILABLE = "unavailable"          # nothing was done: safe to retry
OUTCOME_UNKNOWN = "outcome_unknown"  # it may have been done: retry with the same session, or read
INTERNAL = "internal"
INVALID = "invalid"                  # understood, but the input is wrong (a bad CIDR or name, …)
REJECTED = INVALID                   # the older name of the same code
NOT_FOUND = "not_found"
ALREADY_EXISTS = "already_exists"
CONFLICT = "conflict"                # valid, but it collides with the state (an overlap, in use, full)
COMMAND_NOT_FOUND = "command_not_found"            # a container's command does not exist (docker's exit 127)
COMMAND_NOT_EXECUTABLE = "command_not_executable"  # ... exists but cannot be executed (docker's 126)
ERROR_CODES = frozenset({INVALID, NOT_FOUND, ALREADY_EXISTS, CONFLICT, BAD_REQUEST, UNSUPPORTED_VERSION, UNKNOWN_METHOD,
                         TOO_LARGE, NOT_LEADER, UNAVAILABLE, OUTCOME_UNKNOWN, INTERNAL, COMMAND_NOT_FOUND,
                         COMMAND_NOT_EXECUTABLE})

_METHOD_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_MAX_ID = 2**53  # JSON-safe integer range


class ProtocolError(AgentError):
    """An error that travels on the wire as ``{"code": ..., "message": ...}``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: dict = field(default_factory=dict)
    session: dict | None = None
    parts: bool = False  # the client takes a large result in parts


@dataclass(frozen=True)
class Response:
    id: int | None
    ok: bool
    result: Any = None
    error: ProtocolError | None = None
    more: str | None = None  # the result continues in parts: the key of its list ("" the result itself)

    def unwrap(self) -> Any:
        """Return the result, or raise the carried :class:`ProtocolError`."""
        if self.ok:
            return self.result
        assert self.error is not None
        raise self.error


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _dumps_line(obj: dict) -> bytes:
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(INTERNAL, f"value is not JSON-serialisable: {exc}") from None
    data = text.encode("ascii") + b"\n"
    if len(data) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"message of {len(data)} bytes exceeds the {MAX_LINE}-byte limit")
    return data


def _loads_object(line: bytes | str) -> dict:
    if isinstance(line, str):
        line = line.encode("utf-8", "surrogatepass")
    if len(line) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"line of {len(line)} bytes exceeds the {MAX_LINE}-byte limit")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(BAD_REQUEST, "line is not valid UTF-8") from None
    text = text.strip()
    if not text:
        raise ProtocolError(BAD_REQUEST, "empty line")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_REQUEST, f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "message must be a JSON object")
    return obj


def _check_version(obj: dict) -> None:
    v = obj.get("v")
    if v is None:
        raise ProtocolError(BAD_REQUEST, 'missing protocol version "v"')
    if type(v) is not int:
        raise ProtocolError(BAD_REQUEST, '"v" must be an integer')
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {v} is not supported (this agent speaks {PROTOCOL_VERSION}); "
            "re-run `cantainer up` to push a matching agent",
        )


def _valid_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < _MAX_ID


# ---------------------------------------------------------------- requests


def encode_request(id: int, method: str, params: Mapping | None = None, session: Mapping | None = None,
                   parts: bool = False) -> bytes:
    """Encode one request line (client side); *parts*: the client takes a large result in parts."""
    if not _valid_id(id):
        raise ProtocolError(BAD_REQUEST, "request id must be a non-negative integer")
    if not isinstance(method, str) or not _METHOD_RE.match(method):
        raise ProtocolError(BAD_REQUEST, f"invalid method name {method!r}")
    body = {"v": PROTOCOL_VERSION, "id": id, "method": method, "params": dict(params or {})}
    if session is not None:
        body["session"] = _check_session(dict(session))
    if parts:
        body["parts"] = True
    return _dumps_line(body)


def _check_session(session: Any) -> dict:
    if (not isinstance(session, dict) or set(session) != {"client", "seq"} or not isinstance(session["client"], str)
            or not 1 <= len(session["client"]) <= 100 or not _valid_id(session["seq"])):
        raise ProtocolError(BAD_REQUEST, '"session" must be {"client": a string of 1-100 characters, '
                                         '"seq": a non-negative integer}')
    return session


def peek_id(line: bytes | str) -> int | None:
    """Best-effort extraction of a request id, to address an error response."""
    try:
        obj = _loads_object(line)
    except ProtocolError:
        return None
    rid = obj.get("id")
    return rid if _valid_id(rid) else None


def decode_request(line: bytes | str) -> Request:
    """Decode one request line (server side); raises :class:`ProtocolError`."""
    obj = _loads_object(line)
    _check_version(obj)
    rid = obj.get("id")
    if not _valid_id(rid):
        raise ProtocolError(BAD_REQUEST, '"id" must be a non-negative integer')
    method = obj.get("method")
    if not isinstance(method, str) or not _METHOD_RE.match(method):
        raise ProtocolError(BAD_REQUEST, '"method" must be a lowercase name like "status"')
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(BAD_REQUEST, '"params" must be a JSON object')
    extra = set(obj) - {"v", "id", "method", "params", "session", "parts"}
    if extra:
        raise ProtocolError(BAD_REQUEST, f"unexpected request fields: {', '.join(sorted(extra))}")
    session = _check_session(obj["session"]) if "session" in obj else None
    parts = obj.get("parts", False)
    if type(parts) is not bool:
        raise ProtocolError(BAD_REQUEST, '"parts" must be true or false')
    return Request(id=rid, method=method, params=params, session=session, parts=parts)


# --------------------------------------------------------------- responses


def encode_result(id: int | None, result: Any, parts: bool = False) -> bytes:
    """Encode a success response — in parts (see above) when allowed and it is large. Falls back to an
    error line if the result cannot be sent."""
    try:
        if parts:
            return _encode_parts(id, result)
        return _dumps_line({"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": result})
    except ProtocolError as exc:
        return encode_error(id, exc.code, exc.message)


def _encode_parts(id: int | None, result: Any) -> bytes:
    whole = {"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": result}
    lists = [k for k, v in result.items() if isinstance(v, list)] if isinstance(result, dict) else []
    if not isinstance(result, list) and not lists:
        return _dumps_line(whole)  # nothing to split
    try:
        text = json.dumps(whole, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(INTERNAL, f"value is not JSON-serialisable: {exc}") from None
    if len(text) < PART_BYTES:
        return text.encode("ascii") + b"\n"
    if isinstance(result, list):
        key, head, items = "", [], result
    else:
        key = max(lists, key=lambda k: len(result[k]))
        head, items = {**result, key: []}, result[key]
    lines = [_dumps_line({"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": head, "more": key})]
    batch: list[str] = []
    size = 0
    for item in items:
        text = json.dumps(item, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        if batch and size + len(text) > PART_BYTES:
            lines.append(_items_line(id, batch))
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        lines.append(_items_line(id, batch))
    lines.append(_dumps_line({"v": PROTOCOL_VERSION, "id": id, "end": True}))
    return b"".join(lines)


def _items_line(id: int | None, encoded: list[str]) -> bytes:
    data = (f'{{"v":{PROTOCOL_VERSION},"id":{json.dumps(id)},"items":[' + ",".join(encoded) + "]}").encode("ascii")
    if len(data) + 1 > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"one item of the result exceeds the {MAX_LINE}-byte limit")
    return data + b"\n"


def decode_part(line: bytes | str) -> list | None:
    """One line after a head with ``more``: its items, or None at the end."""
    obj = _loads_object(line)
    _check_version(obj)
    if obj.get("end") is True:
        return None
    items = obj.get("items")
    if not isinstance(items, list):
        raise ProtocolError(BAD_REQUEST, 'a part must carry "items" (or "end")')
    return items


def join_parts(response: Response, parts: list[list]) -> Any:
    """The whole result of a response that came in parts."""
    items = [item for part in parts for item in part]
    if response.more == "":
        return items
    return {**response.result, response.more: items}


def encode_error(id: int | None, code: str, message: str) -> bytes:
    """Encode an error response. Never raises (messages are truncated to fit)."""
    if not _valid_id(id):
        id = None
    message = str(message)[:4096]
    return _dumps_line(
        {"v": PROTOCOL_VERSION, "id": id, "ok": False, "error": {"code": str(code), "message": message}}
    )


def decode_response(line: bytes | str) -> Response:
    """Decode one response line (client side); raises :class:`ProtocolError` if malformed."""
    obj = _loads_object(line)
    _check_version(obj)
    rid = obj.get("id")
    if rid is not None and not _valid_id(rid):
        raise ProtocolError(BAD_REQUEST, 'response "id" must be an integer or null')
    ok = obj.get("ok")
    if ok is True:
        if "result" not in obj:
            raise ProtocolError(BAD_REQUEST, 'success response without "result"')
        more = obj.get("more")
        if more is not None and not isinstance(more, str):
            raise ProtocolError(BAD_REQUEST, '"more" must name the list that follows')
        return Response(id=rid, ok=True, result=obj["result"], more=more)
    if ok is False:
        err = obj.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            raise ProtocolError(BAD_REQUEST, 'error response without a valid "error" object')
        return Response(id=rid, ok=False, error=ProtocolError(err["code"], str(err.get("message", ""))))
    raise ProtocolError(BAD_REQUEST, 'response "ok" must be true or false')


# ---------------------------------------------------------------- dispatch

Handler = Callable[[dict], Any]


def dispatch(line: bytes | str, handlers: Mapping[str, Handler]) -> tuple[bytes, Request | None]:
    """Decode *line*, call ``handlers[method](params)`` and encode the answer.

    Returns ``(response_line, request_or_None)``. Never raises: a handler raising
    :class:`ProtocolError` yields that error; any other exception yields ``internal``.
    """
    try:
        req = decode_request(line)
    except ProtocolError as exc:
        return encode_error(peek_id(line) if exc.code != TOO_LARGE else None, exc.code, exc.message), None
    handler = handlers.get(req.method)
    if handler is None:
        known = ", ".join(sorted(handlers))
        return encode_error(req.id, UNKNOWN_METHOD, f"unknown method {req.method!r} (known: {known})"), req
    params = req.params if req.session is None else {**req.params, "session": req.session}
    try:
        result = handler(params)
    except ProtocolError as exc:
        return encode_error(req.id, exc.code, exc.message), req
    except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the connection
        return encode_error(req.id, INTERNAL, f"{type(exc).__name__}: {exc}"), req
    return encode_result(req.id, result, parts=req.parts), req
