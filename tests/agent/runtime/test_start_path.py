"""The start, wait and remove path without avoidable work (docs/design/runtime.md, "Start and removal
cost"): each mechanism that skips work is checked to give the same result as the work it skips."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from cantainer_agent import capabilities
from cantainer_agent.runtime import ContainerNotFound, linux, seccomp, volumes
from cantainer_agent.runtime import container as container_module
from cantainer_agent.runtime import init as init_module

from .conftest import needs_root
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
