"""The container's log file: append-only, one rotation (``log`` grows to a limit, then becomes ``log.1``).

Written by the supervisor only; a full disk drops output rather than stalling the container.
"""
from __future__ import annotations

import os

from .init import write_all


class LogFile:
    """Append-only log with one rotation: <path> grows to *limit* bytes, then becomes <path>.1."""

    def __init__(self, path: str, limit: int):
        self.path, self.limit = path, limit
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        try:
            write_all(self.fd, data)
            self.size += len(data)
            if self.limit and self.size >= self.limit:
                os.replace(self.path, self.path + ".1")
                os.close(self.fd)
                self._open()
        except OSError:
            pass  # a full disk must not block the container: drop output rather than stall it
