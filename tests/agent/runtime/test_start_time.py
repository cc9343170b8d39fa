"""before_exec may hand the runtime the start time it told raft (the one commit of a `run`): the
container's records then carry exactly that time; a hook that returns anything else changes nothing."""
from __future__ import annotations

import json
import os

from tests.agent.runtime.test_container import spec


def test_the_start_time_the_hook_returns_is_the_one_recorded(runtime, alpine):
    info = runtime.start(spec("promised", ["sleep", "30"]), alpine, before_exec=lambda pid: {"started_at": 1234.5})
    try:
        assert info.started_at == 1234.5
        assert runtime.inspect("promised").started_at == 1234.5
        pids = json.loads(open(os.path.join(runtime.run_dir, "promised", "pids.json")).read())
        assert pids["started_at"] == 1234.5
    finally:
        runtime.stop("promised", timeout=0.2)


def test_a_hook_that_returns_something_else_starts_it_as_before(runtime, alpine):
    info = runtime.start(spec("plain", ["sleep", "30"]), alpine, before_exec=lambda pid: "cv-veth-name")
    try:
        assert info.state == "running" and info.started_at and info.started_at != 1234.5
    finally:
        runtime.stop("plain", timeout=0.2)
