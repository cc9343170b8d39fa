"""cgroups: layout detection and limit computation (pure), and real create/limit/join/remove.

The real tests use this machine's cgroup v1 hierarchies and — for the v2 code path — a cgroup2 mount
of their own (on a hybrid machine it has no controllers, so creation, clone3(CLONE_INTO_CGROUP),
removal and the error naming a missing controller run; on a pure-v2 machine the limits too).
"""
from __future__ import annotations

import os
import time

import pytest

from cantainer_agent.runtime import CgroupError, CgroupLayout, CgroupManager, Limits
from cantainer_agent.runtime.cgroups import Cgroup, enable_controllers, limit_writes, parse_mountinfo

from .conftest import needs_root

pytestmark = pytest.mark.root

V1_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

V2_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""

# a lab host: the host's subtree bound over the mount point, on top of the machine's mount
LAB_MOUNTINFO = """\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
90 35 0:32 /cantainer-lab/x-h1 /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
91 39 0:36 /cantainer-lab/x-h1 /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
92 32 0:29 /cantainer-lab/x-h1 /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
93 33 0:29 / /mnt/other\\040place rw,relatime - cgroup cgroup rw,cpuset
"""


def test_parse_v1_hybrid():
    layout = parse_mountinfo(V1_MOUNTINFO)
    assert layout.version == 1
    mounts = dict(layout.v1_mounts)
    assert mounts == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                      "cpuset": "/sys/fs/cgroup/cpuset", "memory": "/sys/fs/cgroup/memory",
                      "pids": "/sys/fs/cgroup/pids"}
    cgroup = Cgroup(layout, "cantainer/c1")
    # co-mounted cpu,cpuacct share one directory
    assert cgroup.dirs == ["/sys/fs/cgroup/cpu,cpuacct/cantainer/c1", "/sys/fs/cgroup/cpuset/cantainer/c1",
                           "/sys/fs/cgroup/memory/cantainer/c1", "/sys/fs/cgroup/pids/cantainer/c1"]
    assert cgroup.join_files[0].endswith("/cantainer/c1/tasks")


def test_parse_v2():
    layout = parse_mountinfo(V2_MOUNTINFO)
    assert layout == CgroupLayout(2, v2_mount="/sys/fs/cgroup")
    cgroup = Cgroup(layout, "cantainer/c1")
    assert cgroup.dirs == ["/sys/fs/cgroup/cantainer/c1"]
    assert cgroup.join_files == ["/sys/fs/cgroup/cantainer/c1/cgroup.procs"]


def test_parse_lab_and_escapes():
    layout = parse_mountinfo(LAB_MOUNTINFO)
    mounts = dict(layout.v1_mounts)
    assert mounts["memory"] == "/sys/fs/cgroup/memory"
    assert mounts["cpuset"] == "/mnt/other place"


def test_parse_nothing():
    with pytest.raises(CgroupError):
        parse_mountinfo("24 30 0:22 / /sys rw - sysfs sysfs rw\n")


def test_limit_writes_v1():
    writes = limit_writes(1, Limits(memory=64 << 20, cpus=1.5, pids=100))
    assert [(w.controller, w.filename, w.value, w.optional) for w in writes] == [
        ("memory", "memory.limit_in_bytes", str(64 << 20), False),
        ("memory", "memory.memsw.limit_in_bytes", str(64 << 20), True),
        ("cpu", "cpu.cfs_period_us", "100000", False),
        ("cpu", "cpu.cfs_quota_us", "150000", False),
        ("pids", "pids.max", "100", False),
    ]


def test_limit_writes_v2():
    writes = limit_writes(2, Limits(memory=64 << 20, cpus=0.25, pids=7))
    assert [(w.filename, w.value) for w in writes] == [
        ("memory.max", str(64 << 20)), ("memory.swap.max", "0"), ("cpu.max", "25000 100000"), ("pids.max", "7"),
    ]
    assert limit_writes(2, Limits()) == []
    assert [w.value for w in limit_writes(2, Limits(cpus=0.01))] == ["1000 100000"]


def test_bad_parent():
    for parent in ("", "../x", "a//b/..", "a b"):
        with pytest.raises(CgroupError):
            CgroupManager(parent)


# -- real cgroups on this machine ----------------------------------------------------------------
@pytest.fixture
def manager():
    needs_root()
    mgr = CgroupManager(f"cantainer-cgtest-{os.getpid()}")
    yield mgr
    for directory in mgr.parent_dirs():
        for root, subdirs, _ in os.walk(directory, topdown=False):
            for sub in subdirs:
                try:
                    os.rmdir(os.path.join(root, sub))
                except OSError:
                    pass
    mgr.remove_parent()
    assert not any(os.path.exists(d) for d in mgr.parent_dirs())


def _read(path):
    with open(path) as handle:
        return handle.read().strip()


def test_real_create_limits_join_remove(manager):
    if manager.layout.version != 1:
        pytest.skip("this machine is not cgroup v1")
    cgroup = manager.cgroup("c1")
    cgroup.create(Limits(memory=32 << 20, cpus=0.5, pids=20))
    assert cgroup.exists()
    assert int(cgroup.read("memory", "memory.limit_in_bytes")) == 32 << 20
    assert cgroup.read("pids", "pids.max") == "20"
    assert cgroup.read("cpu", "cpu.cfs_quota_us") == "50000"
    if cgroup.path("cpuset"):
        assert cgroup.read("cpuset", "cpuset.cpus") == _read(
            os.path.join(os.path.dirname(cgroup.path("cpuset")), "cpuset.cpus")
        )
    with pytest.raises(CgroupError, match="already exists"):
        cgroup.create()
    assert cgroup.exists()  # the failed second create removed nothing of the first

    pid = os.fork()
    if pid == 0:
        from cantainer_agent.runtime.init import join_cgroup

        join_cgroup(cgroup.join_files)
        time.sleep(30)
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while cgroup.pids() != {pid} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cgroup.pids() == {pid}
        with pytest.raises(CgroupError):
            cgroup.remove(timeout=0.05)  # busy
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    cgroup.remove()
    assert not cgroup.exists()
    cgroup.remove()  # idempotent


def test_real_limit_on_missing_controller_is_clear(manager):
    layout = manager.layout
    if layout.version != 1:
        pytest.skip("this machine is not cgroup v1")
    without_pids = CgroupLayout(1, tuple((c, m) for c, m in layout.v1_mounts if c != "pids"))
    cgroup = Cgroup(without_pids, manager.relpath("c2"))
    with pytest.raises(CgroupError, match="pids cgroup controller is not mounted"):
        cgroup.create(Limits(pids=5))
    assert not cgroup.exists()  # rolled back


def test_real_v2_create_clone_into_remove(v2_layout):
    layout = v2_layout
    mgr = CgroupManager(f"cantainer-cgtest-{os.getpid()}", layout)
    cgroup = mgr.cgroup("c1")
    try:
        cgroup.create(Limits())
        enable_controllers(os.path.dirname(cgroup.dirs[0]))  # nothing available here: a no-op
        from cantainer_agent.runtime import linux

        fd = os.open(cgroup.dirs[0], os.O_RDONLY | os.O_DIRECTORY)
        try:
            pid = linux.fork_into_cgroup(fd)
            if pid == 0:
                time.sleep(30)
                os._exit(0)
        finally:
            os.close(fd)
        try:
            assert cgroup.pids() == {pid}  # born there, no migration
            assert _read(f"/proc/{pid}/cgroup").splitlines()[-1] == f"0::/{mgr.relpath('c1')}"
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        available = _read(os.path.join(layout.v2_mount, "cgroup.controllers")).split()
        if "memory" not in available:  # a hybrid machine: a clear error naming the missing controller
            with pytest.raises(CgroupError, match="memory.max does not exist"):
                mgr.cgroup("c2").create(Limits(memory=64 << 20))
            assert not mgr.cgroup("c2").exists()
        else:  # pure v2 (Ubuntu 22.04+): the limits for real
            limited = mgr.cgroup("c2")
            limited.create(Limits(memory=64 << 20, pids=20))
            assert limited.read("memory", "memory.max") == str(64 << 20) and limited.read("pids", "pids.max") == "20"
            limited.remove()
    finally:
        cgroup.remove()
        mgr.remove_parent()
    assert not os.path.exists(mgr.parent_dirs()[0])


def test_real_parent_caps_are_written_once_and_again_when_the_parent_went(manager, monkeypatch):
    writes = []
    real = Cgroup.write_all
    monkeypatch.setattr(Cgroup, "write_all", lambda self, w: (writes.append(list(w)), real(self, w))[1])
    manager.cap_parent()
    manager.cap_parent()  # the same caps: nothing written (a start used to write them every time)
    assert len(writes) == 1 and writes[0]
    manager.remove_parent()  # gone behind our back: created and capped again
    manager.cap_parent()
    assert len(writes) == 2 and all(os.path.isdir(d) for d in manager.parent_dirs())
