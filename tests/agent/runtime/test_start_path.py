"""The start, wait and remove path without avoidable work (docs/design/runtime.md, "Start and removal
cost"): each mechanism that skips work is checked to give the same result as the work it skips."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cantainer_agent import capabilities
from cantainer_agent.runtime import init as init_module
from cantainer_agent.runtime import linux, seccomp, volumes

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
