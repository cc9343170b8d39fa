"""The connection process's protocol, shared by both sides (no I/O beyond asyncio streams).

A client connects, sends one request line (JSON) and reads one reply line. Requests::

    {"op": "run", "host": HOST, "argv": [...], "input": str|null, "timeout": s}
                                        -> {"ok", "exit_status", "stdout", "stderr"}
    {"op": "put", "host": HOST, "path": remote, "source": local path | "data": base64, "mode": int}
                                        -> {"ok"}
    {"op": "agent", "host": HOST, "socket": remote path}
                                        -> {"ok"}, then raw bytes both ways
    {"op": "exec", "host": HOST, "argv": [...], "stdin": bool, "tty": null|{"term", "cols", "rows"}}
                                        -> {"ok"}, then frames both ways

A failed request answers ``{"ok": false, "error": {"kind": "host"|"remote"|"usage", "host", "message",
"hint", "exit_status", "stderr"}}`` (errors.HostError / RemoteCommandError on the client). Frames
(``exec``): one kind byte, a 4-byte big-endian length, the payload — from the process ``O`` stdout,
``E`` stderr, ``X`` the exit status (JSON, last); from the client ``I`` stdin (empty: EOF) and ``R``
a window size (JSON ``{"cols", "rows"}``). HOST is the inventory host's fields (``host_spec``).
"""
from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

from cantainer.errors import CantainerError, HostError, RemoteCommandError
from cantainer.inventory import Host

MAX_LINE = 1 << 20
STDOUT, STDERR, EXIT, STDIN, RESIZE = b"O", b"E", b"X", b"I", b"R"
_HEADER = struct.Struct(">cI")
MAX_FRAME = 1 << 20


def line(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next frame, or None at the end of the stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    kind, size = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    try:
        return kind, await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None


def host_spec(host: Host) -> dict:
    return {name: (str(value) if isinstance(value, Path) else value) for name, value in vars(host).items()}


def host_of(spec: dict) -> Host:
    fields = dict(spec)
    for name in ("identity_file", "known_hosts"):
        fields[name] = Path(fields[name]) if fields.get(name) else None
    return Host(**fields)


def error_document(error: CantainerError) -> dict:
    document = {"kind": "usage", "message": error.message, "hint": error.hint}
    if isinstance(error, HostError):
        document.update(kind="host", host=error.host, message=error.message.removeprefix(f"{error.host}: "))
    if isinstance(error, RemoteCommandError):
        document.update(kind="remote", exit_status=error.exit_status, stderr=error.stderr)
    return document


def error_of(document: dict, argv: list[str] | None = None) -> CantainerError:
    kind = document.get("kind")
    if kind == "remote" and argv is not None:
        return RemoteCommandError(document["host"], argv, document.get("exit_status"), document.get("stderr", ""))
    if kind in ("host", "remote"):
        return HostError(document["host"], document["message"], document.get("hint", ""))
    return CantainerError(document.get("message", "the connection process failed"), document.get("hint", ""))
