"""Integration tests of the runtime: real namespaces, overlayfs, cgroups (v1 here) and processes.

Root only. Each test gets a temp state/run dir and its own cgroup parent; the ``runtimes``
fixture removes every container and then fails the test if any mount, cgroup, directory or
process of ours is left. ``exec`` is always run in a separate process (as the CLI will), because
it forks and this test process has threads (the exit watcher).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cantainer_agent.runtime import (
    DEFAULT_CAPS,
    DOCKER_DEFAULT_CAPS,
    CommandFailed,
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRunning,
    ContainerSpec,
    Limits,
    StartError,
)
from cantainer_agent.runtime.linux import caps_mask

from .conftest import ALPINE_SHA256, base, mounts_below, needs_root, os_release, wait_gone

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

LOOP = ["/bin/sh", "-c", "i=0; while [ ! -e /tmp/stop ]; do echo tick $i; i=$((i+1)); sleep 0.05; done; exit 42"]


def spec(cid: str, command, **kwargs) -> ContainerSpec:
    kwargs.setdefault("name", cid)
    return ContainerSpec(id=cid, image=ALPINE_SHA256, command=command, **kwargs)


def run_to_exit(runtime, alpine, cid, command, **kwargs):
    runtime.start(spec(cid, command, **kwargs), alpine)
    info = runtime.wait(cid, timeout=30)
    return info, runtime.read_logs(cid, ("stdout",)).decode("utf-8", "replace")  # stderr: read_logs(cid, ("stderr",))


# Runtime.exec forks: it runs in a short-lived single-threaded process, as the agent's `exec` tool does.
EXEC = """
import sys
from cantainer_agent.runtime import Runtime, RuntimeFailure
state_dir, run_dir, parent, cid, *argv = sys.argv[1:]
try:
    sys.exit(Runtime(state_dir, run_dir, parent).exec(cid, argv))
except RuntimeFailure as exc:
    print(f"cantainer exec: {exc}", file=sys.stderr)
    sys.exit(125)
"""


def exec_in(runtimes, cid, *argv, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", EXEC, runtimes.state_dir, runtimes.run_dir, runtimes.cgroup_parent, cid, *argv],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def wait_for(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# -- basic behaviour -----------------------------------------------------------------------------
def test_release_and_exit_code(runtime, runtimes, alpine):
    info, log = run_to_exit(runtime, alpine, "rel", ["/bin/cat", "/etc/os-release"])
    assert info.state == "exited" and info.exit_code == 0 and info.signal is None
    assert os_release(log) == base().os_release  # the image the rootfs came from, whichever it is
    assert info.started_at and info.finished_at >= info.started_at >= info.created_at
    event = runtimes.wait_event("rel")
    assert event is not None and event.state == "exited" and event.exit_code == 0


def test_exit_code_and_stderr_propagate(runtime, runtimes, alpine):
    info, log = run_to_exit(runtime, alpine, "code", ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    assert info.exit_code == 7
    assert log == "out\n" and runtime.read_logs("code", ("stderr",)) == b"err\n"
    assert runtimes.wait_event("code").exit_code == 7


def test_the_log_keeps_stdout_and_stderr_apart_with_time_stamps(runtime, alpine):
    from cantainer_agent.runtime import logfile

    script = "echo out1; echo err1 >&2; printf 'no newline'; printf '\\377\\376 not utf-8\\n' >&2"
    info, _ = run_to_exit(runtime, alpine, "streams", ["/bin/sh", "-c", script])
    assert info.exit_code == 0
    assert runtime.read_logs("streams", ("stdout",)) == b"out1\nno newline"
    assert runtime.read_logs("streams", ("stderr",)) == b"err1\n\xff\xfe not utf-8\n"  # bytes kept exactly
    lines = Path(runtime.logs("streams")).read_bytes().splitlines()
    records = [json.loads(line) for line in lines]  # docker json-file's fields, one JSON object a line
    assert {r["stream"] for r in records} == {"stdout", "stderr"} and all(set(r) == {"log", "stream", "time"}
                                                                           for r in records)
    for record in records:
        assert record["time"].endswith("Z") and info.started_at - 1 <= stamp(record["time"]) <= info.finished_at + 1
    assert logfile.timestamp(info.started_at) < logfile.timestamp(info.finished_at + 1)


def stamp(text: str) -> float:
    import datetime

    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def test_namespaces_hostname_pid1_env_workdir(runtime, alpine):
    script = textwrap.dedent("""\
        hostname
        cat /etc/hostname
        echo pid=$$
        tr '\\0\\n' '  ' < /proc/1/cmdline; echo
        ls /proc | grep -E '^[0-9]+$' | wc -l
        pwd
        echo "FOO=$FOO HOME=$HOME HOSTNAME=$HOSTNAME"
        grep -c . /etc/hosts; grep db /etc/hosts
        cat /etc/resolv.conf
        ls -la /
        umask
    """)
    info, log = run_to_exit(
        runtime, alpine, "ns", ["/bin/sh", "-c", script], name="web-1", env={"FOO": "bar baz"},
        workdir="/srv/app", hosts=[("10.9.0.7", "db db.local")], resolv_conf="nameserver 10.9.0.1\n",
    )
    assert info.exit_code == 0, log
    lines = log.splitlines()
    assert lines[0] == "web-1" and lines[1] == "web-1"
    assert lines[2] == "pid=1"
    assert lines[3].startswith("/bin/sh -c hostname")
    assert int(lines[4]) <= 4  # sh, ls, grep, wc: only the container's processes are visible
    assert lines[5] == "/srv/app"  # created on demand
    assert lines[6] == "FOO=bar baz HOME=/root HOSTNAME=web-1"
    assert lines[7] == "3" and lines[8] == "10.9.0.7\tdb db.local"
    assert lines[9] == "nameserver 10.9.0.1"
    assert lines[-1] == "0022"


def test_filesystem_sys_ro_dev_minimal_proc_masked(runtime, alpine):
    script = textwrap.dedent("""\
        echo "sys:$(grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1)"
        touch /sys/x 2>/dev/null && echo sys-writable || echo sys-readonly
        echo "dev:$(ls /dev | tr '\\n' ' ')"
        for d in null zero full random urandom tty; do [ -c /dev/$d ] || echo "missing $d"; done
        [ -c /dev/pts/ptmx ] && echo pts-ok
        grep -q ' /dev/pts devpts ' /proc/mounts && echo devpts-ok
        grep -q ' /dev/shm tmpfs ' /proc/mounts && echo shm-ok
        echo x > /dev/null && head -c 4 /dev/zero | wc -c
        echo hi > /dev/full 2>/dev/null || echo full-ok
        echo "timer_list:$(wc -c < /proc/timer_list)"
        echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo procsys-writable || echo procsys-readonly
        echo hello > /tmp/f && cat /tmp/f
        mknod /tmp/sda b 8 0 2>/dev/null && echo mknod-allowed || echo mknod-denied
        mount -t tmpfs none /mnt 2>/dev/null && echo mount-allowed || echo mount-denied
        grep -c ' / overlay ' /proc/mounts
    """)
    info, log = run_to_exit(runtime, alpine, "fs", ["/bin/sh", "-c", script])
    assert info.exit_code == 0, log
    lines = log.splitlines()
    assert lines[0] == "sys:ro"
    assert "sys-readonly" in lines
    assert lines[2].split(":", 1)[1].split() == sorted(
        ["fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
         "urandom", "zero"])
    assert not [line for line in lines if line.startswith("missing")]
    for marker in ("pts-ok", "devpts-ok", "shm-ok", "full-ok", "timer_list:0", "procsys-readonly", "hello",
                   "mknod-denied", "mount-denied"):
        assert marker in lines, (marker, log)
    assert "4" in lines
    assert lines[-1] == "1"


STATUS = ["/bin/sh", "-c", "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status"]


def status_of(log: str) -> dict[str, str]:
    return {key: value.strip() for key, value in (line.split(":\t") for line in log.splitlines())}


def test_capabilities_dropped_no_new_privs_and_seccomp(runtime, alpine):
    info, log = run_to_exit(runtime, alpine, "caps", STATUS)
    assert info.exit_code == 0
    status = status_of(log)
    expected = caps_mask(DEFAULT_CAPS)
    assert int(status["CapBnd"], 16) == expected
    assert int(status["CapEff"], 16) == expected and int(status["CapPrm"], 16) == expected
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2" and status.get("Seccomp_filters", "1") == "1"  # filter mode, our one filter
    # docker's default set, minus CAP_MKNOD and CAP_NET_RAW (capabilities.py)
    assert expected == caps_mask(DOCKER_DEFAULT_CAPS) & ~(1 << 27) & ~(1 << 13)
    assert expected == 0xA00405FB


def test_cap_add_cap_drop_and_unconfined_reach_init_and_exec(runtime, runtimes, alpine):
    runtime.start(spec("tuned", ["sleep", "60"], cap_add=["net_raw", "SYS_PTRACE"], cap_drop=["CAP_CHOWN"],
                       seccomp="unconfined"), alpine)
    wanted = (set(DEFAULT_CAPS) | {"CAP_NET_RAW", "CAP_SYS_PTRACE"}) - {"CAP_CHOWN"}
    for result in (exec_in(runtimes, "tuned", *STATUS), exec_in(runtimes, "tuned", "cat", "/proc/1/status")):
        status = {k: v for k, v in status_of("\n".join(
            line for line in result.stdout.splitlines() if line.startswith(("Cap", "NoNewPrivs", "Seccomp:")))).items()}
        assert int(status["CapEff"], 16) == caps_mask(wanted) == int(status["CapBnd"], 16), result.stdout
        assert status["Seccomp"] == "0" and status["NoNewPrivs"] == "1"
    runtime.start(spec("all", ["sleep", "60"], cap_drop=["ALL"], cap_add=["KILL"]), alpine)
    status = status_of(exec_in(runtimes, "all", *STATUS).stdout)
    assert int(status["CapEff"], 16) == caps_mask(["CAP_KILL"]) and status["Seccomp"] == "2"
    # without CAP_SETGID/SETUID the user switch still happens (before the capabilities are set)
    info, log = run_to_exit(runtime, alpine, "nobody", ["/bin/sh", "-c", "id -u; grep CapEff /proc/self/status"],
                            user="nobody", cap_drop=["ALL"])
    assert info.exit_code == 0 and log.split()[0] == "65534" and int(log.split()[-1], 16) == 0, log


def test_seccomp_denies_nested_user_namespaces_and_unconfined_opts_out(runtime, alpine):
    """unshare -U -r gave a full capability set and a private mount table before the filter (issue 22)."""
    attempt = ["unshare", "-U", "-r", "-m", "-n", "sh", "-c",
               "mount -t tmpfs none /mnt && grep CapEff /proc/self/status"]
    info, _ = run_to_exit(runtime, alpine, "nested", attempt)
    errors = runtime.read_logs("nested", ("stderr",)).decode()
    assert info.exit_code != 0 and "Operation not permitted" in errors, errors
    info, log = run_to_exit(runtime, alpine, "nested-open", attempt, seccomp="unconfined")
    errors = runtime.read_logs("nested-open", ("stderr",)).decode()
    assert info.exit_code == 0 and int(log.split()[-1], 16) > caps_mask(DEFAULT_CAPS), log + errors  # what it stops


def test_no_descriptor_of_the_host_leaks_into_the_container(runtime, alpine):
    """runc CVE-2024-21626: a host directory descriptor open in init made `-w /proc/self/fd/N` escape."""
    info, log = run_to_exit(runtime, alpine, "fds", ["/bin/sh", "-c", "ls /proc/1/fd; true"])
    assert info.exit_code == 0 and log.split() == ["0", "1", "2"], log  # sh (pid 1) holds only its stdio
    for fd in range(3, 10):
        try:
            runtime.start(spec(f"w{fd}", ["pwd"], workdir=f"/proc/self/fd/{fd}"), alpine)
        except StartError as error:
            assert "working directory" in str(error)
            continue
        info = runtime.wait(f"w{fd}", timeout=30)
        assert Path(runtime.logs(f"w{fd}")).read_text().startswith("/proc/"), fd  # never a host path


def test_device_nodes_are_the_hosts_harmless_ones_and_nothing_else_opens(runtimes, alpine):
    runtime = runtimes.make()
    script = textwrap.dedent("""\
        ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | awk '{print $5 $6, $NF}'
        grep ' /dev ' /proc/mounts | cut -d' ' -f4
        mknod /dev/sda b 8 0 && echo made
        head -c 1 /dev/sda >/dev/null 2>&1 && echo opened || echo refused
        cat /proc/interrupts | wc -c
    """)
    info, log = run_to_exit(runtime, alpine, "devs", ["/bin/sh", "-c", script], cap_add=["MKNOD"])
    lines = log.splitlines()
    assert sorted(lines[:6]) == ["1,3 /dev/null", "1,5 /dev/zero", "1,7 /dev/full", "1,8 /dev/random",
                                 "1,9 /dev/urandom", "5,0 /dev/tty"], log
    assert "nodev" in lines[6].split(",")
    # even with CAP_MKNOD: the v1 device cgroup refuses the node, and where a node can be made (v2) no
    # file system of the container lets it open
    assert "refused" in lines and "opened" not in lines, log
    if runtime.cgroups.layout.version == 1 and runtime.cgroups.layout.mount_of("devices"):
        assert "made" not in lines
    assert lines[-1] == "0"  # /proc/interrupts masked
    layout = runtime.cgroups.layout
    if layout.version == 1 and layout.mount_of("devices"):
        runtime.start(spec("devlist", ["sleep", "60"]), alpine)
        rules = Path(runtime.cgroups.cgroup("devlist").path("devices"), "devices.list").read_text().split("\n")
        assert sorted(filter(None, rules)) == sorted(["c 1:3 rw", "c 1:5 rw", "c 1:7 rw", "c 1:8 rw", "c 1:9 rw",
                                                      "c 5:0 rw", "c 5:2 rw", "c 136:* rw"])


def test_default_pids_limit_and_parent_cap(runtimes, alpine):
    runtime = runtimes.make()
    runtime.start(spec("pids", ["sleep", "60"]), alpine)
    runtime.start(spec("morepids", ["sleep", "60"], limits=Limits(pids=5000)), alpine)
    cgroup = runtime.cgroups.cgroup("pids")
    assert cgroup.read("pids", "pids.max") == "1024"
    assert runtime.cgroups.cgroup("morepids").read("pids", "pids.max") == "5000"
    parent = os.path.dirname(cgroup.path("pids"))
    with open("/proc/sys/kernel/pid_max") as a, open("/proc/sys/kernel/threads-max") as b:
        tasks = min(int(a.read()), int(b.read()))
    assert int(Path(parent, "pids.max").read_text()) == tasks - max(1024, tasks // 10)
    memory = os.path.dirname(cgroup.path("memory"))
    name = "memory.limit_in_bytes" if runtime.cgroups.layout.version == 1 else "memory.max"
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert int(Path(memory, name).read_text()) <= total - (256 << 20)


def test_start_refused_below_the_free_space_floor(runtimes, alpine):
    runtime = runtimes.make(min_free_bytes=1 << 60)
    with pytest.raises(StartError, match=r"cannot start container full: only \d+ MiB free .* must stay free"):
        runtime.start(spec("full", ["true"]), alpine)
    assert runtime.list() == []


def test_before_exec_hook_sees_pid_and_own_netns(runtime, runtimes, alpine):
    seen = {}

    def hook(pid):
        seen["pid"] = pid
        seen["netns"] = os.readlink(f"/proc/{pid}/ns/net")
        seen["mntns"] = os.readlink(f"/proc/{pid}/ns/mnt")
        seen["exe"] = os.readlink(f"/proc/{pid}/exe")  # still the runtime's python: not exec'd yet
        seen["log"] = runtime.read_logs("hook").decode()

    info = runtime.start(spec("hook", ["/bin/sh", "-c", "echo started; ls /sys/class/net; sleep 30"]), alpine,
                         before_exec=hook)
    try:
        assert seen["pid"] == info.pid
        assert seen["netns"] != os.readlink("/proc/self/ns/net")
        assert seen["mntns"] != os.readlink("/proc/self/ns/mnt")
        assert "python" in seen["exe"]
        assert seen["log"] == ""
        assert os.readlink(f"/proc/{info.pid}/ns/net") == seen["netns"]
        assert wait_for(lambda: runtime.read_logs("hook").decode().split() == ["started", "lo"])
    finally:
        stopped = runtime.stop("hook", timeout=0.2)
    assert stopped.state == "exited" and stopped.exit_code == 137 and stopped.signal == 9


def test_before_exec_failure_tears_everything_down(runtime, runtimes, alpine):
    class Boom(Exception):
        pass

    pids = []

    def hook(pid):
        pids.append(pid)
        raise Boom("veth setup failed")

    with pytest.raises(Boom, match="veth setup failed"):
        runtime.start(spec("boom", ["/bin/true"]), alpine, before_exec=hook)
    assert wait_gone(pids[0])
    with pytest.raises(ContainerNotFound):
        runtime.inspect("boom")
    assert not os.path.exists(os.path.join(runtimes.state_dir, "boom"))
    assert not any(os.path.exists(os.path.join(d, "boom")) for d in runtimes.cgroup_dirs())
    # and the id can be used again
    info, log = run_to_exit(runtime, alpine, "boom", ["/bin/echo", "again"])
    assert log == "again\n"


@pytest.mark.parametrize("command, fragment, exit_code", [
    (["/bin/nonexistent"], "/bin/nonexistent: executable file not found", 127),
    (["nonexistent-in-path"], "nonexistent-in-path: executable file not found", 127),
    (["/etc/hosts"], "permission denied", 126),
    (["/etc"], "permission denied", 126),
])
def test_exec_failure_is_a_start_error_with_dockers_exit_code(runtime, runtimes, alpine, command, fragment, exit_code):
    with pytest.raises(CommandFailed, match=fragment) as failure:
        runtime.start(spec("bad", command), alpine)
    assert failure.value.exit_code == exit_code
    assert runtime.list() == []
    assert not any(os.path.exists(os.path.join(d, "bad")) for d in runtimes.cgroup_dirs())


def test_duplicate_id_and_missing_image(runtime, alpine):
    runtime.start(spec("dup", ["/bin/sleep", "30"]), alpine)
    with pytest.raises(ContainerExists):
        runtime.start(spec("dup", ["/bin/true"]), alpine)
    assert runtime.inspect("dup").state == "running"
    with pytest.raises(StartError, match="does not exist"):
        runtime.start(spec("noimg", ["/bin/true"]), "/nonexistent/rootfs")
    with pytest.raises(ContainerRunning):
        runtime.remove("dup")
    runtime.remove("dup", force=True)
    assert runtime.list() == []


def test_limits_applied_and_enforced(runtime, runtimes, alpine):
    limits = Limits(memory=48 << 20, cpus=0.5, pids=12)
    info = runtime.start(spec("lim", ["/bin/sleep", "60"], limits=limits), alpine)
    cgroup = runtime.cgroups.cgroup("lim")
    if cgroup.layout.version == 1:
        assert int(cgroup.read("memory", "memory.limit_in_bytes")) == 48 << 20
        assert cgroup.read("cpu", "cpu.cfs_quota_us") == "50000"
        assert cgroup.read("cpu", "cpu.cfs_period_us") == "100000"
    else:
        assert int(cgroup.read("memory", "memory.max")) == 48 << 20
        assert cgroup.read("cpu", "cpu.max") == "50000 100000"
    assert cgroup.read("pids", "pids.max") == "12"
    assert cgroup.pids() == {info.pid}
    # the container sees its own cgroup as the root of its cgroup namespace
    assert exec_in(runtimes, "lim", "/bin/cat", "/proc/self/cgroup").stdout.strip().endswith(":/")
    # a fork bomb run with exec (which joins the container's cgroup) hits pids.max
    bomb = exec_in(
        runtimes, "lim", "/bin/sh", "-c", "for i in $(seq 30); do sleep 30 >/dev/null 2>&1 & done; echo all-forked"
    )
    assert "can't fork" in bomb.stderr and "all-forked" not in bomb.stdout
    assert 2 <= len(cgroup.pids()) <= 12
    runtime.remove("lim", force=True)


def test_oom_kill_recorded(runtime, alpine):
    info, _ = run_to_exit(runtime, alpine, "oom", ["/bin/sh", "-c", "x=a; while true; do x=$x$x$x$x; done"],
                          limits=Limits(memory=16 << 20))
    assert info.exit_code == 137 and info.signal == 9
    assert info.oom_killed


def test_exec_in_running_container(runtime, runtimes, alpine):
    runtime.start(spec("ex", ["/bin/sleep", "60"], name="exbox", env={"ONLY": "container"}), alpine)
    done = exec_in(runtimes, "ex", "/bin/sh", "-c", "hostname; echo $ONLY; cat /proc/1/comm; echo $$; "
                   "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; exit 5")
    assert done.returncode == 5, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "exbox" and lines[1] == "container" and lines[2] == "sleep"
    assert int(lines[3]) > 1  # a new process in the container's PID namespace
    assert int(lines[4].split()[1], 16) == caps_mask(DEFAULT_CAPS)
    assert lines[5].split()[1] == "1"
    assert os_release(exec_in(runtimes, "ex", "/bin/cat", "/etc/os-release").stdout) == base().os_release
    missing = exec_in(runtimes, "ex", "/nope")
    assert missing.returncode == 127 and "executable file not found" in missing.stderr
    runtime.stop("ex", timeout=0)
    stopped = exec_in(runtimes, "ex", "/bin/true")
    assert stopped.returncode == 125 and "not running" in stopped.stderr
    with pytest.raises(ContainerNotRunning):
        runtime.exec("ex", ["/bin/true"])


def test_stop_sigterm_then_sigkill(runtime, alpine):
    runtime.start(
        spec("trap", ["/bin/sh", "-c", "trap 'echo got TERM; exit 3' TERM; while true; do sleep 0.05; done"]), alpine
    )
    time.sleep(0.2)
    info = runtime.stop("trap", timeout=5)
    assert info.state == "exited" and info.exit_code == 3
    assert "got TERM" in runtime.read_logs("trap").decode()
    # PID 1 without a handler ignores SIGTERM: SIGKILL after the timeout
    runtime.start(spec("deaf", ["/bin/sleep", "60"]), alpine)
    started = time.monotonic()
    info = runtime.stop("deaf", timeout=0.3)
    assert info.exit_code == 137 and time.monotonic() - started >= 0.3
    assert runtime.stop("deaf").state == "exited"  # idempotent


def test_remove_cleans_mounts_cgroups_dirs(runtime, runtimes, alpine):
    info = runtime.start(spec("rm", ["/bin/sh", "-c", "echo data > /root/file; sleep 60"]), alpine)
    cdir = os.path.join(runtimes.state_dir, "rm")
    # the overlay exists only in the container's mount namespace, never on the host
    assert mounts_below(runtimes.state_dir) == []
    with open(f"/proc/{info.pid}/mountinfo") as handle:
        assert any(" / / " in line and "overlay" in line for line in handle)
    assert wait_for(lambda: os.path.exists(os.path.join(cdir, "upper/root/file")))
    runtime.remove("rm", force=True)
    assert not os.path.exists(cdir)
    assert not os.path.exists(os.path.join(runtimes.run_dir, "rm"))
    assert not any(os.path.exists(os.path.join(d, "rm")) for d in runtimes.cgroup_dirs())
    assert wait_gone(info.pid) and wait_gone(info.shim_pid)
    runtime.remove("rm")  # idempotent
    with pytest.raises(ContainerNotFound):
        runtime.inspect("rm")


def test_list_and_update_etc(runtime, runtimes, alpine):
    runtime.start(spec("l1", ["/bin/sleep", "60"]), alpine)
    run_to_exit(runtime, alpine, "l2", ["/bin/sh", "-c", "exit 3"])
    states = {info.id: (info.state, info.exit_code) for info in runtime.list()}
    assert states == {"l1": ("running", None), "l2": ("exited", 3)}
    runtime.update_etc_file("l1", "hosts", "127.0.0.1\tlocalhost\n10.1.1.1\tnewpeer\n")
    assert "newpeer" in exec_in(runtimes, "l1", "/bin/cat", "/etc/hosts").stdout
    with pytest.raises(ValueError):
        runtime.update_etc_file("l1", "passwd", "")


def test_log_rotation(runtimes, alpine):
    runtime = runtimes.make(log_max_bytes=4096)
    info, _ = run_to_exit(runtime, alpine, "rot", ["/bin/sh", "-c", "for i in $(seq 2000); do echo line $i; done"])
    assert info.exit_code == 0
    current, old = Path(runtime.logs("rot")), Path(runtime.logs("rot") + ".1")
    assert old.exists() and old.stat().st_size >= 4096
    assert current.stat().st_size < 4096 + 4096
    kept = runtime.read_logs("rot").decode().splitlines()  # log.1, then log: what is kept, in order
    assert kept[-1] == "line 2000" and kept == [f"line {n}" for n in range(2001 - len(kept), 2001)]


# -- supervision: the container outlives the agent -----------------------------------------------
AGENT = textwrap.dedent("""\
    import json, sys, time
    from cantainer_agent.runtime import Runtime, ContainerSpec
    state, run, parent, rootfs, sha = sys.argv[1:6]
    rt = Runtime(state, run, parent, on_exit=lambda info: None)
    info = rt.start(ContainerSpec(id="survivor", name="survivor", image=sha, command=json.loads(sys.argv[6])), rootfs)
    print(json.dumps({"pid": info.pid, "shim": info.shim_pid, "zygote": rt.zygote.pid}), flush=True)
    time.sleep(600)
""")


def test_container_survives_agent_sigkill_and_is_readopted(runtimes, alpine):
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, runtimes.state_dir, runtimes.run_dir, runtimes.cgroup_parent, alpine,
         ALPINE_SHA256, json.dumps(LOOP)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        started = json.loads(agent.stdout.readline())
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    assert wait_gone(started["zygote"])  # the fork server follows its agent

    runtime = runtimes.make()  # a "restarted agent": re-adopts from disk
    info = runtime.inspect("survivor")
    assert info.state == "running" and info.pid == started["pid"] and info.shim_pid == started["shim"]
    log = Path(runtime.logs("survivor"))
    size = log.stat().st_size
    assert wait_for(lambda: log.stat().st_size > size + 50, 5), "the log stopped growing"
    assert exec_in(runtimes, "survivor", "/bin/hostname").stdout == "survivor\n"

    assert runtimes.wait_event("survivor", timeout=0.2) is None
    assert exec_in(runtimes, "survivor", "/bin/touch", "/tmp/stop").returncode == 0
    event = runtimes.wait_event("survivor")  # pushed by the exit watcher, no polling
    assert event is not None and event.state == "exited" and event.exit_code == 42
    assert runtime.inspect("survivor").exit_code == 42
    assert "tick" in runtime.read_logs("survivor").decode()


def test_killed_shim_leaves_a_dead_but_removable_container(runtime, runtimes, alpine):
    info = runtime.start(spec("orphan", ["/bin/sleep", "60"]), alpine)
    os.kill(info.shim_pid, signal.SIGKILL)
    assert wait_gone(info.shim_pid)
    assert runtime.inspect("orphan").state == "running"  # init lives on
    os.kill(info.pid, signal.SIGKILL)
    event = runtimes.wait_event("orphan")
    assert event is not None and event.state == "dead" and event.exit_code is None
    runtime.remove("orphan")


def test_agent_killed_mid_start_leaves_created_then_removable(runtimes, alpine):
    script = textwrap.dedent("""\
        import os, signal, sys
        from cantainer_agent.runtime import Runtime, ContainerSpec
        state, run, parent, rootfs, sha = sys.argv[1:6]
        rt = Runtime(state, run, parent)
        def hook(pid):
            print(pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        rt.start(ContainerSpec(id="half", name="half", image=sha, command=["/bin/true"]), rootfs, before_exec=hook)
    """)
    agent = subprocess.run([sys.executable, "-c", script, runtimes.state_dir, runtimes.run_dir,
                            runtimes.cgroup_parent, alpine, ALPINE_SHA256], capture_output=True, text=True, timeout=30)
    assert agent.returncode == -signal.SIGKILL
    assert wait_gone(int(agent.stdout.strip()))  # its shim noticed the agent was gone and killed it
    runtime = runtimes.make()
    assert runtime.inspect("half").state == "created"
    runtime.remove("half")
    assert runtime.list() == []


def test_concurrent_starts_from_threads(runtime, alpine):
    import threading

    errors = []

    def go(n):
        try:
            runtime.start(spec(f"t{n}", ["/bin/sh", "-c", f"echo {n}"]), alpine)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for n in range(6):
        info = runtime.wait(f"t{n}", timeout=20)
        assert info.exit_code == 0 and runtime.read_logs(f"t{n}").decode() == f"{n}\n"


def test_cgroup_v2_code_path_on_unified_hierarchy(runtimes, alpine, v2_layout):
    """Run a container with the v2 code path (clone3 into the cgroup, no warm init) on a cgroup2
    hierarchy of our own (on hybrid machines it has no controllers: no limits)."""
    needs_root()
    layout = v2_layout
    runtime = runtimes.make(cgroup_layout=layout)
    info, log = run_to_exit(runtime, alpine, "v2", ["/bin/sh", "-c", "cat /proc/self/cgroup; hostname"])
    assert info.exit_code == 0, log
    assert log.splitlines()[-1] == "v2"
    assert "0::/\n" in log  # root of its own cgroup namespace
    cgroup_dir = os.path.join(layout.v2_mount, runtimes.cgroup_parent, "v2")
    assert os.path.isdir(cgroup_dir)
    with pytest.raises(StartError, match="memory"):
        runtime.start(spec("v2lim", ["/bin/true"], limits=Limits(memory=64 << 20)), alpine)
    # no device cgroup on v2: a node made with CAP_MKNOD still opens nowhere (every writable fs is nodev)
    info, log = run_to_exit(runtime, alpine, "v2dev", ["/bin/sh", "-c", "mknod /dev/sda b 8 0 && echo made; "
                            "head -c 1 /dev/sda > /dev/null && echo opened || echo refused"], cap_add=["MKNOD"])
    assert log.split("\n")[0] == "made" and "refused" in log and "opened" not in log, log
    runtime.remove("v2dev")
    runtime.remove("v2")
    assert not os.path.exists(cgroup_dir)
    os.rmdir(os.path.join(layout.v2_mount, runtimes.cgroup_parent))


def test_zygote_spawned_from_a_low_priority_thread_keeps_the_agents_priority():
    """The reconcile loop runs at nice +10 (reconcile.py); a zygote it (re)spawns must not hand
    that to every container started afterwards."""
    import threading

    from cantainer_agent.runtime.zygote import Zygote

    ours = os.getpriority(os.PRIO_PROCESS, 0)
    zygote = Zygote()
    seen = []

    def spawn_from_a_niced_thread() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, ours + 10)
        zygote.ensure()
        seen.append(os.getpriority(os.PRIO_PROCESS, zygote.pid))

    try:
        worker = threading.Thread(target=spawn_from_a_niced_thread)
        worker.start()
        worker.join(10)
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, zygote.pid) != ours and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.getpriority(os.PRIO_PROCESS, zygote.pid) == ours
        assert seen and seen[0] in (ours, ours + 10)  # born niced, then restored by its boot code
    finally:
        zygote.close()


# -- restart policies and health checks (the agent's controllers use these) ----------------------
def test_restart_keeps_the_writable_layer_and_appends_to_the_log(runtime, runtimes, alpine):
    script = "echo run >> /runs; echo runs=$(wc -l < /runs); exit 3"
    first, log = run_to_exit(runtime, alpine, "again", ["/bin/sh", "-c", script])
    assert first.exit_code == 3 and log == "runs=1\n"
    second = runtime.restart("again")
    assert second.state == "running" and second.pid != first.pid
    done = runtime.wait("again", timeout=30)
    assert done.exit_code == 3 and done.started_at > first.finished_at
    assert runtime.read_logs("again", ("stdout",)) == b"runs=1\nruns=2\n"  # same file system, same log
    assert runtime.inspect("again").created_at == first.created_at
    runtime.start(spec("busy", ["/bin/sleep", "60"]), alpine)
    with pytest.raises(ContainerRunning):
        runtime.restart("busy")
    runtime.stop("busy", timeout=0)


def probe(runtimes, cid: str, timeout: float, *argv: str) -> subprocess.CompletedProcess:
    from cantainer_agent.controllers.health import PACKAGE_ROOT

    return subprocess.run([sys.executable, "-m", "cantainer_agent", "probe", "--state-dir", runtimes.state_dir,
                           "--run-dir", runtimes.run_dir, "--timeout", str(timeout), cid, "--", *argv],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": PACKAGE_ROOT})


def test_a_health_probe_runs_inside_and_is_killed_at_its_timeout(runtime, runtimes, alpine):
    runtime.start(spec("checked", ["/bin/sleep", "60"], name="checked-box"), alpine)
    done = probe(runtimes, "checked", 5, "/bin/sh", "-c", "hostname; exit 3")
    assert done.returncode == 3 and done.stdout == "checked-box\n"
    slow = probe(runtimes, "checked", 0.3, "/bin/sleep", "30")
    assert slow.returncode == 124 and "exceeded its timeout of 0.3 s" in slow.stderr
    left = exec_in(runtimes, "checked", "/bin/sh", "-c", "ps -o comm= | grep -c sleep").stdout.strip()
    assert left == "1"  # the container's own sleep only: the probe's was killed
    runtime.stop("checked", timeout=0)
    gone = probe(runtimes, "checked", 1, "/bin/true")
    assert gone.returncode == 125 and "not running" in gone.stderr


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            kids.update(int(k) for k in handle.read().split())
    return kids


def test_the_next_warm_slot_is_prepared_once_the_start_is_over_not_during_it(runtime, alpine):
    """The zygote hands a request to its warm slot and prepares the next one only when that slot's
    shim reports the start over (zygote.REFILL_MAX is 5 minutes here): the refill no longer
    competes with the start for the CPU."""
    zygote = runtime.zygote
    zygote.options = lambda: {"prefork_init": runtime.cgroups.layout.version == 1, "refill_max": 300.0}
    runtime.warm_up()
    deadline = time.monotonic() + 10
    while len(_children(zygote.pid)) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    (warm,) = _children(zygote.pid)
    during = []
    runtime.start(spec("refill", ["sleep", "30"]), alpine,
                  before_exec=lambda _pid: during.append(_children(zygote.pid)))
    assert during == [{warm}]  # the slot serving this start, and no new one yet
    deadline = time.monotonic() + 10
    while len(_children(zygote.pid)) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    kids = _children(zygote.pid)
    assert warm in kids and len(kids) == 2  # the start is over: a fresh warm slot beside it
    runtime.remove("refill", force=True)


def test_remove_frees_the_id_at_once_and_deletes_the_files_in_the_background(runtimes, alpine):
    runtime = runtimes.make()
    runtime.start(spec("gone", ["true"]), alpine)
    runtime.wait("gone", timeout=30)
    trash = os.path.join(runtime.state_dir, ".removed")
    runtime._reaper._wake.clear()
    runtime.remove("gone")
    assert not os.path.exists(runtime.container_dir("gone"))
    with pytest.raises(ContainerNotFound):
        runtime.inspect("gone")
    assert [info.id for info in runtime.list()] == []  # the trash is no container
    runtime.start(spec("gone", ["true"]), alpine)  # the id is free again at once
    runtime.wait("gone", timeout=30)
    runtime.remove("gone")
    assert runtime._reaper.idle.wait(10) and os.listdir(trash) == []

    os.makedirs(os.path.join(trash, "left-by-a-crash", "upper", "etc"))  # an agent died mid-delete
    again = runtimes.make()
    assert again._reaper.idle.wait(10) and os.listdir(trash) == []


def test_an_exit_that_lands_between_the_records_and_the_liveness_check_is_an_exit(runtime, alpine, monkeypatch):
    """inspect reads exit.json, then checks the processes. The shim writes exit.json and then exits,
    so both can happen in between (wait() wakes on the init's exit, just as the shim reaps it): the
    processes are gone but the record read was from before. That is an exit, not a dead container."""
    from cantainer_agent.runtime import container as module

    first, _ = run_to_exit(runtime, alpine, "raced", ["/bin/sh", "-c", "exit 7"])
    assert (first.state, first.exit_code) == ("exited", 7)
    real, missed = module.read_json, []

    def read_before_the_exit(path):
        if path.endswith("exit.json") and not missed:
            missed.append(path)
            return None  # as read a moment before the shim wrote it
        return real(path)
    monkeypatch.setattr(module, "read_json", read_before_the_exit)
    info = runtime.inspect("raced")
    assert missed and (info.state, info.exit_code) == ("exited", 7)
    runtime.remove("raced")
