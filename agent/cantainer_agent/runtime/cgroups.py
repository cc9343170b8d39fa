"""Per-container cgroups on cgroup v1 (and hybrid machines) and cgroup v2 (Ubuntu 22.04+).

Detection (``parse_mountinfo``): v1 hierarchies carrying memory/cpu/pids win (hybrid machines too,
whose cgroup2 mount has no controllers); otherwise the cgroup2 mount. A container's cgroup is
``<mount>/<parent>/<id>`` in every hierarchy: v1 memory, cpu, cpuacct, pids, cpuset (new cpuset
levels copy cpus/mems from their parent), devices; v2 one directory, controllers enabled in
``cgroup.subtree_control`` from the root down to ``<parent>`` (never in the leaf). Limits: memory
(and swap = memory: an OOM kill, as docker users expect), cpus (CFS quota per 100 ms), pids; on v1
the device allow-list of ``DEVICE_RULES`` (v2 has none without a BPF program: docs/security.md).
``parent_caps`` leaves the host headroom: the parent's memory and pids limits (``cap_parent``).
v1 *slots* (``prepare_slot``): a warm slot's cgroup, made ahead under ``<parent>/.slot-<shim pid>``
with the device list and the default pids limit, is renamed to the container's (``Cgroup.rename``,
all or nothing) when its request arrives; ``remove_stale_slots`` deletes those of dead shims.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass

from .errors import CgroupError
from .spec import Limits

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "cpuset", "devices")
V1_REQUIRED = ("memory", "cpu", "pids")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CFS_PERIOD_US = 100_000
# cgroup v1 devices: nothing but the nodes a container's /dev holds (runc's list minus mknod rights
# and /dev/console); pts slaves and the devpts ptmx included.
DEVICE_RULES = ("c 1:3 rw", "c 1:5 rw", "c 1:7 rw", "c 1:8 rw", "c 1:9 rw", "c 5:0 rw", "c 5:2 rw", "c 136:* rw")
MEMORY_HEADROOM = (256 << 20, 0.05)  # kept free of containers: at least 256 MiB, at least 5 % of RAM
PIDS_HEADROOM = (1024, 0.10)  # tasks kept for the host: at least 1024, at least 10 % of the kernel's maximum
_COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SLOT_PREFIX = ".slot-"  # v1: a warm slot's cgroup under the parent, named after its shim's pid


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class CgroupLayout:
    """Where the hierarchies are: version 1 -> {controller: mount point}; version 2 -> the mount point."""

    version: int
    v1_mounts: tuple[tuple[str, str], ...] = ()
    v2_mount: str = ""

    def mount_of(self, controller: str) -> str | None:
        return dict(self.v1_mounts).get(controller)


def parse_mountinfo(text: str) -> CgroupLayout:
    v1: dict[str, str] = {}
    v2: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4:
            continue
        fstype, mountpoint = fields[sep + 1], _unescape(fields[4])
        if fstype == "cgroup":
            for option in fields[sep + 3].split(","):
                if option in V1_CONTROLLERS:
                    current = v1.get(option)
                    # prefer the canonical location if a hierarchy is mounted twice
                    if current is None or (
                        not current.startswith("/sys/fs/cgroup/") and mountpoint.startswith("/sys/fs/cgroup/")
                    ):
                        v1[option] = mountpoint
        elif fstype == "cgroup2":
            v2.append(mountpoint)
    if any(controller in v1 for controller in V1_REQUIRED):
        return CgroupLayout(1, tuple(sorted(v1.items())))
    if v2:
        return CgroupLayout(2, v2_mount="/sys/fs/cgroup" if "/sys/fs/cgroup" in v2 else v2[0])
    raise CgroupError("no cgroup filesystem is mounted (looked for cgroup v1 and cgroup2 in /proc/self/mountinfo)")


def detect(mountinfo: str = "/proc/self/mountinfo") -> CgroupLayout:
    with open(mountinfo, encoding="utf-8") as handle:
        return parse_mountinfo(handle.read())


@dataclass(frozen=True)
class LimitWrite:
    controller: str
    filename: str
    value: str
    optional: bool = False  # skipped if the file does not exist (e.g. no swap accounting)


def limit_writes(version: int, limits: Limits) -> list[LimitWrite]:
    """The cgroup files to write, in order, to apply *limits*."""
    writes: list[LimitWrite] = []
    quota = None if limits.cpus is None else max(1000, round(limits.cpus * CFS_PERIOD_US))
    if version == 1:
        if limits.memory is not None:
            writes.append(LimitWrite("memory", "memory.limit_in_bytes", str(limits.memory)))
            writes.append(LimitWrite("memory", "memory.memsw.limit_in_bytes", str(limits.memory), optional=True))
        if quota is not None:
            writes.append(LimitWrite("cpu", "cpu.cfs_period_us", str(CFS_PERIOD_US)))
            writes.append(LimitWrite("cpu", "cpu.cfs_quota_us", str(quota)))
        if limits.pids is not None:
            writes.append(LimitWrite("pids", "pids.max", str(limits.pids)))
    else:
        if limits.memory is not None:
            writes.append(LimitWrite("memory", "memory.max", str(limits.memory)))
            writes.append(LimitWrite("memory", "memory.swap.max", "0", optional=True))
        if quota is not None:
            writes.append(LimitWrite("cpu", "cpu.max", f"{quota} {CFS_PERIOD_US}"))
        if limits.pids is not None:
            writes.append(LimitWrite("pids", "pids.max", str(limits.pids)))
    return writes


def device_writes() -> list[LimitWrite]:
    """cgroup v1: deny every device, then allow ``DEVICE_RULES`` (skipped where devices is not mounted)."""
    return [LimitWrite("devices", "devices.deny", "a", optional=True)] + [
        LimitWrite("devices", "devices.allow", rule, optional=True) for rule in DEVICE_RULES]


def parent_caps(version: int, mem_total: int, max_tasks: int) -> list[LimitWrite]:
    """The parent cgroup's limits: every container together leaves the host its headroom (pure)."""
    memory = mem_total - max(MEMORY_HEADROOM[0], int(mem_total * MEMORY_HEADROOM[1]))
    pids = max_tasks - max(PIDS_HEADROOM[0], int(max_tasks * PIDS_HEADROOM[1]))
    writes = []  # optional: a hierarchy without the controller limits nothing, as for the containers
    if memory > 0:
        writes.append(LimitWrite("memory", "memory.limit_in_bytes" if version == 1 else "memory.max", str(memory),
                                 optional=True))
    if pids > 0:
        writes.append(LimitWrite("pids", "pids.max", str(pids), optional=True))
    return writes


def host_totals() -> tuple[int, int]:
    """(MemTotal in bytes, the kernel's task limit: the lower of pid_max and threads-max)."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        mem = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemTotal:"))
    tasks = []
    for path in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
        with open(path, encoding="ascii") as handle:
            tasks.append(int(handle.read()))
    return mem, min(tasks)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _fail(what: str, path: str, exc: OSError) -> CgroupError:
    return CgroupError(f"cannot {what} {path}: {exc.strerror or exc}")


class Cgroup:
    """One container's cgroup, in every hierarchy the layout has."""

    def __init__(self, layout: CgroupLayout, relpath: str):
        self.layout = layout
        self.relpath = relpath
        if layout.version == 1:
            self.paths = {ctrl: os.path.join(mount, relpath) for ctrl, mount in layout.v1_mounts}
        else:
            path = os.path.join(layout.v2_mount, relpath)
            self.paths = {ctrl: path for ctrl in V2_CONTROLLERS}

    @property
    def dirs(self) -> list[str]:
        """Distinct directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.paths.values()))

    def path(self, controller: str) -> str | None:
        return self.paths.get(controller)

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(directory, "cgroup.procs") for directory in self.dirs]

    @property
    def join_files(self) -> list[str]:
        """Files a single-threaded process writes "0" to in order to join.

        v1: ``tasks`` (moves the writing thread only, so the kernel skips the global
        threadgroup lock and its RCU grace period: ~1 ms instead of ~10 ms per container here).
        v2: ``cgroup.procs`` (cgroup.threads cannot cross domains) — the runtime prefers
        clone3(CLONE_INTO_CGROUP) there and uses this only as a fallback.
        """
        name = "tasks" if self.layout.version == 1 else "cgroup.procs"
        return [os.path.join(directory, name) for directory in self.dirs]

    def exists(self) -> bool:
        return any(os.path.isdir(directory) for directory in self.dirs)

    # -- create / configure ----------------------------------------------------------------------
    def create(self, limits: Limits | None = None) -> None:
        """mkdir the cgroup (and missing parents) and apply *limits*; all or nothing for the leaf."""
        created: list[str] = []
        try:
            if self.layout.version == 1:
                mounts = dict.fromkeys(mount for _, mount in self.layout.v1_mounts)
                cpuset_mount = self.layout.mount_of("cpuset")
                for mount in mounts:
                    self._create_v1(mount, os.path.join(mount, self.relpath), mount == cpuset_mount, created)
            else:
                self._create_v2(created)
            if limits is not None:
                self.apply(limits)
            if self.layout.version == 1:
                self.write_all(device_writes())
        except BaseException:
            for directory in created:
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            raise

    @staticmethod
    def _mkdir_leaf(leaf: str, created: list[str], exists_ok: bool = False) -> None:
        try:
            os.mkdir(leaf, 0o755)
        except FileExistsError:
            if exists_ok:
                return
            raise CgroupError(f"cgroup {leaf} already exists") from None
        except OSError as exc:
            raise _fail("create cgroup", leaf, exc) from None
        created.append(leaf)

    def _create_v1(self, mount: str, leaf: str, cpuset: bool, created: list[str], leaf_exists_ok: bool = False) -> None:
        levels = []
        path = leaf
        while len(path) > len(mount):
            levels.append(path)
            path = os.path.dirname(path)
        for level in reversed(levels):
            if level == leaf:
                self._mkdir_leaf(leaf, created, leaf_exists_ok)
            else:
                try:
                    os.mkdir(level, 0o755)
                except FileExistsError:
                    pass  # parents are shared and stay (but may still be uninitialised: see below)
                except OSError as exc:
                    raise _fail("create cgroup", level, exc) from None
            if cpuset:  # checked even for existing levels: a concurrent creator may not be done yet
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    mine = os.path.join(level, knob)
                    try:
                        if not _read(mine).strip():
                            _write(mine, _read(os.path.join(os.path.dirname(level), knob)).strip())
                    except OSError as exc:
                        raise _fail("initialise", mine, exc) from None

    def _create_v2(self, created: list[str], leaf_exists_ok: bool = False) -> None:
        mount = self.layout.v2_mount
        leaf = self.paths["memory"]
        levels = []
        path = os.path.dirname(leaf)
        while len(path) > len(mount):
            levels.append(path)
            path = os.path.dirname(path)
        enable_controllers(mount)
        for level in reversed(levels):  # from the mount root down to the parent
            try:
                os.mkdir(level, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                raise _fail("create cgroup", level, exc) from None
            enable_controllers(level)
        self._mkdir_leaf(leaf, created, leaf_exists_ok)

    def apply(self, limits: Limits) -> None:
        self.write_all(limit_writes(self.layout.version, limits))

    def write_all(self, writes: list[LimitWrite]) -> None:
        apply_plan(self.plan(writes))

    def plan(self, writes: list[LimitWrite]) -> list[list]:
        """*writes* as ``[path, value, optional, controller]`` lists for ``apply_plan`` (JSON, for a
        warm slot's shim); a required controller that is not mounted is refused here."""
        plan = []
        for write in writes:
            directory = self.paths.get(write.controller)
            if directory is None:
                if write.optional:
                    continue
                raise CgroupError(
                    f"cannot apply a {write.controller} limit: the {write.controller} cgroup controller is not mounted"
                )
            plan.append([os.path.join(directory, write.filename), write.value, write.optional, write.controller])
        return plan

    def rename(self, relpath: str) -> "Cgroup":
        """cgroup v1 (v2 has no rename): move this cgroup to *relpath* — same parent — in every
        hierarchy, processes and settings included; all or nothing. Returns the renamed cgroup."""
        target = Cgroup(self.layout, relpath)
        done: list[tuple[str, str]] = []
        try:
            for old, new in zip(self.dirs, target.dirs, strict=True):
                os.rename(old, new)
                done.append((old, new))
        except OSError as exc:
            for old, new in reversed(done):
                try:
                    os.rename(new, old)
                except OSError:
                    pass
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise CgroupError(f"cgroup {exc.filename2 or relpath} already exists") from None
            raise _fail("rename cgroup", exc.filename or self.relpath, exc) from None
        return target

    def ensure(self, writes: list[LimitWrite]) -> None:
        """mkdir -p this cgroup in every hierarchy (a shared level: never removed here), then *writes*."""
        if self.layout.version == 1:
            cpuset_mount = self.layout.mount_of("cpuset")
            for mount in dict.fromkeys(mount for _, mount in self.layout.v1_mounts):
                leaf = os.path.join(mount, self.relpath)
                if not os.path.isdir(leaf):
                    self._create_v1(mount, leaf, mount == cpuset_mount, [], leaf_exists_ok=True)
        else:
            leaf = self.paths["memory"]
            if not os.path.isdir(leaf):
                self._create_v2([], leaf_exists_ok=True)
            enable_controllers(leaf)
        self.write_all(writes)

    def read(self, controller: str, filename: str) -> str:
        return _read(os.path.join(self.paths[controller], filename)).strip()

    # -- processes -------------------------------------------------------------------------------
    def add(self, pid: int) -> None:
        for path in self.procs_files:
            try:
                _write(path, str(pid))
            except OSError as exc:
                raise _fail(f"move pid {pid} into", path, exc) from None

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            try:
                found.update(int(line) for line in _read(path).split())
            except FileNotFoundError:
                continue
        return found

    def oom_killed(self) -> bool:
        """True if the kernel OOM-killed a process of this cgroup (needs Linux >= 4.13 on v1)."""
        directory = self.paths.get("memory")
        return directory is not None and oom_kill_count(directory, self.layout.version) > 0

    # -- removal ---------------------------------------------------------------------------------
    def remove(self, timeout: float = 2.0) -> None:
        """rmdir in every hierarchy; EBUSY (tasks still exiting) is retried until *timeout*."""
        deadline = time.monotonic() + timeout
        for directory in self.dirs:
            delay = 0.001
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise _fail("remove cgroup", directory, exc) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)


def apply_plan(plan: list[list]) -> None:
    """Write a ``Cgroup.plan``: each value to its file (an optional file that does not exist is skipped)."""
    for path, value, optional, controller in plan:
        try:
            _write(path, value)
        except FileNotFoundError:
            if optional:
                continue
            raise CgroupError(f"cannot apply a {controller} limit: {path} does not exist "
                              f"(is the {controller} controller enabled?)") from None
        except OSError as exc:
            raise _fail(f"write {value} to", path, exc) from None


def prepare_slot(layout: CgroupLayout, parent: str, shim_pid: int | None, pids: int) -> Cgroup:
    """cgroup v1: a warm slot's cgroup ``<parent>/.slot-<shim_pid>`` (*parent* itself if *shim_pid*
    is None) with everything a container's cgroup gets before its limits (the device list, the
    default pids limit *pids*)."""
    cgroup = Cgroup(layout, parent if shim_pid is None else f"{parent}/{SLOT_PREFIX}{shim_pid}")
    cgroup.create(None)
    try:
        cgroup.write_all([LimitWrite("pids", "pids.max", str(pids), optional=True)])
    except BaseException:
        cgroup.remove(timeout=0.0)
        raise
    return cgroup


def remove_stale_slots(layout: CgroupLayout, parent: str, alive=lambda pid: os.path.exists(f"/proc/{pid}")) -> None:
    """Delete the slot cgroups under *parent* whose shim is gone (e.g. killed with SIGKILL while warm)."""
    for directory in CgroupManager(parent, layout).parent_dirs():
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.startswith(SLOT_PREFIX) and name[len(SLOT_PREFIX):].isdigit() \
                    and not alive(int(name[len(SLOT_PREFIX):])):
                try:
                    os.rmdir(os.path.join(directory, name))
                except OSError:
                    pass  # tasks left in it: not ours to kill


def oom_kill_count(memory_dir: str, version: int) -> int:
    """OOM kills in the memory cgroup *memory_dir* (0 if unknown)."""
    filename = "memory.oom_control" if version == 1 else "memory.events"
    try:
        text = _read(os.path.join(memory_dir, filename))
    except OSError:
        return 0
    match = re.search(r"^oom_kill (\d+)$", text, re.M)
    return int(match.group(1)) if match else 0


def enable_controllers(directory: str, wanted: tuple[str, ...] = V2_CONTROLLERS) -> None:
    """cgroup v2: make sure *wanted* (as far as available) are enabled for children of *directory*."""
    try:
        available = set(_read(os.path.join(directory, "cgroup.controllers")).split())
        enabled = set(_read(os.path.join(directory, "cgroup.subtree_control")).split())
    except OSError as exc:
        raise _fail("read controllers of", directory, exc) from None
    missing = [controller for controller in wanted if controller in available and controller not in enabled]
    if not missing:
        return
    path = os.path.join(directory, "cgroup.subtree_control")
    try:
        _write(path, " ".join(f"+{controller}" for controller in missing))
    except OSError as exc:
        hint = (
            " (the cgroup has processes of its own: v2 forbids controllers there)" if exc.errno == errno.EBUSY else ""
        )
        raise CgroupError(f"cannot enable {' '.join(missing)} in {path}: {exc.strerror}{hint}") from None


class CgroupManager:
    """Makes ``Cgroup`` objects rooted at ``<mount>/<parent>`` (parent "cantainer" by default)."""

    def __init__(self, parent: str = "cantainer", layout: CgroupLayout | None = None):
        parts = parent.strip("/").split("/")
        if not parent.strip("/") or not all(_COMPONENT_RE.fullmatch(part) for part in parts):
            raise CgroupError(f"invalid cgroup parent {parent!r}: use relative path components of A-Z a-z 0-9 _ . -")
        self.parent = "/".join(parts)
        self._layout = layout
        self._capped: list[LimitWrite] | None = None  # what cap_parent last wrote

    @property
    def layout(self) -> CgroupLayout:
        if self._layout is None:
            self._layout = detect()
        return self._layout

    def relpath(self, container_id: str) -> str:
        return f"{self.parent}/{container_id}"

    def cgroup(self, container_id: str) -> Cgroup:
        return Cgroup(self.layout, self.relpath(container_id))

    def parent_dirs(self) -> list[str]:
        if self.layout.version == 1:
            return list(dict.fromkeys(os.path.join(mount, self.parent) for _, mount in self.layout.v1_mounts))
        return [os.path.join(self.layout.v2_mount, self.parent)]

    def cap_parent(self) -> None:
        """Create the parent cgroup(s) and give them ``parent_caps`` (idempotent). The host's
        totals are read each time; the hierarchies are written only when the caps changed or the
        parent went away (a start used to spend ~0.3 ms writing the same values again)."""
        caps = parent_caps(self.layout.version, *host_totals())
        parent = Cgroup(self.layout, self.parent)
        if caps == self._capped and all(os.path.isdir(d) for d in parent.dirs):
            return
        parent.ensure(caps)
        self._capped = caps

    def remove_parent(self) -> None:
        """rmdir the parent cgroup(s) if no container cgroup is left in them (for tests and uninstall)."""
        for directory in self.parent_dirs():
            try:
                os.rmdir(directory)
            except OSError:
                pass
