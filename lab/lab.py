"""A lab: N fake hosts on one machine, each a set of namespaces with its own sshd.

Layout on disk (``$CANTAINER_LAB_ROOT``, default /var/lib/cantainer-lab, one folder per lab):
``state.json`` (what exists, written before each thing is created), ``id_ed25519`` (the lab's
login key), ``known_hosts``, ``inventory.toml`` and ``hosts/hN/`` (host key, sshd_config, console
log, and the per-host directories bound over /root, /var/lib/cantainer, /etc/cantainer and
/var/log/cantainer, which survive a crash like a disk would).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import procs, underlay
from lab.hostinit import cgroup_mount_points
from lab.procs import ProcessRef

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,6}$")
MAX_HOSTS = 250
HOST_MTU = 1500
SSH_READY_TIMEOUT = 10.0
HOSTINIT = Path(__file__).with_name("hostinit.py")
# Directories a host keeps private, on disk; /run and /tmp are private tmpfs made by hostinit.
PRIVATE_DIRS = {
    "root": "/root",
    "var-lib-cantainer": "/var/lib/cantainer",
    "etc-cantainer": "/etc/cantainer",
    "var-log-cantainer": "/var/log/cantainer",
}


class LabError(Exception):
    """Something the user asked of the lab cannot be done; the message says what and how to fix."""


def lab_root() -> Path:
    return Path(os.environ.get("CANTAINER_LAB_ROOT", "/var/lib/cantainer-lab"))


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates namespaces and links) — run it with sudo")


def validate_name(name: str) -> str:
    if not LAB_NAME_RE.match(name):
        raise LabError(f"lab name {name!r} is invalid — use 1-7 lowercase letters or digits, starting with a letter")
    return name


@dataclass
class HostState:
    name: str
    address: str
    init: ProcessRef | None = None  # the `unshare` process; its only child is the host's PID 1 (sshd)
    pid1: ProcessRef | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "address": self.address,
                "init": self.init.to_json() if self.init else None,
                "pid1": self.pid1.to_json() if self.pid1 else None}

    @classmethod
    def from_json(cls, data: dict) -> "HostState":
        return cls(
            data["name"],
            data["address"],
            ProcessRef.from_json(data.get("init")),
            ProcessRef.from_json(data.get("pid1")),
        )

    def running(self) -> bool:
        return bool(self.pid1 and self.pid1.alive())


@dataclass
class LabState:
    name: str
    subnet: str
    hosts: dict[str, HostState] = field(default_factory=dict)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.ip_interface(f"{self.network[1]}/{self.network.prefixlen}")


class Lab:
    def __init__(self, name: str) -> None:
        self.name = validate_name(name)
        self.dir = lab_root() / name
        self.bridge = underlay.bridge_name(name)

    # -- persistence --------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def inventory_file(self) -> Path:
        return self.dir / "inventory.toml"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise LabError(
                f"lab {self.name!r} does not exist — create it with `python -m lab up --name {self.name}`"
            ) from None
        return LabState(data["name"], data["subnet"], {h["name"]: HostState.from_json(h) for h in data["hosts"]})

    def save(self, state: LabState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps({"name": state.name, "subnet": state.subnet,
                                       "hosts": [h.to_json() for h in state.hosts.values()]}, indent=2))
        os.replace(partial, self.state_file)

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    # -- up -----------------------------------------------------------------------------------
    def up(self, count: int, subnet: str | None = None) -> Path:
        require_root()
        if not 1 <= count <= MAX_HOSTS:
            raise LabError(f"--hosts {count} is out of range — use 1 to {MAX_HOSTS}")
        state = self._plan(count, subnet)
        self.save(state)  # before creating anything, so `down` always knows what may exist
        self._ensure_keys()
        underlay.ensure_bridge(self.bridge, state.gateway)
        starting = [host for host in state.hosts.values() if not host.running()]
        for host in starting:
            self._create_host_network(state, host)
        for host in starting:
            self._start_host(host)
            self.save(state)
        asyncio.run(_wait_for_sshd([host.address for host in starting]))
        self._write_known_hosts(state)
        self._write_inventory(state, self._image_section())
        return self.inventory_file

    def _plan(self, count: int, subnet: str | None) -> LabState:
        if self.exists():
            state = self.load()
            if subnet and ipaddress.ip_network(subnet, strict=False) != state.network:
                raise LabError(
                    f"lab {self.name!r} already uses {state.subnet} — run `python -m lab down --name "
                    f"{self.name}` first to change it"
                )
            if count < len(state.hosts):
                raise LabError(
                    f"lab {self.name!r} has {len(state.hosts)} hosts; shrinking is not supported — run down first"
                )
            underlay.check_no_overlap(state.network, self.bridge)
        else:
            state = LabState(self.name, str(self._choose_subnet(subnet)))
        if count + 1 >= state.network.num_addresses - 1:
            raise LabError(f"subnet {state.subnet} is too small for {count} hosts — use a larger --subnet")
        for index in range(1, count + 1):
            name = f"h{index}"
            state.hosts.setdefault(name, HostState(name, str(state.network[index + 1])))
        return state

    def _choose_subnet(self, subnet: str | None) -> ipaddress.IPv4Network:
        if subnet is None:
            return underlay.default_subnet(self.name, self.bridge)
        try:
            network = ipaddress.ip_network(subnet)
        except ValueError as error:
            raise LabError(f"--subnet {subnet!r} is not a valid IPv4 network ({error}) — e.g. 198.18.7.0/24") from None
        if network.version != 4 or network.prefixlen > 29:
            raise LabError(f"--subnet {subnet} must be an IPv4 network of /29 or larger — e.g. 198.18.7.0/24")
        underlay.check_no_overlap(network, self.bridge)
        return network

    def _ensure_keys(self) -> None:
        key = self.dir / "id_ed25519"
        if not key.exists():
            _keygen(key, f"cantainer-lab-{self.name}")
        (self.dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())

    def _create_host_network(self, state: LabState, host: HostState) -> None:
        ns = underlay.netns_name(self.name, host.name)
        underlay.ensure_netns(ns)
        address = ipaddress.ip_interface(f"{host.address}/{state.network.prefixlen}")
        underlay.ensure_host_link(self.bridge, underlay.veth_name(self.name, host.name), ns, address, HOST_MTU)

    def _start_host(self, host: HostState) -> None:
        hdir = self.host_dir(host.name)
        hdir.mkdir(parents=True, exist_ok=True)
        for local in PRIVATE_DIRS:
            (hdir / local).mkdir(exist_ok=True)
        for target in PRIVATE_DIRS.values():
            _ensure_mountpoint(Path(target))
        (hdir / "root").chmod(0o700)
        host_key = hdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            _keygen(host_key, f"{host.name}.{self.name}.lab")
        config = hdir / "sshd_config"
        config.write_text(_sshd_config(host.address, host_key, self.dir / "authorized_keys"))
        command = [
            "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child", "--propagation", "slave",
            "/usr/bin/python3", "-I", str(HOSTINIT), "--hostname", host.name,
            "--cgroup-subdir", f"cantainer-lab/{self.name}-{host.name}", "--sshd-config", str(config),
        ]
        for local, target in PRIVATE_DIRS.items():
            command += ["--private", f"{hdir / local}:{target}"]
        nsfd = os.open(f"/run/netns/{underlay.netns_name(self.name, host.name)}", os.O_RDONLY)
        try:
            with open(hdir / "console.log", "ab") as console:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                    start_new_session=True, preexec_fn=lambda: _setns(nsfd), pass_fds=(nsfd,), cwd="/",
                )
        finally:
            os.close(nsfd)
        host.init = ProcessRef.of(process.pid)
        host.pid1 = _wait_for_child(process)

    def _write_known_hosts(self, state: LabState) -> None:
        lines = []
        for host in state.hosts.values():
            public = (self.host_dir(host.name) / "ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{host.address} {public[0]} {public[1]}\n")
        (self.dir / "known_hosts").write_text("".join(lines))

    def _image_section(self) -> str:
        """The inventory's [images] for the lab's base image (lab/rootfs.py), recorded in base-image.json."""
        from lab import rootfs

        base = rootfs.base_image()
        (self.dir / "base-image.json").write_text(base.to_json() + "\n")
        if base.kind == "alpine":
            return ""
        return ("\n# No verified Alpine tarball was found (cache, shared images, download): the lab built a busybox\n"
                f'# rootfs instead.\n[images.alpine]\npath = "{base.path}"\nsha256 = "{base.sha256}"\n')

    def base_image(self):
        """The image this lab's `alpine` is (lab/rootfs.BaseImage): tests assert against it."""
        from lab.rootfs import BaseImage

        return BaseImage.from_json((self.dir / "base-image.json").read_text())

    def _write_inventory(self, state: LabState, images: str) -> None:
        hosts = "".join(f'\n[[hosts]]\nname = "{h.name}"\naddress = "{h.address}"\n' for h in state.hosts.values())
        self.inventory_file.write_text(
            f"# Written by `python -m lab up --name {self.name}`; rewritten on every `up`.\n"
            "[defaults]\n"
            'user = "root"\n'
            f'identity_file = "{self.dir / "id_ed25519"}"\n'
            f'known_hosts = "{self.dir / "known_hosts"}"\n'
            "\n[cluster]\n"
            f'name = "lab-{self.name}"\n'
            f'secret_file = "{self.dir / "cluster.secret"}"\n'
            f"{images}{hosts}"
        )

    # -- down ---------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything this lab made, from its state file and from what the kernel shows."""
        require_root()
        state = self.load() if self.exists() else None
        refs = []
        if state:
            refs += [ref for host in state.hosts.values() for ref in (host.pid1, host.init) if ref]
        for ns in underlay.lab_netns(self.name):
            inode = underlay.netns_inode(ns)
            if inode:
                refs += [ref for ref in map(ProcessRef.of, procs.pids_in_netns(inode)) if ref]
        leftovers = procs.kill_and_wait(refs)
        if leftovers:
            raise LabError(
                f"processes {[r.pid for r in leftovers]} of lab {self.name!r} did not exit — check them, then "
                f"run down again"
            )
        underlay.delete_links(underlay.lab_links(self.name))
        for ns in underlay.lab_netns(self.name):
            underlay.remove_netns(ns)
        _remove_cgroups(f"cantainer-lab/{self.name}-")
        shutil.rmtree(self.dir, ignore_errors=True)
        if not any(lab_root().glob("*/state.json")):
            _remove_created_mountpoints()
            _rmdir_quietly(lab_root())

    # -- per-host verbs -----------------------------------------------------------------------
    def host(self, name: str) -> tuple[LabState, HostState]:
        state = self.load()
        if name not in state.hosts:
            raise LabError(f"lab {self.name!r} has no host {name!r} — its hosts are {', '.join(state.hosts)}")
        return state, state.hosts[name]

    def cut(self, host: str, up: bool = False) -> None:
        require_root()
        self.host(host)
        underlay.set_link_state(underlay.veth_name(self.name, host), up)

    def crash(self, host: str) -> None:
        """Power loss: every process of the host dies at once and its kernel network state is lost."""
        require_root()
        state, entry = self.host(host)
        refs = [ref for ref in (entry.pid1, entry.init) if ref]
        inode = underlay.netns_inode(underlay.netns_name(self.name, host))
        if inode:
            refs += [ref for ref in map(ProcessRef.of, procs.pids_in_netns(inode)) if ref]
        procs.kill_and_wait(refs)
        underlay.delete_links([underlay.veth_name(self.name, host)])
        underlay.remove_netns(underlay.netns_name(self.name, host))
        _remove_cgroups(f"cantainer-lab/{self.name}-{host}")
        entry.init = entry.pid1 = None
        self.save(state)

    def boot(self, host: str) -> None:
        require_root()
        state, entry = self.host(host)
        if entry.running():
            return
        self._create_host_network(state, entry)
        self._start_host(entry)
        self.save(state)
        asyncio.run(_wait_for_sshd([entry.address]))

    def exec_in_host(self, host: str, command: list[str]) -> int:
        """Run `command` in the host's namespaces and cgroups, like a login there; return its exit code."""
        _, entry = self.host(host)
        if not entry.running():
            raise LabError(
                f"host {host} of lab {self.name!r} is not running — start it with `python -m lab boot --name "
                f"{self.name} {host}`"
            )
        argv = ["nsenter", "--target", str(entry.pid1.pid), "--mount", "--uts", "--ipc", "--net", "--pid",
                "--cgroup", "--root", "--wd", "--", *command]
        cgroup = f"cantainer-lab/{self.name}-{host}"
        return subprocess.run(
            argv, env={**os.environ, "HOME": "/root"}, preexec_fn=lambda: _join_cgroups(cgroup)
        ).returncode

    def describe(self) -> list[dict]:
        state = self.load()
        return [{"host": h.name, "address": h.address, "running": h.running(),
                 "underlay": "up" if underlay.link_is_up(underlay.veth_name(self.name, h.name)) else "down",
                 "pid": h.pid1.pid if h.running() else None} for h in state.hosts.values()]


def list_labs() -> list[Lab]:
    return [Lab(path.parent.name) for path in sorted(lab_root().glob("*/state.json"))]


# -- helpers ------------------------------------------------------------------------------------
def _setns(fd: int) -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns into the host's network namespace failed")


def _join_cgroups(subdir: str) -> None:
    for point in cgroup_mount_points():
        with open(os.path.join(point, subdir, "cgroup.procs"), "w") as procs_file:
            procs_file.write(str(os.getpid()))


def _wait_for_child(process: subprocess.Popen, timeout: float = 5.0) -> ProcessRef:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = procs.children(process.pid)
        if kids:
            ref = ProcessRef.of(kids[0])
            if ref:
                return ref
        if process.poll() is not None:
            break
        time.sleep(0.002)
    raise LabError(f"host init (pid {process.pid}) did not start — see its console.log in {lab_root()}")


async def _wait_for_sshd(addresses: list[str]) -> None:
    async def wait_one(address: str) -> None:
        deadline = time.monotonic() + SSH_READY_TIMEOUT
        while True:
            try:
                _, writer = await asyncio.open_connection(address, 22)
                writer.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"sshd on {address} did not come up within {SSH_READY_TIMEOUT:.0f}s — see the host's "
                        f"console.log"
                    ) from None
                await asyncio.sleep(0.01)

    await asyncio.gather(*(wait_one(address) for address in addresses))


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _sshd_config(address: str, host_key: Path, authorized_keys: Path) -> str:
    return (
        f"ListenAddress {address}:22\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPrintMotd no\nPrintLastLog no\nUseDNS no\n"
        "PidFile /run/sshd.pid\n"
        "MaxStartups 100:30:200\nMaxSessions 100\n"
        "AllowStreamLocalForwarding yes\n"
        "Subsystem sftp internal-sftp\n"
    )


_CREATED_MOUNTPOINTS = "created-mountpoints.json"


def _ensure_mountpoint(path: Path) -> None:
    """Create a bind target that the machine lacks, remembering it so the last `down` removes it."""
    if path.exists():
        return
    path.mkdir(parents=True)
    record = lab_root() / _CREATED_MOUNTPOINTS
    created = json.loads(record.read_text()) if record.exists() else []
    record.write_text(json.dumps(sorted(set(created) | {str(path)})))


def _remove_created_mountpoints() -> None:
    record = lab_root() / _CREATED_MOUNTPOINTS
    if not record.exists():
        return
    for path in json.loads(record.read_text()):
        try:
            os.rmdir(path)
        except OSError:
            pass  # not empty or already gone: then it is not ours to remove
    record.unlink()


def _remove_cgroups(prefix: str) -> None:
    """Remove this lab's cgroup subtrees (deepest first) in every hierarchy."""
    parent, leaf_prefix = prefix.rsplit("/", 1)
    for point in cgroup_mount_points():
        base = Path(point) / parent
        if not base.is_dir():
            continue
        for subtree in base.iterdir():
            if subtree.is_dir() and subtree.name.startswith(leaf_prefix):
                for directory in sorted((d for d in subtree.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                    _rmdir_quietly(directory)
                _rmdir_quietly(subtree)
        _rmdir_quietly(base)  # only succeeds once no other lab has a subtree left


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
