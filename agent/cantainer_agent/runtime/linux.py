"""Thin ctypes wrappers for the Linux calls the runtime needs, and /proc helpers.

Python 3.10/3.11 lack os.unshare/os.setns (3.12+) and have no mount/pivot_root/capset at all,
so they come from libc (or raw ``syscall`` where glibc has no wrapper). Everything here is
stateless and safe to call in a freshly forked single-threaded child.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .. import capabilities as _capabilities

_libc = ctypes.CDLL(None, use_errno=True)

# -- constants -----------------------------------------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# The new mount API (Linux >= 5.2): a detached copy of a mount, attached elsewhere later.
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4

# Syscalls glibc does not wrap (or wraps only in recent versions).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capget": 125, "capset": 126, "open_tree": 428, "move_mount": 429},
    "aarch64": {"pivot_root": 41, "capget": 90, "capset": 91, "open_tree": 428, "move_mount": 429},
}
_MACHINE = os.uname().machine
_NR = _SYSCALLS.get(_MACHINE)

_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        if path is None:
            raise OSError(err, f"{what}: {os.strerror(err)}")
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        f"mount {fstype or source} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2); *fd* may be a namespace file or (Linux >= 5.8) a pidfd with several CLONE_NEW* flags."""
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    if _NR is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unsupported architecture {_MACHINE}")
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def _syscall_nr(name: str) -> int:
    if _NR is None:
        raise OSError(errno.ENOSYS, f"{name}: unsupported architecture {_MACHINE}")
    return _NR[name]


def open_tree(fd: int) -> int:
    """A detached copy of the mount at the O_PATH descriptor *fd* (not of the mounts below it);
    close-on-exec. Attach it with ``move_mount``."""
    result = _libc.syscall(ctypes.c_long(_syscall_nr("open_tree")), ctypes.c_int(fd), b"",
                           ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree: {os.strerror(err)}")
    return int(result)


def move_mount(tree: int, target: str) -> None:
    """Attach the detached mount *tree* (from ``open_tree``) at *target*."""
    _check(_libc.syscall(ctypes.c_long(_syscall_nr("move_mount")), ctypes.c_int(tree), b"", ctypes.c_int(AT_FDCWD),
                         _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount on {target}", target)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return result


def set_process_name(name: str) -> None:
    """Set /proc/self/comm (at most 15 bytes), to tell shims apart in ps."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0)


# -- fork into a cgroup (v2) -----------------------------------------------------------------------
CLONE_INTO_CGROUP = 0x200000000
_SYS_CLONE3 = 435  # same number on x86_64 and aarch64 (asm-generic)


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


_libc_gil = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL held across the call, like os.fork
_libc_gil.syscall.restype = ctypes.c_long


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(), but the child is born in the cgroup v2 directory *cgroup_fd* (clone3 CLONE_INTO_CGROUP).

    Joining a cgroup by writing cgroup.procs takes the global cgroup_threadgroup_rwsem for writing,
    which waits for an RCU grace period: ~10 ms per container here. Being born in the cgroup takes
    it only for reading. Done like os.fork: PyOS_BeforeFork / AfterFork_{Child,Parent} around a raw
    clone3 (Linux >= 5.7). The child must only run our code and exec: glibc's cached thread id is
    the parent's in it (nothing we call before execve uses it). Raises OSError (e.g. ENOSYS) on
    failure, in which case the caller forks normally and joins by cgroup.procs.
    """
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=17, cgroup=cgroup_fd)  # 17 = SIGCHLD
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3(CLONE_INTO_CGROUP): {os.strerror(err)}")
    return pid


# -- capabilities --------------------------------------------------------------------------------
CAPABILITIES = _capabilities.CAPABILITIES


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def caps_mask(names) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def drop_bounding_set(keep_mask: int, cap_last: int | None = None) -> None:
    """Remove every capability outside *keep_mask* from the bounding set and clear the ambient set.

    Does not touch the effective set: a process can do this early and keep working with its
    current privileges (mounts, ...) until ``set_capabilities``. Needs CAP_SETPCAP.
    """
    top = last_cap() if cap_last is None else cap_last
    for cap in range(top + 1):
        if not keep_mask & (1 << cap):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                if err != errno.EINVAL:  # EINVAL: capability unknown to this kernel
                    raise OSError(err, f"PR_CAPBSET_DROP {cap}: {os.strerror(err)}")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on < 4.3: nothing to clear


def set_capabilities(keep_mask: int) -> None:
    """capset: effective = permitted = *keep_mask*, inheritable empty.

    Inheritable stays empty, as runc/moby do since CVE-2022-24769 (a non-empty inheritable set
    lets file capabilities of a binary inside the container grant more than the bounding set).
    """
    if _NR is None:
        raise OSError(errno.ENOSYS, f"capset: unsupported architecture {_MACHINE}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in (0, 1):
        word = (keep_mask >> (32 * index)) & 0xFFFFFFFF
        data[index].effective = word
        data[index].permitted = word
        data[index].inheritable = 0
    _check(_libc.syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)), "capset")


def drop_capabilities(keep_mask: int, cap_last: int | None = None) -> None:
    """Limit this process to *keep_mask* (bounding, ambient, effective, permitted, inheritable)."""
    drop_bounding_set(keep_mask, cap_last)
    set_capabilities(keep_mask)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def syncfs(path: str) -> None:
    """Flush the filesystem holding *path* (cheaper than sync(2) for everything)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check(_libc.syncfs(fd), "syncfs", path)
    finally:
        os.close(fd)


# -- /proc helpers -------------------------------------------------------------------------------
_BOOT_ID: str | None = None


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
                _BOOT_ID = handle.read().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of *pid*, or None if it does not exist or is a zombie.

    Together with the pid it identifies a process for the life of the boot: a recycled pid has a
    different start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def is_alive(pid: int | None, start_time: int | None) -> bool:
    return bool(pid) and start_time is not None and proc_start_time(pid) == start_time


def pidfd_open_verified(pid: int, start_time: int) -> int | None:
    """A pidfd for the process (pid, start_time), or None if that process is gone.

    The pidfd is opened first and the start time checked after: if the check passes, the pidfd
    refers to the process we recorded, never to a later one that reuses the pid.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if proc_start_time(pid) != start_time:
        os.close(fd)
        return None
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd* (a pipe or file may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

