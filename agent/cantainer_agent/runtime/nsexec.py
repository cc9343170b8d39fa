"""``exec``: run a command inside a running container, with the caller's stdio.

Meant for a short-lived, single-threaded process (the CLI's ``python3 <bundle> exec ...`` over an
SSH exec channel, whose PTY, if any, the command inherits). Steps:

1. pidfd of the container's init, verified against its recorded start time;
2. ``setns(pidfd, CLONE_NEWPID)`` so our next child is born in the container's PID namespace, fork,
   then restore our own pid_for_children namespace (the caller can keep forking normally);
3. child: join the container's cgroup (write "0" to cgroup.procs), ``setns(pidfd, mnt|uts|ipc|net|
   cgroup)`` in one call (Linux >= 5.8; older kernels get /proc/<pid>/ns/* files), chdir, the same
   capability drop, no_new_privs and seccomp filter as the container's init, execvpe;
4. parent: waits, forwarding SIGTERM/SIGHUP; SIGINT/SIGQUIT from a terminal reach the child
   directly (same process group), so the parent ignores them meanwhile.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading

from . import linux
from .errors import ContainerNotRunning
from .init import describe_exec_error, exec_command, exec_user, join_cgroup, seccomp_program
from .linux import CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS

_NS_FILES = (
    ("cgroup", CLONE_NEWCGROUP),
    ("ipc", CLONE_NEWIPC),
    ("uts", CLONE_NEWUTS),
    ("net", CLONE_NEWNET),
    ("mnt", CLONE_NEWNS),
)


def _setns_all(pidfd: int, pid: int, flags: int, names: tuple[tuple[str, int], ...]) -> None:
    try:
        linux.setns(pidfd, flags)
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    for name, nstype in names:  # kernel < 5.8: no setns on pidfds
        fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, nstype)
        finally:
            os.close(fd)


def exec_in_container(pid: int, pid_start: int | None, argv: list[str], env: dict[str, str], workdir: str,
                      cgroup_join: list[str], caps: int, name: str = "", cap_last: int | None = None,
                      user: str = "", seccomp: bool = True, timeout: float | None = None) -> int:
    """Run *argv* in the container; its exit code. With *timeout*, a command still running then
    is SIGKILLed and ``TimeoutError`` raised (health checks)."""
    if not argv or not argv[0]:
        raise ValueError("exec needs a command")
    filter_code = seccomp_program(caps, seccomp)  # built here: the child only loads it
    label = name or str(pid)
    pidfd = linux.pidfd_open_verified(pid, pid_start) if pid and pid_start is not None else None
    if pidfd is None:
        raise ContainerNotRunning(f"container {label} is not running")
    own_pid_ns = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
    switched = False
    try:
        _setns_all(pidfd, pid, CLONE_NEWPID, (("pid", CLONE_NEWPID),))
        switched = True
        if linux.proc_start_time(pid) != pid_start:  # /proc fallback above raced with pid reuse
            raise ContainerNotRunning(f"container {label} is not running")
        child = os.fork()
        if child == 0:
            _child(pidfd, pid, argv, env, workdir, cgroup_join, caps, cap_last, user, filter_code)
    finally:
        if switched:
            linux.setns(own_pid_ns, CLONE_NEWPID)  # our later children are ours again
        os.close(own_pid_ns)
        os.close(pidfd)
    return _wait(child, timeout)


def _child(pidfd: int, pid: int, argv, env, workdir, cgroup_join, caps, cap_last, user: str, filter_code) -> None:
    try:
        step = "join the container's cgroup"
        join_cgroup(cgroup_join)
        step = "enter the container's namespaces"
        _setns_all(pidfd, pid, CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP, _NS_FILES)
        os.close(pidfd)
        step = f"enter the working directory {workdir}"
        os.chdir(workdir)
        os.getcwd()  # FileNotFoundError if it lies outside the container's root
        step = f"find user {user or 'root'!r} in the image"
        env = dict(env)
        exec_user_ = exec_user(user, env)
        step = ""
        exec_command(list(argv), env, caps, cap_last, exec_user_, filter_code)
    except BaseException as exc:  # noqa: BLE001
        message = f"cannot {step}: {exc}" if step else describe_exec_error(argv[0], exc)
        try:
            os.write(2, f"cantainer exec: {message}\n".encode("utf-8", "replace"))
        except OSError:
            pass
        not_found = not step and isinstance(exc, FileNotFoundError)
        os._exit(127 if not_found else 126)


def _wait(child: int, timeout: float | None = None) -> int:
    if timeout is not None:
        return _wait_at_most(child, timeout)
    forward = (signal.SIGTERM, signal.SIGHUP)
    ignore = (signal.SIGINT, signal.SIGQUIT)
    saved = {}
    if threading.current_thread() is threading.main_thread():
        def relay(signum, _frame):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

        for sig in forward:
            saved[sig] = signal.signal(sig, relay)
        for sig in ignore:
            saved[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        _, status = os.waitpid(child, 0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _wait_at_most(child: int, timeout: float) -> int:
    pidfd = os.pidfd_open(child)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise TimeoutError(f"still running after {timeout:g} s: killed")
    finally:
        os.close(pidfd)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
