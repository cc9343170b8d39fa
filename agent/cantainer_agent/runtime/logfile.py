"""The container's log: JSON lines with the stream and a time stamp, size-capped with one rotation.

One record per chunk read from the container, like docker's json-file driver but not split per
line: ``{"log": "...", "stream": "stdout"|"stderr", "time": "2024-05-01T12:00:00.123456Z"}``. Bytes
that are not UTF-8 travel as surrogate escapes (``\\udcXX``) and come back exactly. ``log.jsonl``
grows to the limit, then becomes ``log.jsonl.1`` (one old file kept). Written by the supervisor
only; a full disk drops output rather than stalling the container. Containers started before this
format (``log``, raw bytes, streams merged) are read as stdout without time stamps.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterable, Iterator, NamedTuple

from .linux import write_all  # not from init: the agent imports this module, not the container init

NAME = "log.jsonl"
LEGACY_NAME = "log"
STREAMS = ("stdout", "stderr")


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, fixed width: comparing the strings compares the times."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1e6):06d}Z"


def encode(data: bytes, stream: str, when: float) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    return json.dumps({"log": text, "stream": stream, "time": timestamp(when)}).encode("ascii") + b"\n"


class Record(NamedTuple):
    time: str      # "" for a legacy log
    stream: str
    data: bytes


def decode(line: bytes) -> Record | None:
    """A record from one complete line; None for a line that is not one (a torn write)."""
    try:
        obj = json.loads(line)
        return Record(str(obj["time"]), str(obj["stream"]), obj["log"].encode("utf-8", "surrogateescape"))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
        return None


class LogFile:
    """Append-only JSON-lines log with one rotation: <path> grows to *limit* bytes, then becomes <path>.1."""

    def __init__(self, path: str, limit: int):
        self.path, self.limit = path, limit
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes, stream: str = "stdout") -> None:
        record = encode(data, stream, time.time())
        try:
            write_all(self.fd, record)
            self.size += len(record)
            if self.limit and self.size >= self.limit:
                os.replace(self.path, self.path + ".1")
                os.close(self.fd)
                self._open()
        except OSError:
            pass  # a full disk must not block the container: drop output rather than stall it


def path_in(container_dir: str) -> str:
    """The container's current log file: the JSON one, or a legacy raw one if that is what exists."""
    current = os.path.join(container_dir, NAME)
    legacy = os.path.join(container_dir, LEGACY_NAME)
    return legacy if not os.path.exists(current) and os.path.exists(legacy) else current


def is_legacy(path: str) -> bool:
    return os.path.basename(path) == LEGACY_NAME


class Reader:
    """Reads the records of one log file from where it stopped; follows a rotation (``<path>`` is
    renamed to ``<path>.1`` and a new one begins) once the old file is read to its end."""

    def __init__(self, path: str, start_at_rotated: bool = True):
        self.path = path
        self.legacy = is_legacy(path)
        self._pending = b""
        self._files: list = []
        if start_at_rotated and os.path.exists(path + ".1"):
            self._files.append(open(path + ".1", "rb"))
        self._current = self._open_current()

    def _open_current(self):
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            return None

    def read(self) -> list[Record]:
        """Every complete record available now (an empty list: nothing new yet)."""
        records: list[Record] = []
        while self._files:  # the rotated file first, to its end
            records += self._parse(self._files[0].read(), final=True)
            self._files.pop(0).close()
        if self._current is None:
            self._current = self._open_current()
            if self._current is None:
                return records
        records += self._parse(self._current.read(), final=False)
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self._current.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:  # what we have open is log.1 now: finish it, then start on the new file
            records += self._parse(self._current.read(), final=True)
            self._current.close()
            self._current = self._open_current()
            if self._current is not None:
                records += self._parse(self._current.read(), final=False)
        return records

    def _parse(self, data: bytes, final: bool) -> list[Record]:
        if self.legacy:
            return [Record("", "stdout", data)] if data else []
        data = self._pending + data
        lines = data.split(b"\n")
        self._pending = b"" if final else lines.pop()
        return [record for line in lines if line and (record := decode(line)) is not None]

    def close(self) -> None:
        for handle in self._files + ([self._current] if self._current else []):
            handle.close()
        self._files, self._current = [], None


def read_all(path: str, streams: Iterable[str] = STREAMS) -> bytes:
    """The output of the selected streams, in the order it was written (for tools and tests)."""
    wanted = set(streams)
    reader = Reader(path)
    try:
        return b"".join(record.data for record in reader.read() if record.stream in wanted)
    finally:
        reader.close()


def lines(records: Iterable[Record]) -> Iterator[Record]:
    """The records as lines: split at line ends, and a partial line joined with its continuation on
    the same stream (it keeps the time of its first part); a last partial line comes at the end."""
    pending: dict[str, Record] = {}
    for record in records:
        data, start = record.data, 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end + 1]
            before = pending.pop(record.stream, None)
            line = Record(before.time, record.stream, before.data + piece) if before else \
                Record(record.time, record.stream, piece)
            if end < 0:
                pending[record.stream] = line
                break
            yield line
            start = end + 1
    yield from pending.values()
