"""Real agent processes on loopback addresses for the raft tests (and bench/raft_*.py).

Each agent runs ``python -m cantainer_agent run --daemon`` with its own data/run/log dirs, on its
own 127.0.0.x address (the same raft and join ports on every address, as on real hosts),
optionally inside a network namespace made by :class:`Netns`, where policy-routing rules
can make an address vanish (see :meth:`Netns.vanish`). Processes are stopped by PID only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cantainer_agent import protocol

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT = 0.5


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except (OSError, protocol.ProtocolError, KeyError, ValueError, TypeError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")


def api_call(sock_path: str, method: str, params: dict | None = None, timeout: float = 8.0):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        f = s.makefile("rwb")
        f.write(protocol.encode_request(1, method, params or {}))
        f.flush()
        resp = protocol.decode_response(f.readline())
    return resp.unwrap()


def free_port_pair(addresses: list[str], netns: "Netns | None" = None) -> tuple[int, int]:
    """Two consecutive-ish ports free on every address (probed on 127.0.0.1 in the root
    namespace; inside a fresh namespace everything is free)."""
    while True:
        s1, s2 = socket.socket(), socket.socket()
        try:
            s1.bind(("127.0.0.1", 0))
            s2.bind(("127.0.0.1", 0))
            ports = (s1.getsockname()[1], s2.getsockname()[1])
        finally:
            s1.close()
            s2.close()
        if netns is not None:
            return ports
        ok = True
        for addr in addresses:
            for p in ports:
                t = socket.socket()
                try:
                    t.bind((addr, p))
                except OSError:
                    ok = False
                finally:
                    t.close()
        if ok:
            return ports


class Netns:
    """A private network namespace with only ``lo``; its ``local`` routing rule is moved from
    priority 0 to 100 so that rules placed before it can blackhole loopback addresses."""

    def __init__(self) -> None:
        self.name = f"cntr-rt-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.ip("link", "set", "lo", "up")
            self.ip("rule", "del", "pref", "0", "lookup", "local")
            self.ip("rule", "add", "pref", "100", "lookup", "local")
        except BaseException:
            self.delete()
            raise

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def vanish(self, address: str) -> None:
        """Nothing sent from *address* is delivered any more (its SYN-ACKs, ACKs, RSTs, FINs):
        for its peers the host has lost power."""
        self.ip("rule", "add", "pref", "10", "from", address, "blackhole")

    def cut(self, address: str) -> None:
        """Partition: nothing from or to *address* is delivered."""
        self.ip("rule", "add", "pref", "10", "from", address, "blackhole")
        self.ip("rule", "add", "pref", "11", "to", address, "blackhole")

    def heal(self, address: str) -> None:
        for pref, direction in (("10", "from"), ("11", "to")):
            subprocess.run(["ip", "-n", self.name, "rule", "del", "pref", pref, direction, address, "blackhole"],
                           capture_output=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class Agent:
    def __init__(self, root: Path, name: str, address: str, raft_port: int, join_port: int, seeds: list[str],
                 secret: Path, bootstrap: bool, netns: Netns | None = None, extra: dict | None = None):
        self.name = name
        self.address = address
        self.dir = root / name
        self.dir.mkdir()
        self.config = self.dir / "agent.json"
        self.raft_port, self.join_port = raft_port, join_port
        self.raft_addr = f"{address}:{raft_port}"
        self.netns = netns
        cfg = {
            "cluster": "rt", "node": name, "address": address, "raft_port": raft_port, "join_port": join_port,
            "seeds": seeds, "bootstrap": bootstrap, "secret_file": str(secret),
            "data_dir": str(self.dir / "data"), "run_dir": str(self.dir / "run"), "log_dir": str(self.dir / "log"),
            "bundle": "test-bundle", "heartbeat_interval": HEARTBEAT, **(extra or {}),
        }
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        self.sock = str(self.dir / "run" / "agent.sock")
        self.pid_file = self.dir / "run" / "agent.pid"
        self.pids: list[int] = []

    launcher: list[str] = [sys.executable, "-m", "cantainer_agent"]  # bench/ may substitute a patched one

    def _argv(self) -> list[str]:
        argv = [*self.launcher, "run", "--config", str(self.config), "--daemon"]
        return (self.netns.prefix() + argv) if self.netns else argv

    def start_async(self, env: dict) -> subprocess.Popen:
        return subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def finish_start(self, proc: subprocess.Popen) -> None:
        _out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            self.pids.append(int(self.pid_file.read_text()))
            return
        raise AssertionError(f"{self.name} failed to start: {err}\n{self.log_tail()}")

    def start(self, env: dict) -> None:
        self.finish_start(self.start_async(env))

    @property
    def pid(self) -> int:
        return self.pids[-1]

    @property
    def alive(self) -> bool:
        return bool(self.pids) and pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill9(self, wait: bool = True) -> None:
        os.kill(self.pid, signal.SIGKILL)
        if wait:
            wait_for(lambda: not pid_alive(self.pid), 10, f"{self.name} to die")

    def api(self, method: str, params: dict | None = None, timeout: float = 8.0):
        return api_call(self.sock, method, params, timeout)

    def status(self) -> dict:
        """This agent's own view (a stale read: a cut-off agent answers it, a linearizable one it refuses)."""
        return self.api("status", {"consistency": "stale"}, timeout=3.0)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.dir / "log" / "agent.log").read_text()[-n:]
        except OSError:
            return ""


class Cluster:
    """*n* agents on 127.0.0.(base+1..base+n); the first bootstraps, the others join it."""

    def __init__(self, root: Path, n: int, base: int, netns: Netns | None = None, extra: dict | None = None):
        self.root = root
        self.netns = netns
        self.secret = root / "secret"
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        addresses = [f"127.0.0.{base + i + 1}" for i in range(n)]
        raft_port, join_port = free_port_pair(addresses, netns)
        seeds = [f"{addresses[0]}:{join_port}"]
        self.agents = [Agent(root, f"n{i + 1}", a, raft_port, join_port, seeds if i else [], self.secret, i == 0,
                             netns, extra) for i, a in enumerate(addresses)]
        self.env = dict(os.environ, PYTHONPATH=str(REPO / "agent"))
        self.voters = (extra or {}).get("voters", 3)

    def start(self) -> "Cluster":
        for a in self.agents:
            a.start(self.env)
        self.wait_healthy()
        return self

    def by_addr(self, raft_addr: str) -> Agent:
        return next(a for a in self.agents if a.raft_addr == raft_addr)

    def views(self, agents: list[Agent] | None = None) -> list[dict]:
        return [a.status() for a in (agents or self.agents)]

    def leader_among(self, agents: list[Agent]) -> Agent | None:
        """The single leader every one of *agents* agrees on (or None)."""
        views = self.views(agents)
        addrs = {v["raft"]["leader_addr"] for v in views}
        if len(addrs) != 1 or None in addrs:
            return None
        leader = self.by_addr(addrs.pop())
        view_of_leader = next((v for a, v in zip(agents, views, strict=True) if a is leader), None)
        if view_of_leader is not None and view_of_leader["raft"]["role"] != "leader":
            return None
        return leader

    def wait_healthy(self, timeout: float = 30.0) -> Agent:
        def healthy():
            views = self.views()
            leader = self.leader_among(self.agents)
            if leader is None:
                return None
            voters = {tuple(v["raft"]["members"]) for v in views}
            if len(voters) != 1 or len(voters.pop()) != min(len(self.agents), self.voters):
                return None
            for v in views:  # every member (voter or standby) is connected to every other voter
                if set(v["raft"]["connected"]) != set(v["raft"]["members"]) - {v["raft"]["self"]}:
                    return None
            return leader
        return wait_for(healthy, timeout, "a healthy cluster")

    def kill_all(self) -> None:
        for a in self.agents:
            if a.alive:
                a.kill9(wait=False)
        for a in self.agents:
            wait_for(lambda a=a: not pid_alive(a.pid), 10, f"{a.name} to die")

    def start_all_parallel(self, agents: list[Agent] | None = None) -> None:
        procs = [(a, a.start_async(self.env)) for a in (agents or self.agents)]
        for a, p in procs:
            a.finish_start(p)

    def cleanup(self) -> None:
        for a in self.agents:
            for pid in a.pids:
                if pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for a in self.agents:
            for pid in a.pids:
                deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
        if self.netns is None and os.geteuid() == 0:
            # agents in the machine's own namespace made their nftables table there (a private
            # namespace takes its table with it when deleted)
            from cantainer_agent.controllers.netfilter import remove_table

            remove_table()

    def logs(self) -> str:
        return "\n".join(f"--- {a.name} ---\n{a.log_tail()}" for a in self.agents)
