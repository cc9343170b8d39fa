"""The containers' default seccomp filter: docker's default profile as a classic-BPF program we build.

No libseccomp (hosts have no Python binding; the bundle stays small): ``program(arch, caps)`` turns
the profile below into BPF for x86_64 or aarch64 from the tables in syscalls.py; ``install`` loads
it with prctl(PR_SET_SECCOMP) — after no_new_privs and the capability drop, right before execve,
in the container's init and in ``exec``. The program: a foreign architecture (i386, arm32) kills
the process; a number above the tables (a newer call, or x32's) answers ENOSYS, so libc falls back
to an older call, as under runc; then, over the numbers in ascending runs of equal verdict, allow,
or check the arguments docker checks, or fail with EPERM. Docker's profile as it is, except:
io_uring_* denied (its queued operations never pass through seccomp, and it has been a steady
source of kernel exploits; older docker profiles allowed it), a few newer harmless calls allowed
(fchmodat2, futex2, cachestat, mseal, statmount/listmount, map_shadow_stack), and argument checks
on the low 32 bits, the width the kernel reads (libseccomp compares all 64).
"""
from __future__ import annotations

import ctypes
import errno
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from .syscalls import MAX_NR, TABLES

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

# classic BPF opcodes (linux/bpf_common.h)
LD_W_ABS = 0x20
ALU_AND_K = 0x54
JEQ_K = 0x15
JGT_K = 0x25
RET_K = 0x06
OFFSET_NR, OFFSET_ARCH, OFFSET_ARGS = 0, 4, 16  # struct seccomp_data; little-endian: low word first

ALWAYS = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2
fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat
fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait
futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid
getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom
getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt
get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listmount listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64
madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2
mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall
rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid
setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socketcall socketpair splice stat stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range
syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
vfork vmsplice wait4 waitid waitpid write writev
process_vm_readv process_vm_writev ptrace
""".split()  # ptrace & co.: docker allows them on kernels >= 4.8 (every host we support)

PER_ARCH = {"x86_64": ("arch_prctl", "modify_ldt"), "aarch64": ()}

# docker's "includes: caps" blocks: allowed only to a container holding the capability
BY_CAPABILITY = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                      "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
                      "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
                      "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

AF_VSOCK = 40
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # PER_LINUX, PER_LINUX32, UNAME26 variants, query
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


@dataclass(frozen=True)
class ArgRule:
    """Allow the call when the low 32 bits of argument *index* pass: ``op`` is "ne" (!= values[0]),
    "in" (one of values) or "masked_eq" ((arg & mask) == values[0]); otherwise EPERM."""

    index: int
    op: str
    values: tuple[int, ...]
    mask: int = 0xFFFFFFFF


ALLOW = "allow"


def errno_action(code: int) -> str:
    return f"errno:{code}"


EPERM_ACTION = errno_action(errno.EPERM)
ENOSYS_ACTION = errno_action(errno.ENOSYS)


def verdicts(arch: str, caps: Iterable[str]) -> dict[int, object]:
    """Pure: what the profile does with each call number of *arch* (ALLOW, "errno:N" or an ArgRule);
    numbers absent from the result get EPERM."""
    table = TABLES[arch]
    caps = set(caps)
    allowed = set(ALWAYS) | set(PER_ARCH[arch])
    for cap, names in BY_CAPABILITY.items():
        if cap in caps:
            allowed |= set(names)
    out: dict[int, object] = {table[name]: ALLOW for name in allowed if name in table}
    special: dict[str, object] = {
        "socket": ArgRule(0, "ne", (AF_VSOCK,)),
        "personality": ArgRule(0, "in", PERSONALITIES),
    }
    if "CAP_SYS_ADMIN" not in caps:
        special["clone"] = ArgRule(0, "masked_eq", (0,), NAMESPACE_FLAGS)  # no new namespaces
        special["clone3"] = ENOSYS_ACTION  # its flags live in memory BPF cannot read: make libc use clone
    for name, verdict in special.items():
        if name in table:
            out[table[name]] = verdict
    return out


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _ret(action: object) -> bytes:
    if action == ALLOW:
        return _ins(RET_K, RET_ALLOW)
    return _ins(RET_K, RET_ERRNO | int(str(action).split(":")[1]))


def _arg_block(rule: ArgRule) -> list[bytes]:
    code = [_ins(LD_W_ABS, OFFSET_ARGS + 8 * rule.index)]
    if rule.op == "ne":
        code += [_ins(JEQ_K, rule.values[0], 0, 1), _ret(EPERM_ACTION), _ret(ALLOW)]
    elif rule.op == "in":
        for value in rule.values:
            code += [_ins(JEQ_K, value, 0, 1), _ret(ALLOW)]
        code.append(_ret(EPERM_ACTION))
    elif rule.op == "masked_eq":
        code += [_ins(ALU_AND_K, rule.mask), _ins(JEQ_K, rule.values[0], 0, 1), _ret(ALLOW), _ret(EPERM_ACTION)]
    else:
        raise ValueError(f"unknown argument check {rule.op!r}")
    return code


@lru_cache(maxsize=16)
def _program(arch: str, caps: frozenset[str]) -> bytes:
    if arch not in TABLES:
        raise ValueError(f"no seccomp profile for architecture {arch!r} (x86_64 and aarch64 are supported)")
    top = MAX_NR[arch]
    table = verdicts(arch, caps)
    code = [
        _ins(LD_W_ABS, OFFSET_ARCH), _ins(JEQ_K, AUDIT_ARCH[arch], 1, 0), _ins(RET_K, RET_KILL_PROCESS),
        _ins(LD_W_ABS, OFFSET_NR), _ins(JGT_K, top, 0, 1), _ret(ENOSYS_ACTION),
    ]
    nr = 0
    while nr <= top:  # runs of equal verdict, ascending: the first run whose end is >= nr decides
        verdict = table.get(nr, EPERM_ACTION)
        end = nr
        if not isinstance(verdict, ArgRule):
            while end + 1 <= top and table.get(end + 1, EPERM_ACTION) == verdict:
                end += 1
        body = _arg_block(verdict) if isinstance(verdict, ArgRule) else [_ret(verdict)]
        if end < top:
            code.append(_ins(JGT_K, end, len(body), 0))
        code += body
        nr = end + 1
    if len(code) > 4096:  # BPF_MAXINSNS
        raise ValueError(f"seccomp program too long ({len(code)} instructions)")
    return b"".join(code)


def program(arch: str, caps: Iterable[str]) -> bytes:
    """The BPF program (struct sock_filter[]) for a container of *arch* holding *caps*."""
    return _program(arch, frozenset(caps))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def install(code: bytes) -> None:
    """Load *code* as this thread's seccomp filter (inherited by children and kept across execve).
    Needs no_new_privs (or CAP_SYS_ADMIN)."""
    from .linux import prctl  # noqa: PLC0415 - keeps the pure part importable without libc

    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.addressof(buffer))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
