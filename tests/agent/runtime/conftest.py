"""Fixtures for the runtime tests: an Alpine image store, runtimes rooted in temp dirs, leak checks.

Everything a test creates lives under a temp directory and a cgroup parent unique to the test; the
finalizers remove containers, cgroups and directories and then *check* that no mount, cgroup or
process of ours is left — also when the test failed.
"""
from __future__ import annotations

import functools
import itertools
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from cantainer.images import ALPINE
from lab.rootfs import base_image

# The image id containers' specs record (a label: the rootfs itself comes from base()).
ALPINE_SHA256 = ALPINE.sha256


@functools.lru_cache(maxsize=None)
def base():
    """The base image (lab/rootfs.py: the pinned Alpine from wherever it is, else busybox), once."""
    return base_image()


def os_release(text: str) -> dict:
    """ID and VERSION_ID from /etc/os-release text."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: fields.get(key, "").strip('"') for key in ("ID", "VERSION_ID")}

_counter = itertools.count()


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("container runtime tests need root")


def mounts_below(root: str) -> list[str]:
    prefix = root.rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        points = [line.split()[4] for line in handle]
    return [p for p in points if p == root or p.startswith(prefix)]


def processes_in_cgroups(dirs: list[str]) -> set[int]:
    pids: set[int] = set()
    for directory in dirs:
        for root, _subdirs, files in os.walk(directory):
            if "cgroup.procs" in files:
                try:
                    pids.update(int(x) for x in Path(root, "cgroup.procs").read_text().split())
                except OSError:
                    pass
    return pids


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return True
        except OSError:
            return True
        time.sleep(0.01)
    return False


def children_of(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


def diff_id_of(path: Path) -> str:
    """The digest of a (compressed) tarball's uncompressed content: its layer diff_id."""
    import gzip
    import hashlib

    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


@pytest.fixture(scope="session")
def layer_store(tmp_path_factory):
    """A layer store for the session (a real directory on disk; root for owners and whiteouts)."""
    needs_root()
    from cantainer_agent.runtime import LayerStore

    return LayerStore(str(tmp_path_factory.mktemp("images")))


@pytest.fixture(scope="session")
def alpine(layer_store) -> str:
    """Root filesystem of the base image (base()): its one layer, imported once into the session store."""
    image = base()
    return layer_store.import_layer(str(image.path), f"sha256:{image.sha256}", diff_id_of(image.path))


class RuntimeFactory:
    """Makes Runtimes that share one temp state/run dir and cgroup parent; cleans up after."""

    def __init__(self, base: Path):
        self.base = base
        self.state_dir = str(base / "state")
        self.run_dir = str(base / "run")
        self.cgroup_parent = f"cantainer-test-{os.getpid()}-{next(_counter)}"
        self.runtimes = []
        self.events = []

    def make(self, **kwargs):
        from cantainer_agent.runtime import Runtime

        kwargs.setdefault("on_exit", self.events.append)
        runtime = Runtime(self.state_dir, self.run_dir, self.cgroup_parent, **kwargs)
        self.runtimes.append(runtime)
        return runtime

    def wait_event(self, container_id: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for info in self.events:
                if info.id == container_id:
                    return info
            time.sleep(0.01)
        return None

    def cgroup_dirs(self) -> list[str]:
        from cantainer_agent.runtime import CgroupManager

        return CgroupManager(self.cgroup_parent).parent_dirs()

    def cleanup(self) -> list[str]:
        """Remove everything; return a list of leaks found (empty when clean)."""
        problems = []
        helper = self.make(on_exit=None)
        for info in helper.list():
            try:
                helper.remove(info.id, force=True)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                problems.append(f"remove {info.id}: {exc}")
        zygotes = [rt.zygote.pid for rt in self.runtimes if rt.zygote.pid]
        slots = [child for pid in zygotes for child in children_of(pid)]
        for runtime in self.runtimes:
            runtime.close()
        for pid in zygotes + slots:
            if not wait_gone(pid):
                problems.append(f"process {pid} (zygote or warm shim) still alive")
                kill_pids([pid])
        stray = processes_in_cgroups(self.cgroup_dirs())
        if stray:
            problems.append(f"processes left in test cgroups: {sorted(stray)}")
            kill_pids(stray)
            time.sleep(0.2)
        for directory in self.cgroup_dirs():
            for root, subdirs, _files in os.walk(directory, topdown=False):
                for sub in subdirs:
                    problems.append(f"cgroup left: {root}/{sub}")
                    try:
                        os.rmdir(os.path.join(root, sub))
                    except OSError:
                        pass
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cannot remove cgroup {directory}: {exc}")
        leaked = mounts_below(str(self.base))
        if leaked:
            problems.append(f"mounts left: {leaked}")
            from cantainer_agent.runtime.linux import MNT_DETACH, umount2

            for point in sorted(leaked, key=len, reverse=True):
                try:
                    umount2(point, MNT_DETACH)
                except OSError:
                    pass
        for name in ("state", "run"):
            path = self.base / name
            if path.exists() and any(path.iterdir()):
                problems.append(f"entries left in {path}: {sorted(p.name for p in path.iterdir())}")
        shutil.rmtree(self.base, ignore_errors=True)
        return problems


@pytest.fixture
def runtimes(tmp_path):
    needs_root()
    factory = RuntimeFactory(tmp_path / "rt")
    (tmp_path / "rt").mkdir()
    try:
        yield factory
    finally:
        problems = factory.cleanup()
    assert not problems, "\n".join(problems)


@pytest.fixture
def runtime(runtimes):
    return runtimes.make()


@pytest.fixture
def v2_layout(tmp_path):
    """A cgroup2 hierarchy of our own: cgroup2 mounted on a temp directory (the kernel's one unified
    hierarchy, seen through a mount of ours), so the v2 code path runs on hybrid machines like this one
    (no controllers: every one is bound to v1) and on pure-v2 machines alike. Unmounted whatever happens."""
    needs_root()
    from cantainer_agent.runtime.cgroups import CgroupLayout
    from cantainer_agent.runtime.linux import MNT_DETACH, mount, umount2

    point = tmp_path / "cgroup2"
    point.mkdir()
    mount("cgroup2", str(point), "cgroup2")
    try:
        yield CgroupLayout(2, v2_mount=str(point))
    finally:
        umount2(str(point), MNT_DETACH)
