"""Processes of the lab, always addressed by PID (never by name).

A PID is only trusted together with its start time (field 22 of /proc/PID/stat), so a PID recycled
by an unrelated process after a crash is never signalled.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> "ProcessRef | None":
        start = start_time(pid)
        return cls(pid, start) if start is not None else None

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time

    def to_json(self) -> list[int]:
        return [self.pid, self.start_time]

    @classmethod
    def from_json(cls, data: list[int] | None) -> "ProcessRef | None":
        return cls(int(data[0]), int(data[1])) if data else None


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


def pids_in_netns(netns_inode: int) -> list[int]:
    """Every process whose network namespace is the one with this inode."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == netns_inode:
                found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def kill_and_wait(refs: list[ProcessRef], timeout: float = 5.0) -> list[ProcessRef]:
    """SIGKILL each live process and wait until all are gone; return those still alive at timeout."""
    for ref in refs:
        if ref.alive():
            try:
                os.kill(ref.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    remaining = [ref for ref in refs if ref.alive()]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.01)
        _reap_own_children()
        remaining = [ref for ref in remaining if ref.alive()]
    return remaining


def _reap_own_children() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
