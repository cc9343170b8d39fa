"""When waiting for a service is pointless: `crash_looping` from `service.ps` answers (data fixtures)."""
from __future__ import annotations

import pytest

from cantainer.services import CRASH_LOOP, CrashLoop, converged, crash_looping


def task(slot: int, state: str = "exited", restarts: int = CRASH_LOOP, exit_code: int | None = 1, version: int = 1,
         health: dict | None = None, retiring: bool = False, reason: str | None = None) -> dict:
    return {"name": f"web.{slot}", "state": state, "restart_count": restarts, "exit_code": exit_code,
            "version": version, "health": health, "retiring": retiring, "reason": reason,
            "restarts": [{"at": 1.0, "delay": 10.0, "exit_code": 2, "exited_at": 1.0}]}


def doc(*tasks: dict, version: int = 1, replicas: int = 2, update: str = "completed") -> dict:
    return {"service": {"version": version, "replicas": replicas, "update": {"state": update, "kind": "update",
                                                                             "message": None}},
            "tasks": list(tasks)}


def test_every_task_restarting_and_none_ready_is_a_crash_loop_named_by_its_first_task():
    failing = crash_looping(doc(task(2, exit_code=None), task(1)))
    assert failing == CrashLoop("web.1", f"exited with code 1, restarted {CRASH_LOOP} times")
    assert str(failing) == f"web.1 exited with code 1, restarted {CRASH_LOOP} times"
    # between two runs the task shows no exit code: the last restart's is given
    assert crash_looping(doc(task(1, state="created", exit_code=None), task(2))) == (
        CrashLoop("web.1", f"exited with code 2, restarted {CRASH_LOOP} times"))


@pytest.mark.parametrize("case, answer", [
    pytest.param(doc(task(1), task(2, restarts=CRASH_LOOP - 1)), None, id="one task has not failed often enough"),
    pytest.param(doc(task(1), task(2, state="running", exit_code=None)), None, id="one task is running (ready)"),
    pytest.param(doc(task(1), task(2, state="running", health={"status": "healthy"})), None, id="one is healthy"),
    pytest.param(doc(task(1), task(2), update="updating"), None, id="an update runs: its monitor decides"),
    pytest.param(doc(task(1, version=1, retiring=True), version=2), None, id="no task of the version yet"),
    pytest.param(doc(task(1, state="running", health={"status": "unhealthy"}), task(2)),
                 CrashLoop("web.1", f"exited with code 1, restarted {CRASH_LOOP} times"),
                 id="running but unhealthy is not ready"),
])
def test_what_is_not_a_crash_loop(case, answer):
    assert crash_looping(case) == answer


def test_a_converged_service_is_never_a_crash_loop():
    """Restarts in its past (it waited for a database) do not count once its tasks are ready."""
    ready = doc(task(1, state="running", exit_code=None), task(2, state="running", exit_code=None))
    assert converged(ready) and crash_looping(ready) is None
