"""The seccomp filter: the syscall tables, the BPF program run through an interpreter (pure), and
the program loaded into a real process that then tries the calls the profile denies (root)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cantainer_agent.capabilities import DEFAULT_CAPS
from cantainer_agent.runtime import seccomp, syscalls
from cantainer_agent.runtime.seccomp import (
    AUDIT_ARCH,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
)

ARCHES = ("x86_64", "aarch64")
ALLOW, KILL = RET_ALLOW, RET_KILL_PROCESS
EPERM, ENOSYS = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS


def run_bpf(code: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """A classic-BPF interpreter for what the kernel hands a seccomp filter (struct seccomp_data)."""
    args = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", code, i) for i in range(0, len(code), 8)]
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = insns[pc]
        pc += 1
        if op == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif op == 0x54:  # and #k
            acc &= k
        elif op in (0x15, 0x25):  # jeq / jgt #k
            taken = acc == k if op == 0x15 else acc > k
            pc += jt if taken else jf
        elif op == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def verdict(arch: str, name: str, *args: int, caps=DEFAULT_CAPS) -> int:
    return run_bpf(seccomp.program(arch, caps), syscalls.TABLES[arch][name], AUDIT_ARCH[arch], args)


# -- the tables ------------------------------------------------------------------------------------------
def test_x86_64_table_matches_the_kernel_headers():
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("no x86_64 kernel headers (linux-libc-dev) on this machine")
    found = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)", header.read_text()))
    assert found and all(syscalls.X86_64[name] == int(nr) for name, nr in found.items())


def test_aarch64_table_matches_the_generic_kernel_headers():
    if not (shutil.which("cpp") and Path("/usr/include/asm-generic/unistd.h").exists()):
        pytest.skip("no C preprocessor or asm-generic headers on this machine")
    defines = ["-D__BITS_PER_LONG=64"] + [f"-D__ARCH_WANT_{w}" for w in (
        "RENAMEAT", "NEW_STAT", "SET_GET_RLIMIT", "TIME32_SYSCALLS", "SYS_CLONE3", "MEMFD_SECRET")]
    text = subprocess.run(["cpp", "-dM", "-P", *defines, "/usr/include/asm-generic/unistd.h"], check=True,
                          capture_output=True, text=True).stdout
    macros = dict(re.findall(r"#define (__NR\w+) (.+)", text))

    def value(name: str) -> int:
        expr = macros[name].strip("()")
        if expr.isdigit():
            return int(expr)
        base, _, plus = expr.partition("+")
        return value(base.strip()) + int(plus or 0)

    names = [n for n in macros if n.startswith("__NR_") and n not in ("__NR_syscalls", "__NR_arch_specific_syscall")]
    assert len(names) > 300
    assert all(syscalls.AARCH64[n[5:]] == value(n) for n in names)


def test_well_known_numbers():
    for name, x86, arm in (("read", 0, 63), ("openat", 257, 56), ("clone", 56, 220), ("execve", 59, 221),
                           ("unshare", 272, 97), ("keyctl", 250, 219), ("bpf", 321, 280), ("socket", 41, 198),
                           ("personality", 135, 92), ("io_uring_setup", 425, 425), ("clone3", 435, 435),
                           ("fchmodat2", 452, 452)):
        assert (syscalls.X86_64[name], syscalls.AARCH64[name]) == (x86, arm), name


# -- the program -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_foreign_architecture_is_killed_and_unknown_calls_get_enosys(arch):
    code = seccomp.program(arch, DEFAULT_CAPS)
    other = next(a for a in ARCHES if a != arch)
    assert run_bpf(code, 0, AUDIT_ARCH[other]) == KILL
    assert run_bpf(code, 0, 0x40000003) == KILL  # i386
    assert run_bpf(code, syscalls.MAX_NR[arch] + 1, AUDIT_ARCH[arch]) == ENOSYS
    assert run_bpf(code, 0x40000000, AUDIT_ARCH[arch]) == ENOSYS  # x32 numbering
    assert len(code) % 8 == 0 and len(code) // 8 < 4096


@pytest.mark.parametrize("arch", ARCHES)
def test_every_call_gets_the_profiles_verdict(arch):
    """Exhaustive: every number of the table, against the profile written as data."""
    table = syscalls.TABLES[arch]
    code = seccomp.program(arch, DEFAULT_CAPS)
    expected = seccomp.verdicts(arch, DEFAULT_CAPS)
    for nr in range(syscalls.MAX_NR[arch] + 1):
        want = expected.get(nr, seccomp.EPERM_ACTION)
        if isinstance(want, seccomp.ArgRule):
            continue  # argument checks below
        got = run_bpf(code, nr, AUDIT_ARCH[arch])
        assert got == (ALLOW if want == seccomp.ALLOW else RET_ERRNO | int(want.split(":")[1])), (nr, want)
    allowed = {n for n in seccomp.ALWAYS + list(seccomp.PER_ARCH[arch]) if n in table} - {"socket", "personality"}
    assert all(run_bpf(code, table[n], AUDIT_ARCH[arch]) == ALLOW for n in allowed)


@pytest.mark.parametrize("arch", ARCHES)
def test_docker_denials_and_argument_checks(arch):
    for name in ("keyctl", "add_key", "request_key", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register",
                 "unshare", "setns", "mount", "umount2", "kexec_load", "init_module", "open_by_handle_at",
                 "perf_event_open", "pivot_root", "userfaultfd", "swapon", "reboot"):
        assert verdict(arch, name) == EPERM, name
    assert verdict(arch, "chroot") == ALLOW  # CAP_SYS_CHROOT is a default capability
    clone_new_user = 0x10000000 | 17
    assert verdict(arch, "clone", clone_new_user) == EPERM
    assert verdict(arch, "clone", 0x003D0F00) == ALLOW  # pthread_create's flags
    assert verdict(arch, "clone", (1 << 32) | 17) == ALLOW  # the kernel reads only the low word
    assert verdict(arch, "clone3") == ENOSYS  # libc falls back to clone, whose flags BPF can read
    assert verdict(arch, "socket", 2) == ALLOW and verdict(arch, "socket", 10) == ALLOW
    assert verdict(arch, "socket", 40) == EPERM and verdict(arch, "socket", (1 << 32) | 40) == EPERM  # AF_VSOCK
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert verdict(arch, "personality", persona) == ALLOW
    assert verdict(arch, "personality", 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE


@pytest.mark.parametrize("arch", ARCHES)
def test_capabilities_open_what_docker_opens(arch):
    admin = DEFAULT_CAPS + ("CAP_SYS_ADMIN",)
    for name in ("unshare", "mount", "setns", "clone3"):
        assert verdict(arch, name, caps=admin) == ALLOW
    assert verdict(arch, "clone", 0x10000000 | 17, caps=admin) == ALLOW
    assert verdict(arch, "keyctl", caps=admin) == EPERM  # nobody gets the kernel keyring
    assert verdict(arch, "ptrace", caps=DEFAULT_CAPS + ("CAP_SYS_PTRACE",)) == ALLOW
    assert verdict(arch, "chroot", caps=()) == EPERM  # --cap-drop ALL


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="x86_64 and aarch64"):
        seccomp.program("riscv64", DEFAULT_CAPS)


# -- loaded into a real process ----------------------------------------------------------------------------
PROBE = r"""
import ctypes, errno, json, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"x86_64": {"unshare": 272, "keyctl": 250, "bpf": 321, "io_uring_setup": 425, "add_key": 248,
                 "socket": 41, "personality": 135, "clone3": 435, "mount": 165, "getpid": 39},
      "aarch64": {"unshare": 97, "keyctl": 219, "bpf": 280, "io_uring_setup": 425, "add_key": 217,
                  "socket": 198, "personality": 92, "clone3": 435, "mount": 40, "getpid": 172}}[platform.machine()]
def call(name, *args):
    result = libc.syscall(ctypes.c_long(NR[name] if isinstance(name, str) else name),
                          *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
params = ctypes.create_string_buffer(120)
print(json.dumps({
    "unshare user": call("unshare", 0x10000000), "keyctl": call("keyctl", 0, -3, 0),
    "add_key": call("add_key", 0, 0, 0, 0, -3), "bpf": call("bpf", 0, 0, 0),
    "io_uring_setup": call("io_uring_setup", 1, ctypes.addressof(params)), "mount": call("mount", 0, 0, 0, 0, 0),
    "clone3": call("clone3", 0, 0), "vsock": call("socket", 40, 1, 0), "inet": call("socket", 2, 2, 0),
    "personality nr": call("personality", 0x40000), "personality query": call("personality", 0xFFFFFFFF),
    "getpid": call("getpid"), "from the future": call(1000),
}))
"""


def test_loaded_filter_denies_real_calls_and_python_still_runs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from cantainer_agent.runtime import linux

    machine = os.uname().machine
    code = seccomp.program(machine, DEFAULT_CAPS)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.dup2(write, 1)
            linux.set_no_new_privs()
            linux.drop_capabilities(linux.caps_mask(DEFAULT_CAPS))
            seccomp.install(code)
            os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", PROBE])
        finally:
            os._exit(127)
    os.close(write)
    with os.fdopen(read) as handle:
        output = handle.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    got = json.loads(output)
    assert got == {
        "unshare user": "EPERM", "keyctl": "EPERM", "add_key": "EPERM", "bpf": "EPERM", "io_uring_setup": "EPERM",
        "mount": "EPERM", "clone3": "ENOSYS", "vsock": "EPERM", "inet": "ok", "personality nr": "EPERM",
        "personality query": "ok", "getpid": "ok", "from the future": "ENOSYS",
    }
    # and without the filter the same process gets further: the denials above are the filter's
    plain = json.loads(subprocess.run([sys.executable, "-I", "-S", "-c", PROBE], capture_output=True, text=True,
                                      check=True).stdout)
    assert plain["keyctl"] != "EPERM" and plain["io_uring_setup"] != "EPERM" and plain["clone3"] != "ENOSYS"
