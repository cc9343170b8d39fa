"""Container state derivation from the on-disk records (pure)."""
from __future__ import annotations

from cantainer_agent.runtime.records import CREATED, DEAD, EXITED, RUNNING, derive_state

BOOT = "boot-1"
CONFIG = {"boot_id": BOOT}
PIDS = {"boot_id": BOOT, "pid": 100, "pid_start": 5, "shim_pid": 99, "shim_start": 4}


def alive_set(*alive):
    return lambda pid, start: (pid, start) in alive


def test_exited_wins():
    assert derive_state(CONFIG, PIDS, {"exit_code": 0}, BOOT, alive_set((100, 5)))[0] == EXITED


def test_running_needs_matching_start_time():
    assert derive_state(CONFIG, PIDS, None, BOOT, alive_set((100, 5), (99, 4))) == (RUNNING, 100, 99)
    # pid 100 recycled by another process (different start time), shim gone: dead
    assert derive_state(CONFIG, PIDS, None, BOOT, alive_set((100, 6))) == (DEAD, None, None)


def test_init_gone_but_shim_recording():
    assert derive_state(CONFIG, PIDS, None, BOOT, alive_set((99, 4))) == (RUNNING, None, 99)


def test_shim_killed_init_alive():
    assert derive_state(CONFIG, PIDS, None, BOOT, alive_set((100, 5))) == (RUNNING, 100, None)


def test_created_only_in_this_boot():
    assert derive_state(CONFIG, None, None, BOOT, alive_set())[0] == CREATED
    assert derive_state(CONFIG, None, None, "boot-2", alive_set())[0] == DEAD


def test_pids_from_previous_boot_are_ignored():
    assert derive_state(CONFIG, PIDS, None, "boot-2", alive_set((100, 5), (99, 4)))[0] == DEAD
