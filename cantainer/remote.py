"""Small fixed Python programs run on hosts with `python3 -c`, what the probe reads, and the unit.

They are constants: inputs travel as argv items (quoted by the connector), never spliced into code.
One probe answers everything `up` must know about a host in one round trip. Where things live on a
host is ``cantainer_agent.layout`` (shared with the agent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cantainer_agent import facts
from cantainer_agent.layout import CONFIG_FILE, bundle_dir

# How every program here and the agent itself start on a host: isolated (-I: no PYTHON* variables,
# no user site directory, no script directory on sys.path: root runs them) and without the site
# module (-S: they import nothing beyond the standard library and the bundle; ~2.5 ms less CPU per
# start, twice per host in a cold `up`).
PYTHON_FLAGS = ("-I", "-S")


def python(interpreter: str) -> list[str]:
    """The start of the argv that runs the host's *interpreter* (the inventory's ``python``)."""
    return [interpreter, *PYTHON_FLAGS]


# The probe: the agent's facts module, run standalone (`python3 -c`): one source for the facts a
# host's Python reads and those a running agent reports (API `facts`).
PROBE = Path(facts.__file__).read_text()

# Brings a host to what the plan says in one process, reading everything from stdin: a header line
# (JSON), then the blobs it announces in order — the bundle archive, the secret, its raft key
# (cantainer_agent.raftkey), the config. Each
# file is written atomically (temp file with its mode set before the first byte, then rename); the
# bundle is hashed first (it runs as root), then kept as the zip it is when it carries this Python's
# bytecode, else unpacked beside its place and renamed in; old bundles are pruned. Last, with "exec",
# the process becomes the agent's launcher (after stopping a running agent, with "stop_first"), so
# `up` spends one round trip per host on all of it.
APPLY = r"""
import json, os, signal, sys, time  # the rest where needed: a fresh host needs none
stdin = sys.stdin.buffer
line = stdin.readline()
if not line:
    sys.exit(0)  # no input: nothing to change (a probe session `up` ended)
header = json.loads(line)
def blob(size):
    data = stdin.read(size)
    if len(data) != size:
        sys.exit(f"the input ended early ({len(data)} of {size} bytes): run `cantainer up` again")
    return data
def write(path, data, mode):
    temp = f"{path}.{os.getpid()}.partial"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)
for path in header["dirs"]:
    os.makedirs(path, 0o700, exist_ok=True)
bundle = header.get("bundle")
if bundle:
    import hashlib
    try:
        from _frozen_importlib_external import MAGIC_NUMBER
    except ImportError:
        from importlib.util import MAGIC_NUMBER
    data = blob(bundle["size"])
    actual = hashlib.sha256(data).hexdigest()
    if actual != bundle["digest"]:
        sys.exit(f"the pushed agent bundle is corrupt (sha256 {actual}, expected {bundle['digest']}): "
                 "run `cantainer up` again")
    target = bundle["target"]
    def remove(path):
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    if bundle.get("magic") == MAGIC_NUMBER.hex():
        # It carries this Python's bytecode: kept as it is, run as a zip (nothing unpacked or compiled).
        remove(target)
        write(target, data, 0o644)
    else:
        import io, zipfile
        staging = target + ".partial"
        remove(staging)
        os.makedirs(staging, mode=0o755)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                path = os.path.realpath(os.path.join(staging, info.filename))
                if not path.startswith(os.path.realpath(staging) + os.sep) or info.is_dir():
                    continue  # names are ours, but never write outside the staging directory
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as handle:
                    handle.write(archive.read(info))
                os.chmod(path, (info.external_attr >> 16) & 0o777 or 0o644)
        open(os.path.join(staging, ".complete"), "w").close()
        remove(target)
        os.rename(staging, target)
    keep = set(bundle["keep"])
    parent = os.path.dirname(target)
    for entry in os.scandir(parent):
        if entry.name.startswith("cantainer_agent-") and entry.name not in keep:
            remove(entry.path)
for key in ("secret", "raft_key", "config"):
    item = header.get(key)
    if item:
        write(item["path"], blob(item["size"]), 0o600)
start = header.get("exec")
if start:
    if start.get("stop_first"):
        try:
            pid = int(open(start["pid_file"]).read().split()[0])
            if b"cantainer_agent" not in open(f"/proc/{pid}/cmdline", "rb").read():
                raise ValueError("not our agent")
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pid = None
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
    sys.stdout.flush()
    os.execv(start["argv"][0], start["argv"])
"""

# The probe and then the apply in one process (one Python start, one round trip less) for a host
# `up` has to probe: the facts line first; then, once `up` has planned every host, the apply's
# input on stdin — or none (EOF): nothing to change there. Same argv as the probe.
PROBE_THEN_APPLY = PROBE + "\nsys.stdout.flush()\n" + APPLY

# Copies bytes between stdin/stdout and the agent socket; started under sudo for non-root logins.
SOCKET_RELAY = r"""
import socket, sys, threading
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
def pump_in():
    for chunk in iter(lambda: sys.stdin.buffer.read1(65536), b""):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=pump_in, daemon=True).start()
for chunk in iter(lambda: sock.recv(65536), b""):
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
"""

# Stops the agent whose PID is in the pid file (only if that PID really is our agent) and waits.
# Prints "stopped" or "not-running".
STOP_AGENT = r"""
import os, signal, sys, time
try:
    pid = int(open(sys.argv[1]).read().split()[0])
    if b"cantainer_agent" not in open(f"/proc/{pid}/cmdline", "rb").read():
        raise ValueError("not our agent")
    os.kill(pid, signal.SIGTERM)
except (OSError, ValueError, IndexError):
    print("not-running")
    sys.exit(0)
print("stopped")
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(0)
    time.sleep(0.02)
os.kill(pid, signal.SIGKILL)
"""


# Empties each directory (and removes it unless it is a mount point, as in the lab). Refuses to
# descend into other file systems, so a mounted container rootfs is never wiped through.
REMOVE_TREES = r"""
import errno, os, sys
def remove(path, device):
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            if entry.stat(follow_symlinks=False).st_dev != device:
                sys.exit(f"refusing to remove {entry.path}: another file system is mounted there")
            remove(entry.path, device)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)
for path in sys.argv[1:]:
    if os.path.isdir(path):
        remove(path, os.stat(path).st_dev)
        try:
            os.rmdir(path)
        except OSError as error:
            if error.errno != errno.EBUSY:  # EBUSY: a mount point (as in the lab), left empty
                raise
"""


@dataclass
class CommandResult:
    """What running a fixed program on a host returned."""

    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ProbeResult:
    python: tuple[int, int, int]
    machine: str
    kernel: str
    hostname: str
    systemd: bool
    bundles: tuple[str, ...]
    secret_sha256: str | None
    config: dict | None
    has_state: bool
    agent_pid: int | None
    ssh_server_address: str | None
    nftables_error: str | None = None  # why libnftables.so.1 does not load (None: it does)
    bytecode: str | None = None  # the host Python's bytecode magic number, hex (None: an agent from before)

    @classmethod
    def parse(cls, text: str) -> "ProbeResult":
        return cls.from_document(json.loads(text))

    @classmethod
    def from_document(cls, data: dict) -> "ProbeResult":
        """From the facts document (``cantainer_agent.facts.read``: the probe's output, or an agent's)."""
        return cls(tuple(data["python"]), data["machine"], data["kernel"], data["hostname"], data["systemd"],
                   tuple(data["bundles"]), data["secret_sha256"], data["config"], data["has_state"], data["agent_pid"],
                   data["ssh_server_address"], data.get("nftables_error"), data.get("bytecode"))


def systemd_unit(interpreter: str, digest: str, cluster: str) -> str:
    """The agent's unit. KillMode=process: containers are not the agent's to take down with it."""
    return (
        "[Unit]\n"
        f"Description=cantainer agent (cluster {cluster})\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(python(interpreter))} {bundle_dir(digest)} run --config {CONFIG_FILE}\n"
        "Restart=always\nRestartSec=1\nKillMode=process\n"
        f"RuntimeDirectory=cantainer\nRuntimeDirectoryPreserve=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
