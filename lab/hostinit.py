"""PID 1 of a lab host: finish the host's private view of the machine, then become its sshd.

Started by the lab as ``unshare --mount --uts --ipc --pid --fork --propagation slave`` inside the
host's network namespace, so it already runs in fresh mount/UTS/IPC/PID namespaces. It is a
standalone stdlib script (run with ``python3 -I``) because the lab's virtualenv may not be usable
once ``/root`` is replaced.

Why each step:
- cgroups: the host's processes (agents, containers) must not share the machine's cgroup tree with
  other hosts; each host gets a subtree per hierarchy, bound over the hierarchy's mount point, and a
  cgroup namespace rooted there — so an agent sees an ordinary, empty-looking cgroup filesystem.
- /proc is remounted for the new PID namespace.
- /run and /tmp are fresh tmpfs (lost on crash like a real reboot); /root and the agent's
  directories are bind mounts of per-host directories on disk (kept across crash/boot).
- /etc/resolv.conf is the host's own (its resolver is the workstation's lab address), bound over
  the file it names — also when that is a symlink into the fresh /run (systemd-resolved's stub).
- Mount propagation is "slave": the machine's unmounts (e.g. of another host's netns file) still
  reach us, so no host keeps a dead host's namespace alive; our mounts never leak out.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys

CLONE_NEWCGROUP = 0x02000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC = 2, 4, 8, 4096, 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def cgroup_mount_points() -> list[str]:
    """Mount points of every cgroup (v1) or cgroup2 hierarchy visible to us."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                points.append(fields[4])
    return points


def _copy_cpuset_parent_values(path: str, root: str) -> None:
    """cgroup v1 cpuset refuses tasks while cpus/mems are empty: inherit them level by level."""
    levels = []
    while path != root:
        levels.append(path)
        path = os.path.dirname(path)
    for level in reversed(levels):
        for knob in ("cpuset.cpus", "cpuset.mems"):
            mine = os.path.join(level, knob)
            if os.path.exists(mine) and not open(mine).read().strip():
                parent_value = open(os.path.join(os.path.dirname(level), knob)).read().strip()
                with open(mine, "w") as handle:
                    handle.write(parent_value)


def _delegate_v2_controllers(path: str, root: str) -> None:
    """cgroup2: enable every available controller for the children of each level above the host's
    cgroup, so a host gets controllers wherever the machine has them (pure-v2 machines such as
    Ubuntu 22.04+). A no-op on a hybrid machine, whose cgroup2 has no controllers."""
    levels = []
    path = os.path.dirname(path)
    while len(path) >= len(root):
        levels.append(path)
        path = os.path.dirname(path)
    for level in reversed(levels):
        available = open(os.path.join(level, "cgroup.controllers")).read().split()
        enabled = open(os.path.join(level, "cgroup.subtree_control")).read().split()
        missing = [controller for controller in available if controller not in enabled]
        if missing:
            with open(os.path.join(level, "cgroup.subtree_control"), "w") as control:
                control.write(" ".join(f"+{controller}" for controller in missing))


def enter_host_cgroups(subdir: str) -> list[tuple[str, str]]:
    """Move this process into the host's subtree of every hierarchy; return (subtree, mount point)."""
    binds = []
    for point in cgroup_mount_points():
        subtree = os.path.join(point, subdir)
        os.makedirs(subtree, exist_ok=True)
        _copy_cpuset_parent_values(subtree, point)
        if os.path.exists(os.path.join(point, "cgroup.subtree_control")):
            _delegate_v2_controllers(subtree, point)
        with open(os.path.join(subtree, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
        binds.append((subtree, point))
    return binds


def build_host_view(args: argparse.Namespace) -> None:
    binds = enter_host_cgroups(args.cgroup_subdir)
    _check(_libc.unshare(CLONE_NEWCGROUP), "unshare cgroup namespace")
    for subtree, point in binds:
        mount(subtree, point, None, MS_BIND)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    for private in args.private:
        source, target = private.split(":", 1)
        mount(source, target, None, MS_BIND | MS_REC)
    if args.resolv_conf:
        target = os.path.realpath("/etc/resolv.conf")
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount(args.resolv_conf, target, None, MS_BIND)
    socket.sethostname(args.hostname)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--cgroup-subdir", required=True)
    parser.add_argument("--private", action="append", default=[], help="SOURCE:TARGET bind mount")
    parser.add_argument("--sshd-config", required=True)
    parser.add_argument("--resolv-conf", help="the host's /etc/resolv.conf (bind-mounted over the machine's)")
    args = parser.parse_args(argv)
    build_host_view(args)
    os.chdir("/root")
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "LANG": "C.UTF-8"}
    sys.stdout.flush()
    os.execve("/usr/sbin/sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", args.sshd_config], environment)


if __name__ == "__main__":
    main(sys.argv[1:])
