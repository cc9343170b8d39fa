"""Small fixed Python programs run on hosts with `python3 -c`, what the probe reads, and the unit.

They are constants: inputs travel as argv items (quoted by the connector), never spliced into code.
One probe answers everything `up` must know about a host in one round trip. Where things live on a
host is ``cantainer_agent.layout`` (shared with the agent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from cantainer_agent.layout import CONFIG_FILE, bundle_dir

PROBE = r"""
import ctypes, hashlib, json, os, platform, sys
def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None
def agent_pid():
    raw = read(sys.argv[1])
    try:
        pid = int(raw.split()[0])
        cmdline = read(f"/proc/{pid}/cmdline") or b""
    except (AttributeError, IndexError, ValueError):
        return None
    return pid if b"cantainer_agent" in cmdline else None
def nftables():
    try:
        ctypes.CDLL("libnftables.so.1")
    except OSError as error:
        return str(error)
    return None
config = read(sys.argv[2])
conn = os.environ.get("SSH_CONNECTION", "").split()
print(json.dumps({
    "python": list(sys.version_info[:3]),
    "machine": platform.machine(),
    "kernel": platform.release(),
    "hostname": platform.node(),
    "systemd": os.path.isdir("/run/systemd/system"),
    "bundles": sorted(e.name for e in os.scandir(sys.argv[3]) if os.path.isfile(os.path.join(e.path, ".complete")))
               if os.path.isdir(sys.argv[3]) else [],
    "secret_sha256": hashlib.sha256(read(sys.argv[5]) or b"").hexdigest() if read(sys.argv[5]) else None,
    "config": json.loads(config) if config else None,
    "has_state": os.path.exists(sys.argv[4]),
    "agent_pid": agent_pid(),
    "ssh_server_address": conn[2] if len(conn) == 4 else None,
    "nftables_error": nftables(),
}))
"""

# Unpacks a pushed bundle next to its final place, then renames it in: a half-written bundle is
# never visible under its real name. The archive is hashed again first (what arrived is what was
# built: the bundle is named by that hash and runs as root); extraction is still filtered.
INSTALL_BUNDLE = r"""
import hashlib, os, shutil, sys, tarfile
archive, target, digest = sys.argv[1], sys.argv[2], sys.argv[3]
with open(archive, "rb") as handle:
    actual = hashlib.file_digest(handle, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
        else hashlib.sha256(handle.read()).hexdigest()
if actual != digest:
    os.unlink(archive)
    sys.exit(f"the pushed agent bundle is corrupt (sha256 {actual}, expected {digest}): run `cantainer up` again")
staging = target + ".partial"
shutil.rmtree(staging, ignore_errors=True)
os.makedirs(staging, mode=0o755)
with tarfile.open(archive) as tar:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(staging, filter="data")
    else:
        tar.extractall(staging)
open(os.path.join(staging, ".complete"), "w").close()
shutil.rmtree(target, ignore_errors=True)
os.rename(staging, target)
os.unlink(archive)
"""

# Removes agent bundles other than the ones named (the new one and the one still running).
PRUNE_BUNDLES = r"""
import os, shutil, sys
keep = set(sys.argv[2:])
for entry in os.scandir(sys.argv[1]):
    if entry.name.startswith("cantainer_agent-") and entry.name not in keep:
        shutil.rmtree(entry.path, ignore_errors=True)
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

    @classmethod
    def parse(cls, text: str) -> "ProbeResult":
        data = json.loads(text)
        return cls(tuple(data["python"]), data["machine"], data["kernel"], data["hostname"], data["systemd"],
                   tuple(data["bundles"]), data["secret_sha256"], data["config"], data["has_state"], data["agent_pid"],
                   data["ssh_server_address"], data.get("nftables_error"))


def systemd_unit(python: str, digest: str, cluster: str) -> str:
    """The agent's unit. KillMode=process: containers are not the agent's to take down with it."""
    return (
        "[Unit]\n"
        f"Description=cantainer agent (cluster {cluster})\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={python} {bundle_dir(digest)} run --config {CONFIG_FILE}\n"
        "Restart=always\nRestartSec=1\nKillMode=process\n"
        f"RuntimeDirectory=cantainer\nRuntimeDirectoryPreserve=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
