"""The container's init (PID 1 before execve): namespaces, rootfs, /proc /dev /sys, capabilities, seccomp.

Runs in a process forked from the zygote (never in the agent): ``prepare_init`` does what does not
depend on the request (UTS/IPC/net namespaces, unprivileged ping, signals, no_new_privs) in a warm
slot; ``container_init`` does the rest once the request arrives — join the cgroup, mount and cgroup
namespaces, the overlay rootfs, pivot_root (runc's way), runc's masked and read-only paths, a
minimal /dev, the hostname, the image's user — then waits for "go", drops to the container's
capabilities and user, loads the seccomp filter (seccomp.py) and execs the command. Every file
system the container can write is nodev: its device nodes are bind mounts of the host's six
harmless ones, so a node it makes (with CAP_MKNOD) opens nothing. No descriptor of the host stays
open across the working directory's chdir (runc CVE-2024-21626). ``exec_command`` and
``join_cgroup`` are shared with ``exec`` (nsexec.py).
"""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import signal
import socket
import stat
import termios

from .. import capabilities
from . import linux, seccomp, users, volumes
from .linux import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
)

CONTAINER_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP

# runc's and docker's /proc and /sys hardening (moby oci/defaults.go; /proc/interrupts as runc masks it)
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")  # bound from the host's /dev (1:3 1:5 1:7 1:8 1:9 5:0)
PING_GROUP_RANGE = "0 2147483647"  # every group may open ICMP echo sockets: ping without CAP_NET_RAW (docker's)
DEV_SYMLINKS = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"),
)


def _ensure_dir(path: str, mode: int = 0o755) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass


def setup_rootfs(req: dict) -> list[volumes.Opened]:
    """Mount the container's filesystem tree and make it the root. Runs in the new mount namespace.
    Returns the sources of its volumes and bind mounts, opened and checked while the host's paths
    were reachable (volumes.py); ``volumes.attach`` mounts them."""
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do propagates back to the host
    opened = volumes.open_sources(req.get("mounts") or [], req.get("protected") or [])
    try:
        _setup_root(req)
    except BaseException:
        for item in opened:
            os.close(item.tree)
        raise
    return opened


def _setup_root(req: dict) -> None:
    root = req["rootfs"]
    # req["lower"] lists the image's layers topmost first, joined by ':' (overlayfs' order)
    linux.mount("overlay", root, "overlay", MS_NODEV,
                f"lowerdir={req['lower']},upperdir={req['upper']},workdir={req['work']}")

    os.chdir(root)
    _setup_dev()  # before pivot_root: its device nodes are binds of the host's
    # runc's pivot_root: no temporary directory needed, the old root is stacked and detached
    linux.pivot_root(".", ".")
    linux.umount2(".", MNT_DETACH)
    os.chdir("/")

    _ensure_dir("/proc")
    linux.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    _ensure_dir("/sys")
    linux.mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)

    for path in MASKED_PATHS:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            linux.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        else:
            linux.mount("/dev/null", path, None, MS_BIND)
    for path in READONLY_PATHS:
        if os.path.exists(path):
            linux.mount(path, path, None, MS_BIND | MS_REC)
            linux.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _setup_dev() -> None:
    """``./dev`` (cwd = the new root): a nodev tmpfs, the host's harmless devices bound in, pts, shm, mqueue."""
    _ensure_dir("dev")
    linux.mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NODEV | MS_STRICTATIME, "mode=755,size=65536k")
    for name in DEVICES:
        os.close(os.open(f"dev/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        linux.mount(f"/dev/{name}", f"dev/{name}", None, MS_BIND)
    for name, target in DEV_SYMLINKS:
        os.symlink(target, f"dev/{name}")
    for name, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o1777)):
        os.mkdir(f"dev/{name}", mode)
    linux.mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    linux.mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    linux.mount("mqueue", "dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _reset_signals() -> None:
    """Default disposition for every signal (ignored ones survive execve), nothing blocked."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_user(spec: str, env: dict[str, str]) -> users.ExecUser:
    """Resolve the container's user in its own /etc/passwd and /etc/group (call after pivot_root or
    setns into its mount namespace); HOME defaults to that user's home, as in docker."""
    user = users.resolve(spec, users.read_small("/etc/passwd"), users.read_small("/etc/group"))
    env.setdefault("HOME", user.home)
    return user


_FILTERS: dict[int, bytes] = {}  # by capability mask; the zygote fills in the default one before its first fork


def seccomp_program(caps: int, enabled: bool) -> bytes | None:
    """The filter a process holding *caps* gets (None: ``--security-opt seccomp=unconfined``)."""
    if not enabled:
        return None
    code = _FILTERS.get(caps)
    if code is None:
        code = _FILTERS[caps] = seccomp.program(os.uname().machine, capabilities.names_of(caps))
    return code


def exec_command(argv: list[str], env: dict[str, str], caps: int, cap_last: int | None = None,
                 user: users.ExecUser | None = None, filter_code: bytes | None = None) -> None:
    """Last steps before becoming the user's command (used by exec; start uses its warm variant)."""
    os.umask(0o022)
    _reset_signals()
    linux.set_no_new_privs()
    become(user, caps, cap_last)
    if filter_code is not None:
        seccomp.install(filter_code)
    os.execvpe(argv[0], argv, env)


NOT_FOUND, NOT_EXECUTABLE = 127, 126  # docker's exit codes for a command that cannot run


def exec_error_code(exc: BaseException) -> int:
    """127 if the command does not exist, 126 if it exists but cannot be executed."""
    return NOT_FOUND if isinstance(exc, FileNotFoundError) else NOT_EXECUTABLE


def become(user: users.ExecUser | None, caps: int, cap_last: int | None) -> None:
    """Drop to *caps* and become *user*: the bounding set first, then the user switch (setgroups and
    setgid need CAP_SETGID, which --cap-drop may take away), then — still root — the capability
    sets. Leaving uid 0 clears them anyway (no SECBIT_KEEP_CAPS)."""
    linux.drop_bounding_set(caps, cap_last)
    if user is not None:
        users.switch(user)
    if os.geteuid() == 0:
        linux.set_capabilities(caps)


def describe_exec_error(argv0: str, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{argv0}: executable file not found"
    if isinstance(exc, PermissionError):
        return f"{argv0}: permission denied"
    if isinstance(exc, OSError):
        return f"{argv0}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def join_cgroup(files: list[str]) -> None:
    """Move the calling process into a cgroup by writing "0" (= the writer) to each file."""
    for path in files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def prepare_init() -> None:
    """The part of init that does not depend on the request: done ahead of time in a warm slot.

    The mount namespace is *not* created here: a copy made now could miss mounts the host makes
    before the request (e.g. the image store). no_new_privs only matters at execve; our current
    privileges (mounts) are unaffected. The capabilities are the request's (--cap-add/--cap-drop).
    """
    linux.unshare(CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)
    with open("/proc/sys/net/ipv4/ping_group_range", "w", encoding="ascii") as handle:  # our new netns's
        handle.write(PING_GROUP_RANGE)
    _reset_signals()
    linux.set_no_new_privs()


def container_init(req: dict, out_w: int, status_w: int, go_r: int, in_cgroup: bool,
                   prepared: bool, in_r: int = -1, tty_sock: int = -1, err_w: int = -1) -> None:
    """PID 1 of the container until execve. Never returns.

    *prepared*: ``prepare_init`` already ran (a warm slot). *in_r* is the read end of the stdin pipe
    (used with ``stdin`` and no ``tty``); *tty_sock* the socket on which the pty master goes to the
    shim (with ``tty``); *err_w* the stderr pipe (stdout's if -1).
    """
    step = "set up stdio"
    tty = bool(req.get("tty"))
    try:
        gc.disable()
        if not tty:
            os.dup2(out_w, 1)
            os.dup2(err_w if err_w >= 0 else out_w, 2)
            if req.get("stdin") and in_r >= 0:
                os.dup2(in_r, 0)
        os.close(out_w)
        if err_w >= 0:
            os.close(err_w)
        if in_r >= 0:
            os.close(in_r)
        os.umask(0)
        if not prepared:
            step = "create namespaces"
            prepare_init()
        step = "build the seccomp filter"
        filter_code = seccomp_program(req["caps"], req.get("seccomp", True))
        if not in_cgroup:
            step = "join the cgroup"
            join_cgroup(req["cgroup_join"])
        step = "create namespaces"
        linux.unshare(CLONE_NEWNS | CLONE_NEWCGROUP)  # cgroup ns after joining: its root is our cgroup
        step = "set up the root filesystem"
        opened = setup_rootfs(req)
        step = "mount its volumes"
        volumes.attach(opened)  # closes every source descriptor, before the working directory is entered
        step = "set the hostname"
        socket.sethostname(req["hostname"])
        step = f"enter the working directory {req['workdir']}"
        try:
            os.chdir(req["workdir"])
        except FileNotFoundError:
            os.makedirs(req["workdir"], 0o755)
            os.chdir(req["workdir"])
        os.getcwd()  # FileNotFoundError if the directory lies outside our root (runc CVE-2024-21626)
        step = f"find user {req.get('user') or 'root'!r} in the image"
        user = exec_user(req.get("user") or "", req["env"])
        if tty:
            # Like runc: the pty comes from the container's own devpts (/dev/ptmx -> pts/ptmx), so
            # `tty` inside names a device that exists there; the master goes to the shim.
            step = "allocate a terminal"
            master, slave = os.openpty()
            with socket.socket(fileno=tty_sock) as sock:
                socket.send_fds(sock, [b"M"], [master])
            os.close(master)
            for target in (0, 1, 2):
                os.dup2(slave, target)
            os.close(slave)
        os.write(status_w, b"R")
        if (req.get("wait_for_go", True) or req.get("attach_sock")) and os.read(go_r, 1) != b"G":
            os._exit(1)
        os.setsid()
        if tty:
            step = "set the controlling terminal"
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.umask(0o022)
        step = f"switch to user {req.get('user') or 'root'!r} and its capabilities"
        become(user, req["caps"], req.get("cap_last"))  # after everything that needs root
        if filter_code is not None:
            step = "load the seccomp filter"
            seccomp.install(filter_code)  # last: setgroups/setuid above are allowed anyway
        step = "execute the command"
        argv = req["argv"]
        os.execvpe(argv[0], argv, req["env"])
        raise OSError(errno.ENOEXEC, "execve returned")
    except BaseException as exc:  # noqa: BLE001 - report whatever it is, then die
        code = 127
        if step == "execute the command":
            message, code = describe_exec_error(req["argv"][0], exc), exec_error_code(exc)
            marker = b"N" if code == NOT_FOUND else b"X"  # the shim tells the agent which
        else:
            message, marker = f"cannot {step}: {exc}", b"E"
        try:
            os.write(status_w, marker + message.encode("utf-8", "replace")[:3000])
        except OSError:
            pass
    os._exit(code)


