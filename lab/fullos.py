"""Full-OS lab hosts: a debootstrapped Debian that boots with systemd as PID 1 under systemd-nspawn.

- The root filesystem is built once per recipe (`debootstrap`, then a few fixed edits) into
  ``$CANTAINER_LAB_CACHE/rootfs/<os>-<suite>-<hash of the recipe>`` and never written again; every
  host of every lab mounts it as the lower layer of its own overlayfs (upper/work under the host's
  lab directory), so a host's disk survives crash/boot and `down` removes it.
- A host is `systemd-nspawn` in the host's existing network namespace, started inside the host's
  own cgroup subtree, running `lab-init` as PID 1: it makes the cgroup v1 controller hierarchies
  writable (nspawn mounts them read-only) and execs /sbin/init, so systemd starts sshd and any
  enabled unit, and an agent can create its containers' cgroups.
- Users: root and `ops` log in with the lab key; `ops` has passwordless sudo. `dev` also logs in
  with the lab key but its sudo asks for a password (to test that error).
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUDO_USER = "ops"
PASSWORD_SUDO_USER = "dev"
BOOT_TIMEOUT = 90.0  # systemd boot + sshd on a loaded 2-core machine; a healthy boot takes ~2 s
MNT_DETACH = 2


class FullOSError(Exception):
    """A full-OS host cannot be built or started; the message says what and how to fix."""


@dataclass(frozen=True)
class Recipe:
    os: str
    suite: str
    variant: str
    packages: tuple[str, ...]
    files: tuple[tuple[str, str, int], ...]  # (path, content, mode) written into the rootfs
    masked_units: tuple[str, ...]
    setup: tuple[tuple[str, ...], ...]  # commands run in the rootfs with chroot, in order

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


LAB_INIT = """#!/bin/sh
# PID 1 of a full-OS lab host (written by the lab): systemd-nspawn mounts the cgroup v1 controller
# hierarchies read-only; a real host's root can create cgroups in them, so make them writable.
for hierarchy in /sys/fs/cgroup/*/; do
    case "$hierarchy" in */systemd/|*/unified/) continue ;; esac
    mountpoint -q "$hierarchy" && mount -o remount,bind,rw "$hierarchy"
done
exec /sbin/init "$@"
"""

SSHD_CONFIG = """# Written by the lab: key-only logins, room for many parallel sessions (cantainer's fan-out).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
AllowStreamLocalForwarding yes
"""

RECIPES = {
    "debian": Recipe(
        os="debian",
        suite="bookworm",
        variant="minbase",
        # What a host needs (systemd, sshd, python3, libnftables1 for the agent's nftables table) and
        # sudo, plus what an Ubuntu server image has and the tests read hosts with: iproute2 (ip,
        # bridge), procps (ps, kill), dbus (logind).
        packages=("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "libnftables1", "sudo",
                  "iproute2", "procps"),
        files=(
            ("/usr/local/sbin/lab-init", LAB_INIT, 0o755),
            ("/etc/ssh/sshd_config.d/lab.conf", SSHD_CONFIG, 0o644),
            (f"/etc/sudoers.d/{SUDO_USER}", f"{SUDO_USER} ALL=(ALL) NOPASSWD:ALL\n", 0o440),
            (f"/etc/sudoers.d/{PASSWORD_SUDO_USER}", f"{PASSWORD_SUDO_USER} ALL=(ALL) ALL\n", 0o440),
        ),
        # Timers that would run apt or fsck jobs at random times; the console getty (nobody logs in there).
        masked_units=("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
                      "e2scrub_reap.service", "console-getty.service", "getty@.service"),
        setup=(
            ("useradd", "--create-home", "--shell", "/bin/bash", SUDO_USER),
            ("useradd", "--create-home", "--shell", "/bin/bash", PASSWORD_SUDO_USER),
        ),
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("CANTAINER_LAB_CACHE", "/var/cache/cantainer-lab"))


def recipe_for(os_name: str) -> Recipe:
    try:
        return RECIPES[os_name]
    except KeyError:
        raise FullOSError(f"--os {os_name!r} is not known — use one of: {', '.join(sorted(RECIPES))}") from None


def rootfs_path(recipe: Recipe) -> Path:
    return cache_root() / "rootfs" / f"{recipe.os}-{recipe.suite}-{recipe.digest()}"


def ensure_rootfs(recipe: Recipe, report=print) -> Path:
    """The recipe's root filesystem, built now if the cache lacks it (once, under a lock)."""
    target = rootfs_path(recipe)
    if (target / ".complete").exists():
        return target
    for tool in ("debootstrap", "systemd-nspawn"):
        if shutil.which(tool) is None:
            raise FullOSError(f"{tool} is not installed — run `sudo make setup` "
                              "(or apt-get install debootstrap systemd-container)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another lab may be building the same recipe right now
        if (target / ".complete").exists():
            return target
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        mirror = os.environ.get("CANTAINER_LAB_DEBIAN_MIRROR", DEFAULT_MIRROR)
        report(f"building the {recipe.os} {recipe.suite} root filesystem with debootstrap "
               f"(once; cached in {target.parent})")
        log = target.parent / f"{target.name}.build.log"
        with open(log, "wb") as output:
            built = subprocess.run(
                ["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
                 recipe.suite, str(staging), mirror],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        if built.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise FullOSError(f"debootstrap of {recipe.suite} from {mirror} failed (exit {built.returncode}) — "
                              f"see {log}; set CANTAINER_LAB_DEBIAN_MIRROR for another Debian mirror")
        try:
            _customise(staging, recipe, log)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / ".complete").write_text(json.dumps(asdict(recipe), indent=1))
        os.replace(staging, target)
        log.unlink()
    return target


def _customise(root: Path, recipe: Recipe, log: Path) -> None:
    for path, content, mode in recipe.files:
        file = root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        file.chmod(mode)
    for unit in recipe.masked_units:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    with open(log, "ab") as output:
        for command in recipe.setup:
            if subprocess.run(["chroot", str(root), *command], stdin=subprocess.DEVNULL, stdout=output,
                              stderr=subprocess.STDOUT).returncode != 0:
                raise FullOSError(f"setting up the {recipe.os} root filesystem failed at "
                                  f"`{' '.join(command)}` — see {log}")
    # Per host, not per image: host keys, machine id. Package caches only cost disk.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


# -- one host ------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        error = ctypes.get_errno()
        raise FullOSError(f"cannot mount {source} on {target}: {os.strerror(error)}")


def is_mounted(path: Path) -> bool:
    wanted = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return any(line.split()[4] == wanted for line in mountinfo)


def host_root(hdir: Path) -> Path:
    return hdir / "fs" / "root"


def mount_host_root(lower: Path, hdir: Path) -> Path:
    """The host's root: an overlay of the cached image (lower) and the host's own disk (upper)."""
    root = host_root(hdir)
    upper, work = hdir / "fs" / "upper", hdir / "fs" / "work"
    for directory in (root, upper, work):
        directory.mkdir(parents=True, exist_ok=True)
    if not is_mounted(root):
        _mount("overlay", str(root), "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
    return root


def unmount_host_root(hdir: Path) -> None:
    root = host_root(hdir)
    while is_mounted(root):
        if _libc.umount2(str(root).encode(), MNT_DETACH) != 0:
            error = ctypes.get_errno()
            raise FullOSError(f"cannot unmount {root}: {os.strerror(error)} — "
                              "check what still uses it, then run down again")


def configure_host(root: Path, hostname: str, host_key: Path, authorized_keys: str, resolver: str) -> None:
    """What makes this host itself: name, machine id, SSH host key, the lab key for root/ops/dev, and
    its resolver (*resolver*: the workstation's lab address, so no query it forwards leaves the machine)."""
    _write_if_changed(root / "etc/hostname", f"{hostname}\n", 0o644)
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():  # an image's link (to resolved's stub) would point outside this root
        resolv.unlink()
    _write_if_changed(resolv, f"# lab host {hostname}: the workstation's lab address\nnameserver {resolver}\n", 0o644)
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost\n"
    _write_if_changed(root / "etc/hosts", hosts, 0o644)
    machine_id = root / "etc/machine-id"
    if not machine_id.read_text().strip():
        machine_id.write_text(os.urandom(16).hex() + "\n")
    _write_if_changed(root / "etc/ssh/ssh_host_ed25519_key", host_key.read_text(), 0o600)
    _write_if_changed(root / "etc/ssh/ssh_host_ed25519_key.pub", host_key.with_suffix(".pub").read_text(), 0o644)
    for user in ("root", SUDO_USER, PASSWORD_SUDO_USER):
        home = "root" if user == "root" else f"home/{user}"
        uid, gid = _ids(root, user)
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, uid, gid)
        _write_if_changed(ssh_dir / "authorized_keys", authorized_keys, 0o600)
        os.chown(ssh_dir / "authorized_keys", uid, gid)


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise FullOSError(f"user {user} is missing from {root}/etc/passwd — rebuild the image (remove {cache_root()})")


def _write_if_changed(path: Path, content: str, mode: int) -> None:
    if not path.exists() or path.read_text() != content:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    path.chmod(mode)


# Directories a full-OS host keeps on the machine's own file system instead of its overlay root: the
# agent's containers put overlayfs upper layers under /var/lib/cantainer, and overlayfs refuses an
# upper layer on overlayfs (EINVAL). A VM's disk is ext4 or xfs, so this is what it has anyway.
REAL_DISK_DIRS = {"var-lib-cantainer": "/var/lib/cantainer"}


def nspawn_command(root: Path, machine: str, netns_path: str, binds: dict[Path, str]) -> list[str]:
    """Boot `root` in the given network namespace; PID 1 is lab-init, which execs systemd.

    --keep-unit/--register=no: no systemd on the machine to register with; the caller has already
    put us in the host's cgroup subtree. --capability=all and no seccomp filter (SYSTEMD_SECCOMP=0
    in the environment): a real host's root may do everything an agent needs (netlink, mounts,
    namespaces). The console (stdout) is the caller's console.log."""
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", f"--directory={root}",
            f"--machine={machine}", f"--network-namespace-path={netns_path}", "--capability=all",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
            "--kill-signal=SIGKILL", *(f"--bind={source}:{target}" for source, target in binds.items()),
            "/usr/local/sbin/lab-init"]


# SYSTEMD_NSPAWN_LOCK=0: no image lock files (/run/systemd/nspawn/locks), which a SIGKILLed nspawn
# (every crash and down) would leave behind; each host's root is its own overlay anyway.
# SYSTEMD_NSPAWN_API_VFS_WRITABLE=network: /proc/sys/net writable, as for a real host's root (the
# runtime sets net.ipv4.ping_group_range in each container's netns); the rest of /proc/sys and /sys
# stay read-only, since those are the machine's own.
NSPAWN_ENV = {"SYSTEMD_SECCOMP": "0", "SYSTEMD_NSPAWN_LOCK": "0", "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
              "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"}
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn")


def remove_nspawn_leftovers(machines: str) -> None:
    """What a SIGKILLed nspawn leaves on the machine: the propagation directory of each machine
    whose name matches the glob `machines`."""
    propagate = NSPAWN_RUN_DIR / "propagate"
    for directory in propagate.glob(machines):
        shutil.rmtree(directory, ignore_errors=True)
    for directory in (propagate, NSPAWN_RUN_DIR / "locks", NSPAWN_RUN_DIR):
        try:
            directory.rmdir()  # only when empty: nspawn makes them on demand
        except OSError:
            pass
