"""A cantainer cluster on a fresh lab for one benchmark group, and ways to look into its hosts.

`cluster(name, hosts)` makes the lab, runs `cantainer up` on it and removes everything afterwards
(`cantainer down --purge`, then `lab.down()`), whatever happens.

The other helpers reach into a lab host *from this process*, without SSH or a subprocess, so
measurements are not dominated by start-up costs: a lab host's PID 1 (its sshd) lives in the host's
mount, PID and network namespaces, so ``/proc/<pid1>/root`` is the host's file system (its private
/run included) and ``/proc/<pid1>/root/proc`` is its PID namespace's /proc. From there we read the
agent's pid file, the runtime's ``pids.json`` (the container's init pid as the host sees it) and the
agent's unix socket (a path-based unix socket does not depend on the caller's namespaces).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from bench.up_vs_ansible import CANTAINER, _run
from cantainer_agent import layout, protocol
from lab.lab import Lab

CLONE_NEWNET = 0x40000000
LAB_PREFIX_ENV = "CANTAINER_BENCH_LAB"  # e.g. "spb": this run's labs are spbu3, spbov, … (others' stay untouched)


def lab_name(default: str, tag: str) -> str:
    """The lab a group uses: *default* (bup3, bov, …), or $CANTAINER_BENCH_LAB + *tag* when set, so
    several people can run benchmarks on one machine without touching each other's labs."""
    prefix = os.environ.get(LAB_PREFIX_ENV, "")
    return f"{prefix}{tag}" if prefix else default


@contextlib.contextmanager
def cluster(name: str, hosts: int, log=print) -> Iterator[tuple[Lab, Path]]:
    """A lab of `hosts` hosts with a formed cantainer cluster; yields (lab, inventory path). CLI calls
    meanwhile share a connection process of their own (a private XDG_RUNTIME_DIR), stopped afterwards."""
    lab = Lab(name)
    lab.down()  # a leftover of a crashed run
    inventory = lab.inventory_file
    with private_connection_process():
        try:
            inventory = lab.up(hosts)
            _run([str(CANTAINER), "up", str(inventory)], timeout=900)
            yield lab, inventory
        finally:
            try:
                if inventory.exists():
                    _run([str(CANTAINER), "down", "--purge", "-i", str(inventory)], timeout=900)
            except Exception as error:  # noqa: BLE001 - lab.down() below removes whatever is left anyway
                log(f"  cantainer down --purge on lab {name} failed ({error}); removing the lab anyway")
            finally:
                lab.down()


@contextlib.contextmanager
def private_connection_process() -> Iterator[Path]:
    """The CLI's connection process (cantainer/persist/) in a directory of this run, stopped by its pid."""
    import shutil
    import signal
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="cantainer-bench-run-"))
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        yield runtime
    finally:
        if saved is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
        for lock in runtime.glob("cantainer/conn-*.lock"):
            try:
                pid = int(lock.read_text().split()[0])
                if b"cantainer.persist.server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                pass
        shutil.rmtree(runtime, ignore_errors=True)


def host_root(lab: Lab, host: str) -> str:
    """The host's file system as this process sees it: /proc/<its PID 1>/root."""
    _, entry = lab.host(host)
    return f"/proc/{entry.pid1.pid}/root"


def host_netns(lab: Lab, host: str) -> str:
    """The host's (underlay) network namespace."""
    _, entry = lab.host(host)
    return f"/proc/{entry.pid1.pid}/ns/net"


def agent_pid(lab: Lab, host: str) -> int:
    """The agent's pid in the host's PID namespace (read it under host_root(lab, host) + "/proc")."""
    return int(Path(host_root(lab, host) + layout.PID_FILE).read_text().split()[0])


def agent_cpu_seconds(lab: Lab, host: str) -> float:
    """CPU time (user + system, all threads) the host's agent process has used so far."""
    pid = agent_pid(lab, host)
    fields = Path(f"{host_root(lab, host)}/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cores(lab: Lab, hosts: list[str], seconds: float) -> float:
    """Cores the agents of *hosts* use together while nobody asks them anything, over *seconds*."""
    import time

    before = {h: agent_cpu_seconds(lab, h) for h in hosts}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return sum(agent_cpu_seconds(lab, h) - before[h] for h in hosts) / elapsed


def container_netns(lab: Lab, host: str, container_id: str) -> str:
    """The network namespace of a running container, from the runtime's pids.json on its host."""
    root = host_root(lab, host)
    pids = json.loads(Path(f"{root}{layout.RUN_DIR}/containers/{container_id}/pids.json").read_text())
    return f"{root}/proc/{pids['pid']}/ns/net"


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns into a network namespace failed")


def socket_in_netns(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside `netns`; it stays there while this thread switches back at once."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


class AgentSocket:
    """The agent API (JSON lines, cantainer_agent.protocol) on a lab host's unix socket, directly."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(host_root(lab, host) + layout.SOCKET_PATH)
        self.file = self.sock.makefile("rwb")
        self._ids = itertools.count(1)

    def call(self, method: str, params: dict | None = None, session: dict | None = None):
        self.file.write(protocol.encode_request(next(self._ids), method, params or {}, session))
        self.file.flush()
        return protocol.decode_response(self.file.readline(protocol.MAX_LINE + 1)).unwrap()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> "AgentSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
