"""`down` leaves the machine exactly as before — also when the lab tool died half-way."""
from __future__ import annotations

import subprocess
import sys

import pytest
from pyroute2 import IPRoute, netns

from lab.lab import Lab
from lab.procs import start_time

pytestmark = pytest.mark.lab


def machine_snapshot() -> tuple[set, set, set]:
    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    with open("/proc/mounts") as mounts:
        mount_lines = set(mounts)
    return set(netns.listnetns()), links, mount_lines


@pytest.fixture
def scratch_lab():
    from tests.conftest import require_root
    require_root()
    lab = Lab("cdown")
    lab.down()
    before = machine_snapshot()
    yield lab, before
    lab.down()


def test_down_leaves_no_namespace_link_mount_or_process(scratch_lab):
    lab, before = scratch_lab
    lab.up(2)
    pids = [h.pid1.pid for h in lab.load().hosts.values()]
    subprocess.run([sys.executable, "-m", "lab", "exec", "--name", "cdown", "h1", "--", "sh", "-c",
                    "setsid sleep 1000 </dev/null >/dev/null 2>&1 &"], check=True)
    assert subprocess.run([sys.executable, "-m", "lab", "down", "--name", "cdown"]).returncode == 0
    assert machine_snapshot() == before
    assert all(start_time(pid) is None for pid in pids)  # gone or a zombie awaiting its reaper
    assert not lab.dir.exists()


def test_down_cleans_up_after_the_lab_tool_lost_its_state(scratch_lab):
    lab, before = scratch_lab
    lab.up(2)
    pids = [h.pid1.pid for h in lab.load().hosts.values()]
    lab.state_file.unlink()  # as if `up` had crashed before recording anything
    lab.down()
    assert machine_snapshot() == before
    assert all(start_time(pid) is None for pid in pids)  # gone or a zombie awaiting its reaper


def test_down_cleans_up_after_up_was_killed_half_way(scratch_lab):
    lab, before = scratch_lab
    process = subprocess.Popen([sys.executable, "-m", "lab", "up", "--name", "cdown", "--hosts", "6"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it once it has started building hosts (the state file exists before the first netns).
    import time

    deadline = time.monotonic() + 30
    while not any(n.startswith("cantainer-cdown-") for n in netns.listnetns()) and time.monotonic() < deadline:
        assert process.poll() is None, "lab up ended before it built any host: nothing half-done to clean up"
        time.sleep(0.001)
    # Half way: some hosts exist, `up` has not finished (else this test would prove nothing).
    assert process.poll() is None and any(n.startswith("cantainer-cdown-") for n in netns.listnetns())
    process.kill()
    process.wait()
    lab.down()
    assert machine_snapshot() == before
