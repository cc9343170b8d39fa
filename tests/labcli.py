"""Driving the real CLI against a lab, as a user at a terminal would: one subprocess per command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CANTAINER = [sys.executable, "-m", "cantainer.cli"]
LAB = [sys.executable, "-m", "lab"]


def cantainer(*args: str, env: dict | None = None, timeout: float = 120,
              inventory: Path | None = None) -> subprocess.CompletedProcess:
    """`cantainer ARGS` with no stdin; `inventory` is passed the way a user would export it."""
    extra = {"CANTAINER_INVENTORY": str(inventory)} if inventory else {}
    return subprocess.run([*CANTAINER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **extra, **(env or {})}, stdin=subprocess.DEVNULL)


def cli(inventory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return cantainer(*args, inventory=inventory, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The error contract: non-zero exit, no traceback, exactly one stderr line containing `needles`."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def host_exec(lab, host: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*LAB, "exec", "--name", lab.name, host, "--", *command],
                          capture_output=True, text=True, timeout=timeout)


def ps(inventory: Path) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(ok(cli(inventory, "ps", "--all", "--json")))}


def status(inventory: Path) -> dict:
    return json.loads(ok(cantainer("status", "--json", "-i", str(inventory))))


def agent_pid(lab, host: str) -> int | None:
    from cantainer_agent import layout

    result = host_exec(lab, host, "cat", layout.PID_FILE)
    return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout.split() else None


def wait_for(condition, timeout: float = 30, interval: float = 0.3, what: str = "condition"):
    """Poll `condition()` until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


# Read on a lab host: every container's init pid and its /proc start time as pids.json recorded them,
# and whether that very process (same pid *and* start time) is still alive.
_CONTAINER_PROCESSES = r"""
import json, os, sys
root = sys.argv[1]
out = {}
for cid in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    try:
        with open(os.path.join(root, cid, "pids.json")) as handle:
            pids = json.load(handle)
    except (OSError, ValueError):
        continue
    try:
        with open(f"/proc/{pids['pid']}/stat") as handle:
            start = int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        start = None
    out[cid] = {"pid": pids["pid"], "pid_start": pids["pid_start"], "alive": start == pids["pid_start"]}
print(json.dumps(out))
"""


def container_processes(lab, host: str) -> dict[str, dict]:
    """{container id: {pid, pid_start, alive}} for the containers started on `host` since it booted."""
    from cantainer_agent import layout

    result = host_exec(lab, host, "python3", "-c", _CONTAINER_PROCESSES, f"{layout.RUN_DIR}/containers")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


_AGENT_CALL = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(float(sys.argv[3]))
sock.connect(sys.argv[1])
sock.sendall(sys.argv[2].encode())
print(sock.makefile("rb").readline().decode(), end="")
"""


def agent_call(lab, host: str, method: str, params: dict | None = None, timeout: float = 30,
               session: dict | None = None):
    """Call the agent API on `host` from inside it (its unix socket), not over the network: works on
    a cut-off host too. Returns the protocol Response (`.ok`, `.result`, `.error.code/.message`)."""
    from cantainer_agent import layout, protocol

    line = protocol.encode_request(1, method, params or {}, session=session).decode()
    result = host_exec(lab, host, "python3", "-c", _AGENT_CALL, layout.SOCKET_PATH, line, str(timeout),
                       timeout=timeout + 15)
    assert result.returncode == 0, result.stderr
    return protocol.decode_response(result.stdout)


def kill_agent(lab, host: str) -> int:
    """SIGKILL `host`'s agent (by the pid in its pid file) and wait until that process is gone."""
    pid = agent_pid(lab, host)
    assert pid is not None, f"no agent pid file on {host}"
    assert host_exec(lab, host, "kill", "-9", str(pid)).returncode == 0
    wait_for(lambda: host_exec(lab, host, "test", "-e", f"/proc/{pid}").returncode != 0, 10,
             what=f"agent {pid} on {host} to die")
    return pid


def mac_for(ip: str) -> str:
    return "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))


def overlay_entries(lab, host: str) -> str:
    """Every VXLAN FDB entry (MAC → remote VTEP) and neighbour entry on `host`'s overlay devices."""
    fdb = host_exec(lab, host, "bridge", "fdb", "show").stdout.splitlines()
    neigh = host_exec(lab, host, "ip", "neigh", "show").stdout.splitlines()
    return "\n".join([line for line in fdb if " dst " in line and "dev cvx-" in line]
                     + [line for line in neigh if "dev cvx-" in line])


def host_path(lab, host: str, path: str) -> Path:
    """`path` as `host` sees it (its private /run, /tmp, /etc/cantainer …), read from the workstation
    through the root of the host's init process: no process started, so cheap enough to poll."""
    _, entry = lab.host(host)
    assert entry.pid1 is not None, f"host {host} is not running"
    return Path(f"/proc/{entry.pid1.pid}/root") / path.lstrip("/")


def cluster_snapshot(lab, inventory: Path) -> dict:
    """What a failed command must leave unchanged: containers (`ps --all --json`), networks
    (`network ls --json`), volumes and stacks, each host's agent pid and agent config/secret, and
    the workstation's known_hosts and secret of the lab."""
    import hashlib

    from cantainer_agent import layout

    def digest(path: Path) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    hosts = {}
    for host in lab.load().hosts:
        pid_file = host_path(lab, host, layout.PID_FILE)
        hosts[host] = {"agent_pid": pid_file.read_text().split()[0] if pid_file.exists() else None,
                       "config": digest(host_path(lab, host, layout.CONFIG_FILE)),
                       "secret": digest(host_path(lab, host, layout.SECRET_FILE))}
    return {
        "containers": ps(inventory),
        "networks": json.loads(ok(cli(inventory, "network", "ls", "--json"))),
        "volumes": json.loads(ok(cli(inventory, "volume", "ls", "--json"))),
        "stacks": json.loads(ok(cli(inventory, "stack", "ls", "--json"))),
        "hosts": hosts,
        "known_hosts": digest(lab.dir / "known_hosts"),
        "secret": digest(lab.dir / "cluster.secret"),
    }


_AGENT_RAW = r"""
import base64, socket, sys
data = base64.b64decode(sys.argv[2]) + b"x" * int(sys.argv[3]) + base64.b64decode(sys.argv[4])
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(float(sys.argv[5]))
sock.connect(sys.argv[1])
sock.sendall(data)
print(sock.makefile("rb").readline().decode(), end="")
"""


def agent_raw(lab, host: str, data: bytes, filler: int = 0, tail: bytes = b"", timeout: float = 30):
    """Send raw bytes (`data`, then `filler` bytes of "x", then `tail`: too big for argv otherwise)
    to the agent's unix socket on `host`, from inside it; return the protocol Response to them."""
    import base64

    from cantainer_agent import layout, protocol

    result = host_exec(lab, host, "python3", "-c", _AGENT_RAW, layout.SOCKET_PATH, base64.b64encode(data).decode(),
                       str(filler), base64.b64encode(tail).decode(), str(timeout), timeout=timeout + 15)
    assert result.returncode == 0, result.stderr
    return protocol.decode_response(result.stdout)
