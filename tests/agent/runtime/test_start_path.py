"""The start, wait and remove path without avoidable work (docs/design/runtime.md, "Start and removal
cost"): each mechanism that skips work is checked to give the same result as the work it skips."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cantainer_agent import capabilities
from cantainer_agent.runtime import (
    ContainerNotFound,
    Limits,
    StartError,
    cgroups,
    linux,
    seccomp,
    supervisor,
    volumes,
)
from cantainer_agent.runtime import container as container_module
from cantainer_agent.runtime import init as init_module

from .conftest import needs_root, wait_gone
from .test_container import spec

pytestmark = [pytest.mark.timeout(120)]


def test_no_mounts_means_no_protected_path_is_examined(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a protected path was examined for a container without mounts")

    monkeypatch.setattr(volumes.os, "stat", refuse)
    monkeypatch.setattr(volumes.os.path, "realpath", refuse)
    assert volumes.open_sources([], ["/etc/cantainer", "/var/lib/cantainer"]) == []


def test_the_seccomp_filter_is_built_once_per_capability_mask():
    mask = linux.caps_mask(("CAP_CHOWN", "CAP_KILL", "CAP_SETUID"))  # not a set any container of the suite uses
    init_module._FILTERS.pop(mask, None)
    first = init_module.seccomp_program(mask, True)
    assert first == seccomp.program(os.uname().machine, capabilities.names_of(mask))
    assert init_module.seccomp_program(mask, True) is first  # the cached program, not a new build
    assert init_module.seccomp_program(mask, False) is None  # unconfined


@pytest.mark.root
def test_the_pids_record_carries_the_start_times_read_while_the_slot_was_warm(runtime, alpine):
    info = runtime.start(spec("starts", ["/bin/sleep", "30"]), alpine)
    try:
        pids = json.loads(Path(runtime.run_dir, "starts", "pids.json").read_text())
        assert pids["pid"] == info.pid and pids["shim_pid"] == info.shim_pid
        assert pids["pid_start"] == linux.proc_start_time(info.pid)
        assert pids["shim_start"] == linux.proc_start_time(info.shim_pid)
        assert runtime.inspect("starts").state == "running"
    finally:
        runtime.stop("starts", timeout=0.2)


@pytest.mark.root
def test_wait_follows_a_running_container_to_its_exit_and_answers_the_others_at_once(runtime, alpine):
    runtime.start(spec("waited", ["/bin/sh", "-c", "sleep 0.2; exit 7"]), alpine)
    info = runtime.wait("waited", timeout=30)
    assert info.state == "exited" and info.exit_code == 7
    assert runtime.wait("waited", timeout=30) == info  # exited: answered from the records
    with pytest.raises(ContainerNotFound):
        runtime.wait("never-started", timeout=1)
    runtime.start(spec("slow", ["/bin/sleep", "30"]), alpine)
    try:
        assert runtime.wait("slow", timeout=0.05).state == "running"  # the timeout returns the state
    finally:
        runtime.stop("slow", timeout=0.2)


@pytest.mark.root
def test_remove_deletes_an_empty_cgroup_without_looking_for_strays(runtime, alpine, monkeypatch):
    runtime.start(spec("tidy", ["/bin/true"]), alpine)
    assert runtime.wait("tidy", timeout=30).state == "exited"

    def no_strays(_cgroup):
        raise AssertionError("strays searched in an empty cgroup")

    monkeypatch.setattr(container_module.Runtime, "_kill_cgroup", staticmethod(no_strays))
    runtime.remove("tidy")
    assert not runtime.cgroups.cgroup("tidy").exists()


@pytest.mark.root
def test_remove_kills_a_stray_left_in_the_cgroup_and_then_deletes_it(runtime, alpine):
    runtime.start(spec("strayed", ["/bin/true"]), alpine)
    assert runtime.wait("strayed", timeout=30).state == "exited"
    cgroup = runtime.cgroups.cgroup("strayed")
    stray = subprocess.Popen(["sleep", "60"])
    try:
        cgroup.add(stray.pid)  # e.g. left by an exec whose container was killed
        runtime.remove("strayed")
        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert not cgroup.exists()
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_remove_dir_deletes_files_and_falls_back_for_anything_else(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "pids.json").write_text("{}")
    os.symlink("/etc", flat / "link")  # unlinked, never followed
    container_module._remove_dir(str(flat))
    assert not flat.exists() and Path("/etc").is_dir()
    deep = tmp_path / "deep"
    (deep / "sub").mkdir(parents=True)
    (deep / "sub" / "file").write_text("x")
    container_module._remove_dir(str(deep))
    assert not deep.exists()
    container_module._remove_dir(str(tmp_path / "absent"))  # no error


@pytest.mark.root
def test_one_read_of_the_mount_table_detaches_what_lies_below_each_root(tmp_path):
    needs_root()
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for directory in (first / "x", second, other):
        directory.mkdir(parents=True)
    for point in (first / "x", second, other):
        linux.mount("tmpfs", str(point), "tmpfs")
    try:
        container_module._unmount_below(str(first), str(second))
        mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
        assert str(first / "x") not in mounted and str(second) not in mounted
        assert str(other) in mounted  # not below either root
    finally:
        for point in (first / "x", second, other):
            try:
                linux.umount2(str(point), linux.MNT_DETACH)
            except OSError:
                pass


def test_a_missing_state_dir_is_made_by_the_first_start(tmp_path):
    parent = tmp_path / "state"
    container_module._mkdir_in(str(parent / "c1"), str(parent))
    assert (parent / "c1").is_dir()
    with pytest.raises(FileExistsError):
        container_module._mkdir_in(str(parent / "c1"), str(parent))


# -- cgroup v1: each warm slot makes its container's cgroup ahead, renamed at the request ----------
def _slot_dirs(runtime) -> list[str]:
    return sorted(name for directory in runtime.cgroups.parent_dirs() if os.path.isdir(directory)
                  for name in os.listdir(directory) if name.startswith(cgroups.SLOT_PREFIX))


def _v1(runtime) -> None:
    if runtime.cgroups.layout.version != 1:
        pytest.skip("cgroup v1 only (v2 has no rename: the agent makes the cgroup at the start)")


@pytest.mark.root
def test_the_warm_slots_init_waits_in_a_cgroup_that_becomes_the_containers(runtime, alpine):
    _v1(runtime)
    runtime.warm_up()
    deadline = time.monotonic() + 10
    while not _slot_dirs(runtime) and time.monotonic() < deadline:
        time.sleep(0.01)
    (slot,) = set(_slot_dirs(runtime))
    shim = int(slot[len(cgroups.SLOT_PREFIX):])
    slot_cgroup = cgroups.Cgroup(runtime.cgroups.layout, f"{runtime.cgroups.parent}/{slot}")
    while not slot_cgroup.pids() and time.monotonic() < deadline:  # made by the shim, then joined by init
        time.sleep(0.01)
    (init_pid,) = slot_cgroup.pids()  # the prepared init, a child of the warm shim:
    assert Path(f"/proc/{init_pid}/stat").read_text().split()[3] == str(shim)
    assert slot_cgroup.read("pids", "pids.max") == str(runtime.default_pids)
    assert "c 1:3 rw" in slot_cgroup.read("devices", "devices.list")
    info = runtime.start(spec("claimed", ["/bin/sleep", "30"], limits=Limits(memory=64 << 20)), alpine)
    try:
        assert info.pid == init_pid and info.shim_pid == shim  # that slot served the start
        mine = runtime.cgroups.cgroup("claimed")
        assert mine.pids() == {init_pid} and mine.read("memory", "memory.limit_in_bytes") == str(64 << 20)
        assert mine.read("pids", "pids.max") == str(runtime.default_pids)
        assert not os.path.exists(slot_cgroup.dirs[0])  # renamed, not copied
    finally:
        runtime.remove("claimed", force=True)


@pytest.mark.root
def test_a_name_taken_in_one_hierarchy_fails_the_start_and_leaves_no_slot_cgroup(runtime, alpine):
    _v1(runtime)
    runtime.warm_up()
    taken = os.path.join(runtime.cgroups.layout.mount_of("pids"), runtime.cgroups.parent, "taken")
    deadline = time.monotonic() + 10
    while not _slot_dirs(runtime) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.mkdir(taken)  # e.g. left behind by hand
    try:
        with pytest.raises(StartError, match="already exists"):
            runtime.start(spec("taken", ["/bin/true"]), alpine)
        with pytest.raises(ContainerNotFound):
            runtime.inspect("taken")
    finally:
        if os.path.isdir(taken):  # (the failed start's clean-up removes a cgroup of its name, as before)
            os.rmdir(taken)
    # the fixture fails the test if the failed slot's cgroup (or any process) was left behind


@pytest.mark.root
def test_rename_is_all_or_nothing(runtimes):
    manager = cgroups.CgroupManager(runtimes.cgroup_parent)
    if manager.layout.version != 1:
        pytest.skip("cgroup v1 only")
    source = manager.cgroup("source")
    source.create(None)
    blocker = os.path.join(manager.layout.mount_of("memory"), manager.parent, "target")
    os.mkdir(blocker)
    try:
        with pytest.raises(cgroups.CgroupError, match="already exists"):
            source.rename(f"{manager.parent}/target")
        assert all(os.path.isdir(directory) for directory in source.dirs)  # every rename undone
        renamed = source.rename(f"{manager.parent}/free")
        assert all(os.path.isdir(directory) for directory in renamed.dirs) and not source.exists()
        renamed.remove()
    finally:
        os.rmdir(blocker)
        source.remove()


@pytest.mark.root
def test_slot_cgroups_of_dead_shims_are_removed_and_live_ones_kept(runtimes):
    manager = cgroups.CgroupManager(runtimes.cgroup_parent)
    if manager.layout.version != 1:
        pytest.skip("cgroup v1 only")
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = cgroups.prepare_slot(manager.layout, manager.parent, dead.pid, 64)
    live = cgroups.prepare_slot(manager.layout, manager.parent, os.getpid(), 64)
    try:
        cgroups.remove_stale_slots(manager.layout, manager.parent, alive=lambda pid: pid == os.getpid())
        assert not gone.exists() and live.exists()
    finally:
        live.remove()
        gone.remove()


@pytest.mark.root
def test_a_slot_made_without_a_cgroup_gets_the_containers_at_the_request(runtime, alpine):
    _v1(runtime)
    runtime.zygote.options = lambda: {**runtime._zygote_options(), "cgroup_slot": None}
    info = runtime.start(spec("late", ["/bin/sleep", "30"], limits=Limits(pids=77)), alpine)
    try:
        mine = runtime.cgroups.cgroup("late")
        assert mine.pids() == {info.pid} and mine.read("pids", "pids.max") == "77"
        assert _slot_dirs(runtime) == []
    finally:
        runtime.remove("late", force=True)


@pytest.mark.root
def test_the_rehearsal_request_has_the_keys_of_a_real_one(runtime, alpine, monkeypatch):
    """A warm slot runs the JSON codec on supervisor.REHEARSAL_REQUEST (so that the start does not
    pay the copy-on-write faults): it stays shaped like what the agent really sends."""
    seen = {}

    def capture(payload):
        seen.update(payload)
        raise OSError(errno.EIO, "captured")

    monkeypatch.setattr(runtime.zygote, "request", capture)
    with pytest.raises(StartError):
        runtime.start(spec("shape", ["/bin/true"]), alpine)
    assert set(seen) == set(supervisor.REHEARSAL_REQUEST)
    assert set(seen["cgroup_slot"] or {}) <= set(supervisor.REHEARSAL_REQUEST["cgroup_slot"])
    with pytest.raises(ContainerNotFound):
        runtime.inspect("shape")  # the failed start left nothing


# -- the agent writes the request straight to the warm shim the zygote offered -------------------
@pytest.mark.root
def test_a_start_goes_straight_to_the_offered_warm_shim_without_the_zygote(runtime, alpine):
    runtime.warm_up()  # returns once the first warm slot is offered
    zygote = runtime.zygote.pid
    os.kill(zygote, signal.SIGSTOP)  # a hop through the zygote would now hang the start
    try:
        info = runtime.start(spec("direct", ["/bin/sh", "-c", "exit 3"]), alpine)
    finally:
        os.kill(zygote, signal.SIGCONT)
    assert info.state == "running" and runtime.wait("direct", timeout=30).exit_code == 3
    runtime.remove("direct")


@pytest.mark.root
def test_a_start_without_an_offer_at_hand_gets_a_fresh_slot_from_the_zygote(runtime, alpine):
    runtime.zygote.options = lambda: {**runtime._zygote_options(), "refill_max": 300.0}
    runtime.warm_up()
    inner = []

    def second_start(_pid):  # the offered slot serves "outer"; no new one until that start is over
        inner.append(runtime.start(spec("inner", ["/bin/sleep", "30"]), alpine))

    outer = runtime.start(spec("outer", ["/bin/sleep", "30"]), alpine, before_exec=second_start)
    try:
        assert inner[0].state == "running" and outer.state == "running"
        assert inner[0].shim_pid != outer.shim_pid
    finally:
        runtime.remove("outer", force=True)
        runtime.remove("inner", force=True)


@pytest.mark.root
def test_an_offer_whose_shim_died_falls_back_to_the_zygote_and_its_cgroup_goes(runtime, alpine):
    runtime.warm_up()
    (warm,) = [pid for pid in _children(runtime.zygote.pid)]
    os.kill(warm, signal.SIGKILL)  # the agent still holds the way to it
    assert wait_gone(warm)  # (a shim that dies after the request is sent fails that start, as ever)
    info = runtime.start(spec("fallback", ["/bin/true"]), alpine)
    assert info.shim_pid != warm
    assert runtime.wait("fallback", timeout=30).exit_code == 0
    runtime.remove("fallback")
    # the fixture fails the test if the dead slot's cgroup (v1) is still there after close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found
