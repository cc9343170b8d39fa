"""`down` leaves the machine exactly as before — also when the lab tool died half-way."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from lab.lab import Lab
from lab.procs import start_time
from tests.conftest import LAB_NAME

pytestmark = pytest.mark.lab
# derived from the suite's lab name, so two suites side by side never share it
TEARDOWN_LAB = os.environ.get("CANTAINER_TEST_TEARDOWN_LAB", f"{LAB_NAME[:6]}t")


# What another lab owns, by name (lab/underlay.py, lab/lab.py): its hosts' namespaces, its bridge and
# veths, anything mounted under its directory. Another suite may run beside this one (issue 20): its
# labs come and go during a test, so they are left out of the comparison — everything else is not.
_OWNED = re.compile(r"cantainer-([a-z][a-z0-9]{0,6})-h\d+|^cl-([a-z][a-z0-9]{0,6})(?:-h\d+)?$|"
                    r"/cantainer-lab/([a-z][a-z0-9]{0,6})(?:/|\s)")


def _another_labs(text: str) -> bool:
    return any(lab not in (None, TEARDOWN_LAB) for match in _OWNED.finditer(text) for lab in match.groups())


def machine_snapshot() -> tuple[set, set, set, set]:
    """The machine's namespaces, links, mounts and loop devices' files, but for those of other labs."""
    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    with open("/proc/mounts") as mounts:
        mount_lines = set(mounts)
    loops = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):  # a lab's disk (lab/disk.py)
        try:
            loops.add(backing.read_text().strip() + "\n")
        except OSError:  # cleared meanwhile
            pass
    return tuple({item for item in items if not _another_labs(item)}
                 for items in (set(netns.listnetns()), links, mount_lines, loops))


@pytest.fixture
def scratch_lab():
    from tests.conftest import require_root
    require_root()
    lab = Lab(TEARDOWN_LAB)
    lab.down()
    before = machine_snapshot()
    yield lab, before
    lab.down()


def test_down_leaves_no_namespace_link_mount_or_process(scratch_lab):
    lab, before = scratch_lab
    lab.up(2)
    pids = [h.pid1.pid for h in lab.load().hosts.values()]
    subprocess.run([sys.executable, "-m", "lab", "exec", "--name", TEARDOWN_LAB, "h1", "--", "sh", "-c",
                    "setsid sleep 1000 </dev/null >/dev/null 2>&1 &"], check=True)
    assert subprocess.run([sys.executable, "-m", "lab", "down", "--name", TEARDOWN_LAB]).returncode == 0
    assert machine_snapshot() == before
    assert all(start_time(pid) is None for pid in pids)  # gone or a zombie awaiting its reaper
    assert not lab.dir.exists()


def test_a_host_of_another_lab_never_holds_this_labs_disk(scratch_lab):
    """Hosts copy the machine's mounts when they start; the disk's shared mount takes its unmount
    into their copies, so its loop device goes with `down` while the other lab runs on."""
    lab, before = scratch_lab
    lab.up(1)
    other = Lab(f"{TEARDOWN_LAB[:6]}o")
    other.down()
    try:
        other.up(1)  # its host's mount namespace starts with a copy of `lab`'s disk mount
        pid = other.load().hosts["h1"].pid1.pid
        with open(f"/proc/{pid}/mountinfo") as mountinfo:
            assert f"{lab.dir}/hosts" in mountinfo.read()
        lab.down()
        with open(f"/proc/{pid}/mountinfo") as mountinfo:
            assert f"{lab.dir}/hosts" not in mountinfo.read()
        assert not any(str(lab.dir) in item for item in machine_snapshot()[3])
    finally:
        other.down()
    assert machine_snapshot() == before


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
    process = subprocess.Popen([sys.executable, "-m", "lab", "up", "--name", TEARDOWN_LAB, "--hosts", "6"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it once it has started building hosts (the state file exists before the first netns).
    import time

    prefix = f"cantainer-{TEARDOWN_LAB}-"
    deadline = time.monotonic() + 30
    while not any(n.startswith(prefix) for n in netns.listnetns()) and time.monotonic() < deadline:
        assert process.poll() is None, "lab up ended before it built any host: nothing half-done to clean up"
        time.sleep(0.001)
    # Half way: some hosts exist, `up` has not finished (else this test would prove nothing).
    assert process.poll() is None and any(n.startswith(prefix) for n in netns.listnetns())
    process.kill()
    process.wait()
    lab.down()
    assert machine_snapshot() == before


def cgroup_dirs(lab: Lab) -> list[str]:
    from lab.hostinit import cgroup_mount_points

    return [f"{point}/cantainer-lab/{entry}" for point in cgroup_mount_points()
            for entry in (os.listdir(f"{point}/cantainer-lab") if os.path.isdir(f"{point}/cantainer-lab") else [])
            if entry.startswith(f"{lab.name}-")]


def test_down_of_full_os_hosts_also_after_a_lost_state_leaves_no_mount_process_or_cgroup(scratch_lab):
    lab, before = scratch_lab
    lab.up(1, os_name="debian")
    host = lab.load().hosts["h1"]
    assert machine_snapshot() != before and cgroup_dirs(lab)  # an overlay mount, links, a netns, cgroups
    lab.state_file.unlink()
    lab.down()
    assert machine_snapshot() == before
    assert start_time(host.pid1.pid) is None and start_time(host.init.pid) is None
    assert cgroup_dirs(lab) == [] and not lab.dir.exists()
    assert not list(Path("/run/systemd/nspawn").glob(f"*/{lab.name}-*"))  # nspawn's per-machine state


def test_down_with_keep_logs_leaves_each_console_log_in_place(scratch_lab):
    lab, before = scratch_lab
    lab.up(1)
    result = subprocess.run([sys.executable, "-m", "lab", "down", "--name", lab.name, "--keep-logs"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "console logs kept" in result.stdout, result.stderr
    log = lab.host_dir("h1") / "console.log"
    assert f"lab {lab.name}: h1 boots at" in log.read_text()
    left = sorted(str(p.relative_to(lab.dir)) for p in lab.dir.rglob("*"))
    assert left == ["hosts", "hosts/h1", "hosts/h1/console.log"]
    assert machine_snapshot() == before and not lab.exists()
    lab.down()
    assert not lab.dir.exists()


def test_up_sizes_the_neighbour_table_and_the_last_down_puts_it_back(scratch_lab, tmp_path, monkeypatch):
    """On a stand-in for /proc/sys/net/ipv4/neigh/default whose limits are too small for 2 hosts."""
    from lab import neighbours
    from lab.lab import list_labs

    lab, _before = scratch_lab
    others = sum(len(other.load().hosts) for other in list_labs() if other.name != lab.name)
    stand_in = tmp_path / "neigh"
    stand_in.mkdir()
    low = neighbours.needed(others)  # just enough for the labs already running (the suite's own)
    (stand_in / "gc_thresh2").write_text(f"{low['gc_thresh2']}\n")
    (stand_in / "gc_thresh3").write_text(f"{low['gc_thresh3']}\n")
    monkeypatch.setattr(neighbours, "SYSCTL", stand_in)
    monkeypatch.setattr("lab.lab._NEIGHBOUR_LIMITS", "test-neighbour-limits.json")  # not the machine's record
    lab.up(2)
    raised = neighbours.needed(others + 2)
    assert (stand_in / "gc_thresh3").read_text() == str(raised["gc_thresh3"])
    assert (stand_in / "gc_thresh2").read_text() == str(raised["gc_thresh2"])
    lab.down()
    assert (stand_in / "gc_thresh3").read_text() == str(low["gc_thresh3"])
    assert (stand_in / "gc_thresh2").read_text() == str(low["gc_thresh2"])
