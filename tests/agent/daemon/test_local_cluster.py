"""Three real agent processes on 127.0.0.1 (root namespace, loopback only), started with --daemon.

Node 1 bootstraps, nodes 2 and 3 join through seeds. Checks status through the unix socket,
SIGKILL + restart of a follower and of the leader, malicious pickles on the raft and join ports,
API error handling and the socket mode. Processes are killed by PID in a finalizer.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from cantainer_agent import protocol
from cantainer_agent.config import identity
from cantainer_agent.controllers.netfilter import remove_table
from tests.agent.daemon.agentctl import api_call as _api_call
from tests.agent.daemon.agentctl import pid_alive, wait_for
from tests.ports import free_ports

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT = 0.5


def api_call(sock_path: str, method: str, params: dict | None = None, timeout: float = 5.0):
    return _api_call(sock_path, method, params, timeout=timeout)


def _wait(pred, timeout: float, what: str, interval: float = 0.1):
    return wait_for(pred, timeout, what, interval)


class Node:
    def __init__(self, root: Path, index: int, raft_port: int, join_port: int, seeds: list[str], secret: Path):
        self.name = f"n{index}"
        self.dir = root / self.name
        self.dir.mkdir()
        self.config = self.dir / "agent.json"
        self.raft_port, self.join_port = raft_port, join_port
        cfg = {
            "cluster": "testc",
            "node": self.name,
            "address": "127.0.0.1",
            "raft_port": raft_port,
            "join_port": join_port,
            "seeds": seeds,
            "bootstrap": index == 1,
            "secret_file": str(secret),
            "data_dir": str(self.dir / "data"),
            "run_dir": str(self.dir / "run"),
            "log_dir": str(self.dir / "log"),
            "bundle": "test-bundle",
            "heartbeat_interval": HEARTBEAT,
        }
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        self.sock = str(self.dir / "run" / "agent.sock")
        self.pid_file = self.dir / "run" / "agent.pid"
        self.pids: list[int] = []

    def start(self, env: dict) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "cantainer_agent", "run", "--config", str(self.config), "--daemon"],
                             capture_output=True, text=True, timeout=120, env=env)
        if res.returncode == 0:
            self.pids.append(int(self.pid_file.read_text()))
        return res

    @property
    def pid(self) -> int:
        return self.pids[-1]

    def status(self) -> dict:
        return api_call(self.sock, "status", {"consistency": "stale"})

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        _wait(lambda: not pid_alive(self.pid), 10, f"{self.name} to die")

    def log_tail(self) -> str:
        try:
            return (self.dir / "log" / "agent.log").read_text()[-3000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("agents")
    secret = root / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    ports = free_ports(6)
    seeds = [f"127.0.0.1:{ports[1]}"]
    nodes = [Node(root, i + 1, ports[2 * i], ports[2 * i + 1], seeds if i else [], secret) for i in range(3)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent"))

    def cleanup() -> None:
        for n in nodes:
            for pid in n.pids:
                if pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for n in nodes:
            for pid in n.pids:
                deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        remove_table()  # the agents' nftables table, made in the machine's own namespace

    request.addfinalizer(cleanup)
    for n in nodes:
        res = n.start(env)
        assert res.returncode == 0, f"{n.name} failed to start: {res.stderr}\n{n.log_tail()}"
    return {"nodes": nodes, "env": env, "root": root, "secret": secret}


def _views(nodes: list[Node]) -> list[dict]:
    return [n.status() for n in nodes]


def _healthy(nodes: list[Node]):
    """All nodes see the same single leader and all three nodes up; returns the views."""
    views = _views(nodes)
    leaders = {v["leader"] for v in views}
    if len(leaders) != 1 or None in leaders:
        return None
    if sum(v["raft"]["role"] == "leader" for v in views) != 1:
        return None
    for v in views:
        states = {n["name"]: n["state"] for n in v["nodes"]}
        if states != {"n1": "up", "n2": "up", "n3": "up"}:
            return None
        if len(v["raft"]["members"]) != 3:
            return None
    return views


def test_cluster_forms(cluster):
    nodes = cluster["nodes"]
    views = _wait(lambda: _healthy(nodes), 20, "3 nodes up with one leader")
    v = views[0]
    assert v["leader"] == "n1"  # the bootstrap node stays leader while nobody fails
    assert {n["name"] for n in v["nodes"]} == {"n1", "n2", "n3"}
    for n in v["nodes"]:
        assert n["bundle"] == "test-bundle" and n["version"] and n["registered"]
    assert v["networks"] == [] and v["containers"] == []
    hello = api_call(nodes[1].sock, "hello")
    assert hello == {"agent_version": hello["agent_version"], "protocol": protocol.PROTOCOL_VERSION, "node": "n2",
                     "cluster": "testc", "pid": nodes[1].pid, "bundle": "test-bundle", "machine": os.uname().machine,
                     "config": identity(json.loads(nodes[1].config.read_text()))}
    with open(f"/proc/{nodes[0].pid}/cmdline", "rb") as f:
        assert b"cantainer_agent" in f.read()
    secret = cluster["secret"].read_text().strip()
    for n in nodes:
        log_text = (n.dir / "log" / "agent.log").read_text()
        assert "ready" in log_text and secret not in log_text


def test_api_socket_is_root_only_and_robust(cluster):
    node = cluster["nodes"][0]
    st = os.stat(node.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(node.sock)
        f = s.makefile("rwb")
        for line, code in ((b"not json\n", protocol.BAD_REQUEST),
                           (b'{"v":2,"id":1,"method":"status"}\n', protocol.UNSUPPORTED_VERSION),
                           (b'{"v":1,"id":2,"method":"nope"}\n', protocol.UNKNOWN_METHOD)):
            f.write(line)
            f.flush()
            resp = protocol.decode_response(f.readline())
            assert not resp.ok and resp.error.code == code
        f.write(protocol.encode_request(3, "hello"))  # the connection is still usable
        f.flush()
        assert protocol.decode_response(f.readline()).result["node"] == "n1"
        f.write(b"x" * (protocol.MAX_LINE + 10) + b"\n")
        f.flush()
        resp = protocol.decode_response(f.readline())
        assert resp.error.code == protocol.TOO_LARGE
    assert pid_alive(node.pid)


def test_malicious_pickles_are_never_loaded(cluster, tmp_path):
    nodes = cluster["nodes"]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil(), protocol=2)
    framed = zlib.compress(payload)
    raft_msgs = [struct.pack("i", len(framed)) + framed, struct.pack("i", len(payload)) + payload, payload]
    for n in nodes:
        for msg in raft_msgs:
            with socket.create_connection(("127.0.0.1", n.raft_port), timeout=5) as s:
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                # Long enough for the port's own 5 s pre-authentication deadline: a timeout here means
                # the connection was left open, which is a failure, not a close.
                s.settimeout(20)
                try:
                    data = s.recv(100)
                except ConnectionResetError:
                    data = b""  # closed with a reset
                assert data == b""  # the raft port closes the connection, answers nothing
        bad_env = json.dumps({"v": 1, "kind": "req", "ts": int(time.time()), "nonce": "0" * 32, "re": "",
                              "body": payload.decode("latin-1"), "mac": "0" * 64}).encode() + b"\n"
        for msg in (payload + b"\n", payload, bad_env):
            with socket.create_connection(("127.0.0.1", n.join_port), timeout=5) as s:
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                data = s.recv(4096)
                assert data in (b"", b'{"v":1,"kind":"reject","reason":"unauthenticated"}\n')
    time.sleep(0.3)
    assert not marker.exists()
    for n in nodes:
        assert pid_alive(n.pid)
    _wait(lambda: _healthy(nodes), 10, "cluster healthy after garbage input")


def test_daemon_reports_startup_errors(cluster):
    n1 = cluster["nodes"][0]
    # a second agent on the same data_dir
    res = subprocess.run([sys.executable, "-m", "cantainer_agent", "run", "--config", str(n1.config), "--daemon"],
                         capture_output=True, text=True, timeout=60, env=cluster["env"])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "another agent is already running" in lines[0]
    # raft port in use by n1
    cfg = json.loads(n1.config.read_text())
    other = cluster["root"] / "clash"
    cfg.update(node="clash", bootstrap=True, seeds=[], data_dir=str(other / "data"), run_dir=str(other / "run"),
               log_dir=str(other / "log"), join_port=free_ports(1)[0])
    path = cluster["root"] / "clash.json"
    path.write_text(json.dumps(cfg))
    res = subprocess.run([sys.executable, "-m", "cantainer_agent", "run", "--config", str(path), "--daemon"],
                         capture_output=True, text=True, timeout=60, env=cluster["env"])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"raft port 127.0.0.1:{n1.raft_port}" in lines[0], res.stderr
    assert not (other / "run" / "agent.sock").exists() and not (other / "run" / "agent.pid").exists()


def test_daemon_refuses_to_start_without_libnftables(cluster):
    """A host lacking libnftables1: one line naming the library and the package, nothing left behind."""
    import ctypes

    ctypes.CDLL("libnftables.so.1")  # installed on the test machine (make setup): find its file
    with open("/proc/self/maps") as maps:
        real = next(line.split()[-1] for line in maps if "libnftables" in line)
    cfg = json.loads(cluster["nodes"][0].config.read_text())
    other = cluster["root"] / "nonft"
    cfg.update(node="nonft", bootstrap=True, seeds=[], data_dir=str(other / "data"), run_dir=str(other / "run"),
               log_dir=str(other / "log"), raft_port=free_ports(1)[0], join_port=free_ports(1)[0])
    path = cluster["root"] / "nonft.json"
    path.write_text(json.dumps(cfg))
    # the library is hidden (an empty file over it) in a private mount namespace, as on a host without it
    script = 'mount --bind /dev/null "$1" && shift && exec "$@"'
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", real,
                          sys.executable, "-m", "cantainer_agent", "run", "--config", str(path), "--daemon"],
                         capture_output=True, text=True, timeout=60, env=cluster["env"])
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "libnftables.so.1" in lines[0] and "apt-get install libnftables1" in lines[0], res.stderr
    assert not (other / "run" / "agent.sock").exists() and not (other / "run" / "agent.pid").exists()


def _restart_and_rejoin(cluster, victim: Node, watcher: Node) -> None:
    nodes = cluster["nodes"]
    old_pid = victim.pid
    victim.kill9()
    _wait(lambda: {n["name"]: n["state"] for n in watcher.status()["nodes"]}[victim.name] == "down",
          10, f"{victim.name} reported down")
    res = victim.start(cluster["env"])
    assert res.returncode == 0, f"restart failed: {res.stderr}\n{victim.log_tail()}"
    assert victim.pid != old_pid
    views = _wait(lambda: _healthy(nodes), 20, f"{victim.name} rejoined, 3 up")
    mine = next(v for v in views if v["node"] == victim.name)
    assert mine["raft"]["members"] == sorted(f"127.0.0.1:{n.raft_port}" for n in nodes)
    assert "restart" in victim.log_tail()


def test_follower_sigkill_and_restart(cluster):
    nodes = cluster["nodes"]
    views = _wait(lambda: _healthy(nodes), 20, "healthy cluster")
    leader = views[0]["leader"]
    follower = next(n for n in nodes if n.name != leader)
    watcher = next(n for n in nodes if n.name == leader)
    _restart_and_rejoin(cluster, follower, watcher)


def test_leader_sigkill_new_leader_and_restart(cluster):
    nodes = cluster["nodes"]
    views = _wait(lambda: _healthy(nodes), 20, "healthy cluster")
    old_leader_name = views[0]["leader"]
    old_leader = next(n for n in nodes if n.name == old_leader_name)
    survivors = [n for n in nodes if n is not old_leader]
    old_term = views[0]["term"]
    old_leader.kill9()

    def new_leader():
        vs = [s.status() for s in survivors]
        names = {v["leader"] for v in vs}
        if len(names) == 1 and None not in names and old_leader_name not in names:
            return vs
        return None

    vs = _wait(new_leader, 10, "a new leader among the survivors")
    assert vs[0]["term"] > old_term
    assert sum(v["raft"]["role"] == "leader" for v in vs) == 1
    res = old_leader.start(cluster["env"])
    assert res.returncode == 0, f"restart failed: {res.stderr}\n{old_leader.log_tail()}"
    views = _wait(lambda: _healthy(nodes), 20, "old leader rejoined, 3 up")
    assert views[0]["leader"] != old_leader_name or views[0]["term"] > vs[0]["term"]


def test_stop_method_shuts_down_cleanly(cluster):
    nodes = cluster["nodes"]
    _wait(lambda: _healthy(nodes), 20, "healthy cluster")
    victim = next(n for n in nodes if n.status()["raft"]["role"] != "leader")
    assert api_call(victim.sock, "stop") == {"stopping": True}
    _wait(lambda: not pid_alive(victim.pid), 10, "agent to exit after stop")
    assert not os.path.exists(victim.sock) and not victim.pid_file.exists()
    res = victim.start(cluster["env"])
    assert res.returncode == 0, res.stderr
    _wait(lambda: _healthy(nodes), 20, "stopped agent back")


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                hexaddr, hexport = fields[1].split(":")
                if width == 8:
                    addr = socket.inet_ntoa(struct.pack("<I", int(hexaddr, 16)))
                else:
                    addr = "ipv6:" + hexaddr
                found.add((addr, int(hexport, 16)))
    return found


def test_raft_and_join_ports_bind_to_the_underlay_address_only(cluster):
    for n in cluster["nodes"]:
        assert _listening(n.pid) == {("127.0.0.1", n.raft_port), ("127.0.0.1", n.join_port)}
