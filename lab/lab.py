"""A lab: N hosts on one machine, each in its own network namespace, reachable over SSH.

Two kinds of host (one kind per lab, chosen at `up`): namespace hosts (the default) share the
machine's root filesystem and run sshd as PID 1 (lab/hostinit.py); full-OS hosts (`--os debian`)
boot their own root filesystem with systemd as PID 1 (lab/fullos.py).

Layout on disk (``$CANTAINER_LAB_ROOT``, default /var/lib/cantainer-lab, one folder per lab):
``state.json`` (what exists, written before each thing is created), ``id_ed25519`` (the lab's
login key), ``known_hosts``, ``inventory.toml`` and ``hosts/hN/`` (host key, console.log, and the
host's disk: for namespace hosts the directories bound over /root, /var/lib/cantainer,
/etc/cantainer and /var/log/cantainer; for full-OS hosts the overlay's upper layer), which survive
a crash like a disk would. `hosts/` is the lab's disk (lab/disk.py: an ext4 image, ``disk.img``,
loop-mounted there). `down --keep-logs` leaves each host's console.log in place.
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
from typing import Callable

from lab import disk, fullos, neighbours, procs, underlay
from lab.hostinit import cgroup_mount_points, enter_host_cgroups
from lab.procs import ProcessRef

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,6}$")
MAX_HOSTS = 250
HOST_MTU = 1500
SSH_READY_TIMEOUT = 10.0
CONNECT_ATTEMPT_TIMEOUT = 1.0
CONSOLE_TAIL_LINES = 8
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
    init: ProcessRef | None = None  # `unshare` or `systemd-nspawn`; its child is the host's PID 1
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
    os: str | None = None  # None: namespace hosts; else the full-OS recipe (lab/fullos.py)

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
        return LabState(data["name"], data["subnet"], {h["name"]: HostState.from_json(h) for h in data["hosts"]},
                        data.get("os"))

    def save(self, state: LabState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps({"name": state.name, "subnet": state.subnet, "os": state.os,
                                       "hosts": [h.to_json() for h in state.hosts.values()]}, indent=2))
        os.replace(partial, self.state_file)

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    # -- up -----------------------------------------------------------------------------------
    def up(self, count: int, subnet: str | None = None, os_name: str | None = None) -> Path:
        require_root()
        if not 1 <= count <= MAX_HOSTS:
            raise LabError(f"--hosts {count} is out of range — use 1 to {MAX_HOSTS}")
        state = self._plan(count, subnet, os_name)
        if state.os:
            self._rootfs(state)  # built (or found) before anything else is created
        self.save(state)  # before creating anything, so `down` always knows what may exist
        self._ensure_keys()
        try:  # every lab's hosts share this kernel's ARP table: room for all of them to meet
            neighbours.ensure(_hosts_of_all_labs(), lab_root() / _NEIGHBOUR_LIMITS)
        except OSError as error:
            raise LabError(f"cannot size the machine's neighbour table for the labs' hosts: {error}") from None
        self._attach_disk()
        underlay.ensure_bridge(self.bridge, state.gateway)
        starting = [host for host in state.hosts.values() if not host.running()]
        for host in starting:
            self._create_host_network(state, host)
        for host in starting:
            self._start_host(state, host)
            self.save(state)
        self._wait_booted(state, starting)
        self._write_known_hosts(state)
        self._write_inventory(state, self._image_section())
        return self.inventory_file

    def _rootfs(self, state: LabState) -> Path:
        try:
            return fullos.ensure_rootfs(fullos.recipe_for(state.os))
        except fullos.FullOSError as error:
            raise LabError(str(error)) from None

    def _plan(self, count: int, subnet: str | None, os_name: str | None = None) -> LabState:
        if os_name is not None:
            try:
                fullos.recipe_for(os_name)
            except fullos.FullOSError as error:
                raise LabError(str(error)) from None
        if self.exists():
            state = self.load()
            if subnet and ipaddress.ip_network(subnet, strict=False) != state.network:
                raise LabError(
                    f"lab {self.name!r} already uses {state.subnet} — run `python -m lab down --name "
                    f"{self.name}` first to change it"
                )
            if os_name != state.os:
                have = f"full-OS ({state.os})" if state.os else "namespace"
                raise LabError(
                    f"lab {self.name!r} is made of {have} hosts — run `python -m lab down --name "
                    f"{self.name}` first to change their kind"
                )
            if count < len(state.hosts):
                raise LabError(
                    f"lab {self.name!r} has {len(state.hosts)} hosts; shrinking is not supported — run down first"
                )
            underlay.check_no_overlap(state.network, self.bridge)
        else:
            state = LabState(self.name, str(self._choose_subnet(subnet)), os=os_name)
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

    def _start_host(self, state: LabState, host: HostState) -> None:
        if state.os:
            self._start_fullos_host(state, host)
        else:
            self._start_namespace_host(host, str(state.gateway.ip))

    def _open_console(self, host: str):
        """The host's console.log, appended to across boots; each boot starts with a marker line."""
        hdir = self.host_dir(host)
        hdir.mkdir(parents=True, exist_ok=True)
        console = open(hdir / "console.log", "ab")
        console.write(f"--- lab {self.name}: {host} boots at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode())
        console.flush()
        return console

    def console_tail(self, host: str, lines: int = CONSOLE_TAIL_LINES) -> str:
        """The last lines of the host's console log since its last boot, as ` — console.log (…): …`."""
        path = self.host_dir(host) / "console.log"
        try:
            text = path.read_bytes()[-16384:].decode(errors="replace")
        except FileNotFoundError:
            return f" — {path} does not exist"
        text = text.rsplit(f"--- lab {self.name}: {host} boots at", 1)[-1].split("\n", 1)[-1]
        tail = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()][-lines:]
        return f" — {path} ends: " + (" | ".join(tail) if tail else "(empty)")

    def _host_key(self, host: str) -> Path:
        host_key = self.host_dir(host) / "ssh_host_ed25519_key"
        if not host_key.exists():
            _keygen(host_key, f"{host}.{self.name}.lab")
        return host_key

    def _start_fullos_host(self, state: LabState, host: HostState) -> None:
        hdir = self.host_dir(host.name)
        hdir.mkdir(parents=True, exist_ok=True)
        try:
            root = fullos.mount_host_root(self._rootfs(state), hdir)
            keys = (self.dir / "authorized_keys").read_text()
            fullos.configure_host(root, host.name, self._host_key(host.name), keys, str(state.gateway.ip))
        except fullos.FullOSError as error:
            raise LabError(f"{host.name}: {error}") from None
        netns = f"/run/netns/{underlay.netns_name(self.name, host.name)}"
        cgroup = _host_cgroup(self.name, host.name)
        binds = {}
        for local, target in fullos.REAL_DISK_DIRS.items():
            (hdir / local).mkdir(exist_ok=True)
            binds[hdir / local] = target
        with self._open_console(host.name) as console:
            process = subprocess.Popen(
                fullos.nspawn_command(root, f"{self.name}-{host.name}", netns, binds), stdin=subprocess.DEVNULL,
                stdout=console, stderr=console, start_new_session=True, cwd="/",
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **fullos.NSPAWN_ENV},
                preexec_fn=lambda: enter_host_cgroups(cgroup))
        host.init = ProcessRef.of(process.pid)
        host.pid1 = _wait_for_child(process, lambda pid: _in_new_pid_namespace(pid, process.pid),
                                    lambda: self.console_tail(host.name))

    def _start_namespace_host(self, host: HostState, resolver: str) -> None:
        hdir = self.host_dir(host.name)
        hdir.mkdir(parents=True, exist_ok=True)
        for local in PRIVATE_DIRS:
            (hdir / local).mkdir(exist_ok=True)
        for target in PRIVATE_DIRS.values():
            _ensure_mountpoint(Path(target))
        (hdir / "root").chmod(0o700)
        host_key = self._host_key(host.name)
        config = hdir / "sshd_config"
        config.write_text(_sshd_config(host.address, host_key, self.dir / "authorized_keys"))
        # The host's resolver is the workstation's lab address (tests run one there): no DNS query a
        # lab host forwards ever leaves the machine.
        (hdir / "resolv.conf").write_text(f"# lab host {host.name}: the workstation's lab address\n"
                                          f"nameserver {resolver}\n")
        command = [
            "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child", "--propagation", "slave",
            "/usr/bin/python3", "-I", str(HOSTINIT), "--hostname", host.name,
            "--cgroup-subdir", _host_cgroup(self.name, host.name), "--sshd-config", str(config),
            "--resolv-conf", str(hdir / "resolv.conf"),
        ]
        for local, target in PRIVATE_DIRS.items():
            command += ["--private", f"{hdir / local}:{target}"]
        nsfd = os.open(f"/run/netns/{underlay.netns_name(self.name, host.name)}", os.O_RDONLY)
        try:
            with self._open_console(host.name) as console:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                    start_new_session=True, preexec_fn=lambda: _setns(nsfd), pass_fds=(nsfd,), cwd="/",
                )
        finally:
            os.close(nsfd)
        host.init = ProcessRef.of(process.pid)
        host.pid1 = _wait_for_child(process, lambda pid: True, lambda: self.console_tail(host.name))

    def _wait_booted(self, state: LabState, hosts: list[HostState]) -> None:
        """sshd answers on every host; on full-OS hosts systemd has also finished booting."""
        timeout = fullos.BOOT_TIMEOUT if state.os else SSH_READY_TIMEOUT
        asyncio.run(_wait_for_sshd({h.name: h.address for h in hosts}, timeout, self.console_tail))
        if state.os:
            for host in hosts:
                self._wait_systemd(host, timeout)

    def _wait_systemd(self, host: HostState, timeout: float) -> None:
        argv = ["nsenter", "--target", str(host.pid1.pid), "--mount", "--uts", "--ipc", "--net", "--pid", "--root",
                "--wd", "--", "systemctl", "is-system-running", "--wait"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LabError(
                f"systemd on {host.name} did not finish booting within {timeout:.0f}s{self.console_tail(host.name)}"
            ) from None
        if result.stdout.strip() != "running":
            failed = subprocess.run(argv[:-3] + ["systemctl", "list-units", "--failed", "--plain", "--no-legend"],
                                    capture_output=True, text=True, timeout=30).stdout.split("\n")
            units = ", ".join(line.split()[0] for line in failed if line.strip()) or "none listed"
            raise LabError(f"systemd on {host.name} is {result.stdout.strip() or result.stderr.strip()!r} after boot "
                           f"(failed units: {units}){self.console_tail(host.name)}")

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
        # Full-OS hosts are logged into as a real fleet is: a sudo user, not root.
        login = f'user = "{fullos.SUDO_USER}"\nbecome = true\n' if state.os else 'user = "root"\n'
        self.inventory_file.write_text(
            f"# Written by `python -m lab up --name {self.name}`; rewritten on every `up`.\n"
            "[defaults]\n"
            f"{login}"
            f'identity_file = "{self.dir / "id_ed25519"}"\n'
            f'known_hosts = "{self.dir / "known_hosts"}"\n'
            "\n[cluster]\n"
            f'name = "lab-{self.name}"\n'
            f'secret_file = "{self.dir / "cluster.secret"}"\n'
            f"{images}{hosts}"
        )

    # -- down ---------------------------------------------------------------------------------
    def down(self, keep_logs: bool = False) -> None:
        """Remove everything this lab made, from its state file and from what the kernel shows.
        With `keep_logs`, each host's console.log stays where it was (evidence of a failed run)."""
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
        fullos.remove_nspawn_leftovers(f"{self.name}-h*")
        for hdir in sorted((self.dir / "hosts").glob("*")):
            try:
                fullos.unmount_host_root(hdir)
            except fullos.FullOSError as error:
                raise LabError(str(error)) from None
        if any(fullos.is_mounted(fullos.host_root(hdir)) for hdir in (self.dir / "hosts").glob("*")):
            raise LabError(f"a host root of lab {self.name!r} is still mounted — unmount it, then run down again")
        logs = self._console_logs() if keep_logs else {}
        try:
            disk.detach(self.dir)
        except disk.DiskError as error:
            raise LabError(f"lab {self.name!r}: {error}") from None
        shutil.rmtree(self.dir, ignore_errors=True)
        for host, text in logs.items():  # back where they were, on the machine's disk now
            self.host_dir(host).mkdir(parents=True, exist_ok=True)
            (self.host_dir(host) / "console.log").write_bytes(text)
        try:  # back toward the machine's own limits, as far as the labs still running allow
            neighbours.settle(_hosts_of_all_labs(), lab_root() / _NEIGHBOUR_LIMITS)
        except OSError as error:
            raise LabError(f"cannot put the machine's neighbour table limits back: {error}") from None
        if not any(lab_root().glob("*/state.json")):
            _remove_created_mountpoints()
            _rmdir_quietly(lab_root())

    def _attach_disk(self) -> None:
        try:
            disk.attach(self.dir)
        except disk.DiskError as error:
            raise LabError(f"lab {self.name!r}: {error}") from None

    def _console_logs(self) -> dict[str, bytes]:
        logs = {}
        for log in sorted((self.dir / "hosts").glob("*/console.log")):
            try:
                logs[log.parent.name] = log.read_bytes()
            except OSError:
                pass
        return logs

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
        leftovers = procs.kill_and_wait(refs)
        if leftovers:
            raise LabError(f"processes {[r.pid for r in leftovers]} of {host} did not die{self.console_tail(host)}")
        underlay.delete_links([underlay.veth_name(self.name, host)])
        underlay.remove_netns(underlay.netns_name(self.name, host))
        _remove_cgroups(_host_cgroup(self.name, host), exact=True)
        if state.os:
            fullos.remove_nspawn_leftovers(f"{self.name}-{host}")
            try:  # the disk stays; the mount goes like everything else of a powered-off machine
                fullos.unmount_host_root(self.host_dir(host))
            except fullos.FullOSError as error:
                raise LabError(f"{host}: {error}") from None
        entry.init = entry.pid1 = None
        self.save(state)

    def boot(self, host: str) -> None:
        require_root()
        state, entry = self.host(host)
        if entry.running():
            return
        self._attach_disk()  # mounted since `up`, unless the machine rebooted
        self._create_host_network(state, entry)
        self._start_host(state, entry)
        self.save(state)
        self._wait_booted(state, [entry])

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
        cgroup = _host_cgroup(self.name, host)
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


def _hosts_of_all_labs() -> int:
    """How many hosts every lab on this machine has together (they share its one ARP table)."""
    return sum(len(lab.load().hosts) for lab in list_labs())


# -- helpers ------------------------------------------------------------------------------------
def _setns(fd: int) -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns into the host's network namespace failed")


def _host_cgroup(lab: str, host: str) -> str:
    """The host's subtree in every cgroup hierarchy (its processes never share the machine's)."""
    return f"cantainer-lab/{lab}-{host}"


def _in_new_pid_namespace(pid: int, parent: int) -> bool:
    """True once `pid` runs in a PID namespace other than `parent`'s: nspawn's container init, not
    its short-lived intermediate child."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat(f"/proc/{parent}/ns/pid").st_ino
    except FileNotFoundError:
        return False


def _join_cgroups(subdir: str) -> None:
    for point in cgroup_mount_points():
        with open(os.path.join(point, subdir, "cgroup.procs"), "w") as procs_file:
            procs_file.write(str(os.getpid()))


def _wait_for_child(process: subprocess.Popen, wanted: Callable[[int], bool], console: Callable[[], str],
                    timeout: float = 5.0) -> ProcessRef:
    """The host's PID 1: the first child of `process` that is `wanted`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kid in procs.children(process.pid):
            ref = ProcessRef.of(kid)
            if ref and wanted(kid):
                return ref
        if process.poll() is not None:
            break
        time.sleep(0.002)
    raise LabError(f"host init (pid {process.pid}) did not start{console()}")


async def _wait_for_sshd(hosts: dict[str, str], timeout: float, console: Callable[[str], str]) -> None:
    """Until port 22 of every host (name -> address) accepts a connection, or `timeout` passes.

    Each attempt has its own short timeout: a connect that hangs (no SYN-ACK, no RST) must not run
    past the deadline unnoticed."""
    async def wait_one(name: str, address: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, 22), CONNECT_ATTEMPT_TIMEOUT)
                writer.close()
                return
            except (OSError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise LabError(
                        f"sshd of {name} ({address}) did not come up within {timeout:.0f}s{console(name)}"
                    ) from None
                await asyncio.sleep(0.01)

    await asyncio.gather(*(wait_one(name, address) for name, address in hosts.items()))


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
_NEIGHBOUR_LIMITS = "neighbour-limits.json"  # the machine's ARP table limits before a lab raised them


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


def _remove_cgroups(prefix: str, exact: bool = False) -> None:
    """Remove this lab's cgroup subtrees (deepest first) in every hierarchy: those whose name starts
    with the last part of `prefix`, or (`exact`) only the one named so — h1 is not h10."""
    parent, leaf_prefix = prefix.rsplit("/", 1)
    for point in cgroup_mount_points():
        base = Path(point) / parent
        if not base.is_dir():
            continue
        for subtree in base.iterdir():
            if subtree.is_dir() and (subtree.name == leaf_prefix if exact else subtree.name.startswith(leaf_prefix)):
                for directory in sorted((d for d in subtree.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                    _rmdir_quietly(directory)
                _rmdir_quietly(subtree)
        _rmdir_quietly(base)  # only succeeds once no other lab has a subtree left


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
