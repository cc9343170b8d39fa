"""The container runtime the agent uses: start, stop, kill, remove, list/inspect, wait, exec, logs.

Starts go through the fork server (zygote.py) to a per-container supervisor (supervisor.py) that
owns the log and records the exit, so containers outlive the agent and the zygote. If anything
fails — ``before_exec`` included — init is killed and the cgroup and directories removed: no
half-started container. A new ``Runtime`` re-adopts running containers from disk (records.py); with
``on_exit`` a watcher thread holds a pidfd per container and calls back on exit (no polling).
Mounts exist only in each container's mount namespace: the host's mount table holds none.
``remove`` renames the container's state directory into ``<state_dir>/.removed`` and a
low-priority thread deletes it (as containerd's snapshotter does): the id is free at once, and
deleting the files of its writable layer is off the caller's path. Leftovers are deleted by the
next ``Runtime``. Process tree, start protocol, choices: docs/design/runtime.md.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import selectors
import shutil
import signal
import socket
import stat
import threading
import time
from typing import Callable, Sequence

from .. import layout, mounts
from ..capabilities import DEFAULT_CAPS, DOCKER_DEFAULT_CAPS
from . import linux, logfile
from .cgroups import Cgroup, CgroupLayout, CgroupManager, LimitWrite, limit_writes
from .errors import (
    CgroupError,
    CommandFailed,
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRunning,
    RuntimeFailure,
    SpecError,
    StartError,
)
from .records import CREATED, DEAD, EXITED, RUNNING, ContainerInfo, derive_state, read_json, write_json
from .spec import ContainerSpec
from .zygote import Zygote

log = logging.getLogger("cantainer_agent.runtime")

DEFAULT_STATE_DIR = layout.containers_state_dir()
DEFAULT_RUN_DIR = layout.containers_run_dir()
DEFAULT_LOG_MAX = 10 * 1024 * 1024


START_TIMEOUT = 30.0
STOP_RECORD = "stop.json"  # why it was stopped, written before the signal (Runtime.stop's reason)
ATTACH_WAIT = 10.0  # a tty/stdin container waits this long before execve for its first client
_OVERLAY_UNSAFE = (",", ":", "\\", "\n")
REMOVED_DIR = ".removed"  # below state_dir: removed containers' directories, deleted in the background
REAPER_NICE = 10  # the deleting thread yields to everything else in the agent


def _poll_fd(fd: int, timeout: float | None) -> bool:
    """Wait until *fd* (a pidfd) is readable, i.e. the process exited. False on timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if poller.poll(None if remaining is None else int(remaining * 1000) + 1):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def _recv(chan: socket.socket, timeout: float) -> dict:
    chan.settimeout(timeout)
    try:
        data = chan.recv(65536)
    except socket.timeout:
        raise StartError(f"the container did not report within {timeout:.0f}s") from None
    if not data:
        raise StartError("the container's shim exited unexpectedly")
    message = json.loads(data)
    if message.get("event") == "error":
        if message.get("exit_code") in (126, 127):
            raise CommandFailed(message.get("message") or "the command cannot be executed", message["exit_code"])
        raise StartError(message.get("message") or "unknown error")
    return message


class _ExitWatcher:
    """One thread, one selector: a pidfd per running container, plus a wake-up pipe."""

    def __init__(self, runtime: "Runtime", callback: Callable[[ContainerInfo], None]):
        self._runtime = runtime
        self._callback = callback
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int]] = []
        self._watched: dict[str, int] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cantainer-exit-watch", daemon=True)
        self._thread.start()

    def add(self, container_id: str, pidfd: int) -> None:
        with self._lock:
            if self._closed:
                if pidfd >= 0:
                    os.close(pidfd)
                return
            self._pending.append((container_id, pidfd))
        os.write(self._wake_w, b"\0")

    def fire_later(self, container_id: str) -> None:
        """Report *container_id* as soon as possible (it exited before it could be watched)."""
        self.add(container_id, -1)

    def _run(self) -> None:
        while True:
            try:
                events = self._selector.select()
            except (OSError, ValueError):  # closed under us (close() called from a callback)
                return
            for key, _ in events:
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    with self._lock:
                        if self._closed:
                            return
                        pending, self._pending = self._pending, []
                    for container_id, pidfd in pending:
                        if pidfd < 0:
                            self._fire(container_id)
                        elif container_id in self._watched:
                            os.close(pidfd)
                        else:
                            self._watched[container_id] = pidfd
                            self._selector.register(pidfd, selectors.EVENT_READ, container_id)
                    continue
                container_id = key.data
                self._selector.unregister(key.fd)
                os.close(key.fd)
                self._watched.pop(container_id, None)
                self._fire(container_id)

    def _fire(self, container_id: str) -> None:
        try:
            info = self._runtime.inspect(container_id)
        except ContainerNotFound:
            return
        except Exception:  # noqa: BLE001
            log.exception("cannot inspect container %s after its exit", container_id)
            return
        if info.state == RUNNING:  # the shim died but init lives on: watch init instead
            fd = self._runtime._pidfd_for(info)
            if fd is not None:
                self._watched[container_id] = fd
                self._selector.register(fd, selectors.EVENT_READ, container_id)
                return
            info = self._runtime.inspect(container_id)
        try:
            self._callback(info)
        except Exception:  # noqa: BLE001
            log.exception("on_exit callback failed for container %s", container_id)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.write(self._wake_w, b"\0")
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        for fd in list(self._watched.values()):
            os.close(fd)
        with self._lock:
            for _, fd in self._pending:
                if fd >= 0:
                    os.close(fd)
            self._pending = []
        self._watched.clear()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class Runtime:
    """Containers of one host, rooted in *state_dir* (persistent) and *run_dir* (tmpfs).

    Thread-safe. Constructing it is cheap (no process is started until the first ``start``), so a
    short-lived CLI process can use it for ``exec``/``inspect``/``logs`` too.
    """

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        run_dir: str = DEFAULT_RUN_DIR,
        cgroup_parent: str = "cantainer",
        *,
        on_exit: Callable[[ContainerInfo], None] | None = None,
        log_max_bytes: int = DEFAULT_LOG_MAX,
        capabilities: tuple[str, ...] = DEFAULT_CAPS,
        cgroup_layout: CgroupLayout | None = None,
        python: str | None = None,
        attach_wait: float = ATTACH_WAIT,
        default_pids: int = layout.CONTAINER_PIDS,
        min_free_bytes: int = layout.MIN_FREE_BYTES,
        protected: tuple[str, ...] = mounts.PROTECTED,
    ):
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.abspath(run_dir)
        for path in (self.state_dir, self.run_dir):
            if any(ch in path for ch in _OVERLAY_UNSAFE):
                raise ValueError(f"directory {path!r} cannot be used in overlayfs options (contains , : \\ or newline)")
        self.cgroups = CgroupManager(cgroup_parent, cgroup_layout)
        self.log_max_bytes = log_max_bytes
        self.attach_wait = attach_wait
        self.default_pids = default_pids
        self.min_free_bytes = min_free_bytes
        # what no bind mount may reach: the agent's and the kernel's directories, and ours
        self.protected = tuple(sorted({*protected, self.state_dir, self.run_dir}))
        self.default_caps = tuple(capabilities)
        self.caps_mask = linux.caps_mask(capabilities)  # of a container without --cap-add/--cap-drop
        self.cap_last = linux.last_cap()
        self.zygote = Zygote(python, self._zygote_options)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._starting: set[str] = set()
        self._reaper = _Reaper(os.path.join(self.state_dir, REMOVED_DIR))
        self._watcher: _ExitWatcher | None = None
        if on_exit is not None:
            self._watcher = _ExitWatcher(self, on_exit)
            for info in self.list():
                if info.state == RUNNING:
                    fd = self._pidfd_for(info)
                    if fd is not None:
                        self._watcher.add(info.id, fd)

    def _zygote_options(self) -> dict:
        """What the zygote's warm slots prepare (zygote.Zygote): on cgroup v1 the container's init,
        forked ahead in the slot's own cgroup (renamed to the container's at start)."""
        layout = self.cgroups.layout
        options = {"caps": self.caps_mask, "cap_last": self.cap_last, "prefork_init": layout.version == 1}
        if layout.version == 1:
            options["cgroup_slot"] = {"v1_mounts": [list(item) for item in layout.v1_mounts],
                                      "parent": self.cgroups.parent, "pids": self.default_pids}
        return options

    def caps_of(self, spec: ContainerSpec) -> int:
        """The capability mask of *spec*'s processes: our default set with its --cap-add/--cap-drop."""
        return linux.caps_mask(spec.capabilities(self.default_caps))

    # -- paths -----------------------------------------------------------------------------------
    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.state_dir, container_id)

    def _run_path(self, container_id: str) -> str:
        return os.path.join(self.run_dir, container_id)

    def _lock(self, container_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(container_id, threading.Lock())

    def warm_up(self) -> None:
        """Start the zygote now rather than on the first ``start`` (it takes ~50 ms once), and wait
        (up to 5 s) until its first warm slot is ready for a start to go straight to."""
        self.zygote.ensure(offer_timeout=5.0)

    def is_warm(self) -> bool:
        """True while the zygote runs (a start need not spawn it first)."""
        return self.zygote.running()

    # -- start -----------------------------------------------------------------------------------
    def start(self, spec: ContainerSpec, rootfs: str | Sequence[str],
              before_exec: Callable[[int], None] | None = None, timeout: float = START_TIMEOUT) -> ContainerInfo:
        """Create and start a container from the image tree *rootfs* (one directory, or the image's
        layer directories bottom first: its overlay lower dirs); return once its command runs.

        *before_exec(pid)* is called in this thread with the host pid of the container's init once
        its namespaces exist and before the command is executed (its network namespace is
        ``/proc/<pid>/ns/net``). If it raises, the container is torn down and the exception propagates.
        It may return ``{"started_at": t}``: the start time to record (the one it already told raft).
        """
        if not isinstance(spec, ContainerSpec):
            raise TypeError("spec must be a ContainerSpec")
        lowers = [os.path.abspath(path) for path in ([rootfs] if isinstance(rootfs, str) else rootfs)]
        if not lowers:
            raise StartError("the image has no layers")
        for lower in lowers:
            if any(ch in lower for ch in _OVERLAY_UNSAFE):
                raise StartError(f"image path {lower!r} cannot be used in overlayfs options")
            if not os.path.isdir(lower):
                raise StartError(f"image root filesystem {lower} does not exist")
        cid = spec.id
        cdir = self.container_dir(cid)
        self._mount_requests(spec)  # a mount that cannot be made: said before anything is created
        with self._lock(cid):
            self._check_free_space(spec)
            try:
                _mkdir_in(cdir, self.state_dir)
            except FileExistsError:
                raise ContainerExists(f"container {cid} already exists") from None

            def prepare(cgroup: Cgroup) -> float:
                for sub in ("upper", "work", "rootfs"):
                    os.mkdir(os.path.join(cdir, sub), 0o755)
                _seed_etc(lowers, os.path.join(cdir, "upper"), spec)
                created_at = time.time()
                write_json(os.path.join(cdir, "config.json"), {
                    "version": 1, "spec": spec.to_dict(), "created_at": created_at, "boot_id": linux.boot_id(),
                    "rootfs": lowers, "cgroup": cgroup.relpath,
                })
                return created_at

            return self._launch(spec, lowers, prepare, before_exec, timeout, remove_on_failure=True)

    def restart(self, container_id: str, before_exec: Callable[[int], None] | None = None,
                timeout: float = START_TIMEOUT) -> ContainerInfo:
        """Start an exited (or dead) container again, as docker's restart policies do: same id, spec
        and image, its writable layer and its log kept (appended to); a new process, cgroup and
        namespaces. *before_exec* as for ``start``. On failure it is left dead (no process)."""
        cid = container_id
        cdir = self.container_dir(cid)
        with self._lock(cid):
            info = self.inspect(cid)
            if info.state == RUNNING or cid in self._starting:
                raise ContainerRunning(f"container {info.name} is running")
            config = read_json(os.path.join(cdir, "config.json"))
            if config is None or info.spec is None:
                raise ContainerNotFound(f"container {cid} has no record to restart from")
            lowers = config.get("rootfs")
            lowers = [lowers] if isinstance(lowers, str) else list(lowers or [])
            for lower in lowers:
                if not os.path.isdir(lower):
                    raise StartError(f"image root filesystem {lower} of container {info.name} is gone")
            self._check_free_space(info.spec)
            old = Cgroup(self.cgroups.layout, config.get("cgroup") or self.cgroups.relpath(cid))
            self._kill_cgroup(old)
            old.remove(timeout=5.0)
            _unmount_below(cdir)
            for name in ("exit.json", STOP_RECORD):
                try:
                    os.unlink(os.path.join(cdir, name))
                except FileNotFoundError:
                    pass
            spec = info.spec

            def prepare(cgroup: Cgroup) -> float:
                for sub in ("work", "rootfs"):
                    shutil.rmtree(os.path.join(cdir, sub), ignore_errors=True)
                    os.mkdir(os.path.join(cdir, sub), 0o755)
                config.update(boot_id=linux.boot_id(), cgroup=cgroup.relpath)
                write_json(os.path.join(cdir, "config.json"), config)
                return config.get("created_at") or time.time()

            return self._launch(spec, lowers, prepare, before_exec, timeout, remove_on_failure=False)

    def _launch(self, spec: ContainerSpec, lowers: list[str], prepare: Callable[[Cgroup], float],
                before_exec: Callable[[int], None] | None, timeout: float, remove_on_failure: bool) -> ContainerInfo:
        """Let *prepare* lay out the container's directory, create its cgroup and start it through the
        zygote; on failure undo it (and with *remove_on_failure* remove the container's directory).
        Called with the container's lock held."""
        cid = spec.id
        cdir, rdir = self.container_dir(cid), self._run_path(cid)
        self._starting.add(cid)
        cgroup = self.cgroups.cgroup(cid)
        chan = None
        shim_fd = None
        hook_error = False
        try:
            try:
                _mkdir_in(rdir, self.run_dir)
            except FileExistsError:  # left by an interrupted start or a removal (tmpfs: gone at reboot)
                shutil.rmtree(rdir, ignore_errors=True)
                os.mkdir(rdir, 0o700)
            mount_requests = self._mount_requests(spec)  # (again for a restart: is the source still there?)
            created_at = prepare(cgroup)
            slot_cgroup = None
            if cgroup.layout.version == 1:
                # The warm slot made the cgroup (device list, default pids limit; the parent capped so
                # that all containers together leave the host headroom) and its init is in it already:
                # the shim renames it to this container's and writes these limits (supervisor.py).
                slot_cgroup = {"relpath": cgroup.relpath, "plan": cgroup.plan(limit_writes(1, spec.limits)),
                               "v1_mounts": [list(item) for item in cgroup.layout.v1_mounts], "pids": self.default_pids}
            else:
                self.cgroups.cap_parent()  # all containers together leave the host (agent, sshd) headroom
                cgroup.create(spec.limits)
                if spec.limits.pids is None:  # the default limit (where the pids controller exists)
                    cgroup.write_all([LimitWrite("pids", "pids.max", str(self.default_pids), optional=True)])
            chan = self.zygote.request({
                "op": "start", "id": cid, "hostname": spec.hostname, "argv": list(spec.command),
                "env": spec.environ(), "workdir": spec.workdir, "lower": ":".join(reversed(lowers)),
                "user": spec.user,
                "upper": os.path.join(cdir, "upper"), "work": os.path.join(cdir, "work"),
                "rootfs": os.path.join(cdir, "rootfs"),
                "cgroup_join": cgroup.join_files, "memory_cgroup": cgroup.path("memory"),
                "cgroup_v2_dir": cgroup.dirs[0] if cgroup.layout.version == 2 else None,
                "cgroup_version": cgroup.layout.version, "caps": self.caps_of(spec), "cap_last": self.cap_last,
                "seccomp": spec.seccomp == "default",
                "wait_for_go": before_exec is not None,
                "log": os.path.join(cdir, logfile.NAME), "log_max": self.log_max_bytes,
                "pids_file": os.path.join(rdir, "pids.json"), "exit_file": os.path.join(cdir, "exit.json"),
                "tty": spec.tty, "stdin": spec.stdin,
                "attach_sock": self.attach_path(cid) if spec.attachable else None,
                "attach_wait": self.attach_wait,
                "mounts": mount_requests, "protected": list(self.protected), "cgroup_slot": slot_cgroup,
            })
            if before_exec is not None:
                ready = _recv(chan, timeout)
                # The shim is blocked waiting for our reply, so its pid cannot have been recycled.
                shim_fd = os.pidfd_open(ready["shim_pid"])
                hook_error = True
                go = before_exec(ready["pid"])
                hook_error = False
                chan.send(json.dumps({"op": "go", **(go if isinstance(go, dict) else {})}).encode())
            started = _recv(chan, timeout)
            if shim_fd is None:
                shim_fd = linux.pidfd_open_verified(started["shim_pid"], started["shim_start"])
                if shim_fd is None:  # already gone: the command was that quick; watch nothing
                    shim_fd = -1
        except BaseException as exc:
            self._abort_start(cid, cgroup, chan, shim_fd, remove=remove_on_failure)
            self._starting.discard(cid)
            if hook_error or isinstance(exc, (StartError, CommandFailed, KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(exc, RuntimeFailure):
                raise StartError(f"cannot start container {spec.name}: {exc}") from exc
            if isinstance(exc, OSError):
                raise StartError(f"cannot start container {spec.name}: {exc.strerror or exc}"
                                 + (f": {exc.filename}" if exc.filename else "")) from exc
            raise
        finally:
            if chan is not None:
                chan.close()
        self._starting.discard(cid)
        info = ContainerInfo(
            id=cid, state=RUNNING, spec=spec, pid=started["pid"], shim_pid=started["shim_pid"],
            created_at=created_at, started_at=started.get("started_at"), log_path=logfile.path_in(cdir),
        )
        if shim_fd == -1:
            if self._watcher is not None:
                self._watcher.fire_later(cid)
        elif self._watcher is not None:
            self._watcher.add(cid, shim_fd)
        else:
            os.close(shim_fd)
        return info

    def _mount_requests(self, spec: ContainerSpec) -> list[dict]:
        """The spec's mounts for init, checked early for a clear error (init checks again, race-free,
        on what the kernel resolves): a bind source must exist and reach nothing protected; a volume's
        directory must exist — seeded from the image (copy_up) while it is empty."""
        requests = []
        for mount in spec.mounts:
            if not os.path.exists(mount.source):
                what = f"volume {mount.name}'s directory" if mount.kind == mounts.VOLUME else "bind mount source"
                raise StartError(f"cannot start container {spec.name}: {what} {mount.source} does not exist on this "
                                 "host" + ("" if mount.kind == mounts.VOLUME else " — create it first"))
            if mount.kind == mounts.BIND:
                real = os.path.realpath(mount.source)
                reason = mounts.refusal(real, tuple(sorted({*self.protected,
                                                            *map(os.path.realpath, self.protected)})))
                if reason:
                    shown = mount.source if real == mount.source else f"{mount.source} (resolves to {real})"
                    raise StartError(f"bind mount source {shown} is refused: {reason} — bind a directory of your own")
            copy_up = mount.kind == mounts.VOLUME and os.path.isdir(mount.source) and not os.listdir(mount.source)
            requests.append({**mount.to_dict(), "copy_up": copy_up})
        return requests

    def _check_free_space(self, spec: ContainerSpec) -> None:
        """Refuse a container while the file system of its writable layer (and of the raft journal,
        next to it) is below the floor: a full disk would stop the agent's raft vote too."""
        try:
            info = os.statvfs(self.state_dir)
        except FileNotFoundError:
            os.makedirs(self.state_dir, 0o700, exist_ok=True)
            info = os.statvfs(self.state_dir)
        free = info.f_bavail * info.f_frsize
        if free < self.min_free_bytes:
            raise StartError(
                f"cannot start container {spec.name}: only {free >> 20} MiB free on the file system of "
                f"{self.state_dir} (at least {self.min_free_bytes >> 20} MiB must stay free for the raft "
                f"journal and logs) — free space there or remove containers")

    def _abort_start(self, cid: str, cgroup: Cgroup, chan: socket.socket | None, shim_fd: int | None,
                     remove: bool = True) -> None:
        if chan is not None:
            try:
                chan.send(b'{"op": "abort"}')
            except OSError:
                pass
            chan.close()
        if shim_fd is not None and shim_fd >= 0:
            if not _poll_fd(shim_fd, 5.0):
                try:
                    signal.pidfd_send_signal(shim_fd, signal.SIGKILL)
                except OSError:
                    pass
                _poll_fd(shim_fd, 2.0)
            os.close(shim_fd)
        try:
            self._kill_cgroup(cgroup)
            cgroup.remove(timeout=5.0)
        except Exception:  # noqa: BLE001
            log.exception("cannot remove the cgroup of failed container %s", cid)
        if remove:
            shutil.rmtree(self.container_dir(cid), ignore_errors=True)
        shutil.rmtree(self._run_path(cid), ignore_errors=True)

    @staticmethod
    def _kill_cgroup(cgroup: Cgroup) -> None:
        for pid in cgroup.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- state -----------------------------------------------------------------------------------
    def inspect(self, container_id: str) -> ContainerInfo:
        cdir = self.container_dir(container_id)
        config = read_json(os.path.join(cdir, "config.json"))
        if config is None and not os.path.isdir(cdir):
            raise ContainerNotFound(f"no container {container_id}")
        exit_path = os.path.join(cdir, "exit.json")
        exit_record = read_json(exit_path)
        pids = read_json(os.path.join(self._run_path(container_id), "pids.json"))
        state, pid, shim = derive_state(config, pids, exit_record, linux.boot_id())
        if state == DEAD and exit_record is None and pids is not None:
            # The shim writes exit.json, then exits: a record read before its liveness was checked
            # may predate an exit that happened in between. Gone now, so its record (if any) is there.
            exit_record = read_json(exit_path)
            if exit_record is not None:
                state, pid, shim = EXITED, None, None
        if config is None:
            state = CREATED if container_id in self._starting else DEAD
        spec = None
        if config is not None:
            try:
                spec = ContainerSpec.from_dict(config.get("spec") or {})
            except (SpecError, TypeError):
                spec = None
        exit_record = exit_record or {}
        stop_record = read_json(os.path.join(cdir, STOP_RECORD)) if state == EXITED else None
        return ContainerInfo(
            id=container_id, state=state, spec=spec, pid=pid, shim_pid=shim,
            exit_code=exit_record.get("exit_code"), signal=exit_record.get("signal"),
            oom_killed=bool(exit_record.get("oom_killed")),
            stop_reason=(stop_record or {}).get("reason"),
            created_at=(config or {}).get("created_at"),
            started_at=exit_record.get("started_at") or (pids or {}).get("started_at"),
            finished_at=exit_record.get("finished_at"), log_path=logfile.path_in(cdir),
        )

    def list(self) -> list[ContainerInfo]:
        """Every container on disk with its derived state (created/running/exited/dead)."""
        try:
            names = os.listdir(self.state_dir)
        except FileNotFoundError:
            return []
        infos = []
        for name in names:
            if not name.startswith(".") and os.path.isdir(os.path.join(self.state_dir, name)):
                try:
                    infos.append(self.inspect(name))
                except ContainerNotFound:
                    continue
        return sorted(infos, key=lambda info: (info.created_at or 0, info.id))

    def logs(self, container_id: str) -> str:
        """Path of the container's log (JSON lines with the stream, logfile.py; the older part is in
        ``<path>.1``)."""
        if not os.path.isdir(self.container_dir(container_id)):
            raise ContainerNotFound(f"no container {container_id}")
        return logfile.path_in(self.container_dir(container_id))

    def read_logs(self, container_id: str, streams: tuple[str, ...] = logfile.STREAMS) -> bytes:
        """The container's output on *streams* so far, in order (what `cantainer logs` prints)."""
        return logfile.read_all(self.logs(container_id), streams)

    # -- attach ----------------------------------------------------------------------------------
    def attach_path(self, container_id: str) -> str:
        """The unix socket a tty/stdin container's shim serves while it runs (see supervisor.py)."""
        return os.path.join(self._run_path(container_id), "attach.sock")

    def attach(self, container_id: str) -> socket.socket:
        """Connect to a running tty/stdin container. Send frames (``attach.encode_frame``: stdin
        data, window size, stdin EOF); receive its output (raw) until it ends; then ``wait``."""
        from .attach import unix_address

        info = self.inspect(container_id)
        if info.spec is not None and not info.spec.attachable:
            raise ContainerNotRunning(f"container {info.name} was not started with a tty or stdin")
        if info.state != RUNNING:
            raise ContainerNotRunning(f"container {info.name} is not running")
        address, dfd = unix_address(self.attach_path(container_id))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise ContainerNotRunning(f"cannot attach to container {info.name}: {exc.strerror or exc}") from None
        finally:
            if dfd >= 0:
                os.close(dfd)
        return sock

    def _pidfd_for(self, info: ContainerInfo) -> int | None:
        """A verified pidfd of the process whose exit ends the container: the shim, else init."""
        return self._pidfd_for_id(info.id)

    def _pidfd_for_id(self, container_id: str) -> int | None:
        pids = read_json(os.path.join(self._run_path(container_id), "pids.json")) or {}
        fd = self._verified_pidfd(container_id, "shim_pid", pids)
        return fd if fd is not None else self._verified_pidfd(container_id, "pid", pids)

    def wait(self, container_id: str, timeout: float | None = None) -> ContainerInfo:
        """Block until the container is no longer running (or *timeout*); return its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # pids.json first: a container that runs is waited for without reading its other records
            fd = self._pidfd_for_id(container_id)
            if fd is None:
                info = self.inspect(container_id)
                if info.state != RUNNING:
                    return info
                time.sleep(0.001)  # both processes just went away: the next inspect tells how
                continue
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                expired = not _poll_fd(fd, remaining)
            finally:
                os.close(fd)
            info = self.inspect(container_id)
            if expired or info.state != RUNNING:
                return info

    # -- stop / kill / remove --------------------------------------------------------------------
    def _verified_pidfd(self, container_id: str, which: str, pids: dict | None = None) -> int | None:
        """pidfd of the container's init ("pid") or shim ("shim_pid") if it is still that process
        (*pids*: the container's pids.json, if already read)."""
        if pids is None:
            pids = read_json(os.path.join(self._run_path(container_id), "pids.json")) or {}
        pid = pids.get(which)
        start = pids.get("pid_start" if which == "pid" else "shim_start")
        if not pid or start is None or pids.get("boot_id") != linux.boot_id():
            return None
        return linux.pidfd_open_verified(pid, start)

    def kill(self, container_id: str, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to the container's init. Note: as PID 1 of its namespace, init ignores signals
        it has no handler for (SIGKILL excepted)."""
        info = self.inspect(container_id)
        fd = self._verified_pidfd(container_id, "pid") if info.state == RUNNING else None
        if fd is None:
            raise ContainerNotRunning(f"container {info.name} is not running")
        try:
            signal.pidfd_send_signal(fd, sig)
        finally:
            os.close(fd)

    def stop(self, container_id: str, timeout: float = 10.0, reason: str | None = None) -> ContainerInfo:
        """The image's stop signal (SIGTERM by default) to init, SIGKILL after *timeout* seconds; wait
        until the exit is recorded. *reason* (e.g. "stopped by down") is recorded first and becomes
        the exited container's reason."""
        info = self.inspect(container_id)
        if info.state != RUNNING:
            return info
        if reason:
            write_json(os.path.join(self.container_dir(container_id), STOP_RECORD), {"reason": reason})
        fd = self._verified_pidfd(container_id, "pid")
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, info.spec.stop_signal if info.spec is not None else signal.SIGTERM)
                if not _poll_fd(fd, timeout):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    _poll_fd(fd, 10.0)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
        shim = self._verified_pidfd(container_id, "shim_pid")
        if shim is not None:
            try:
                _poll_fd(shim, 10.0)
            finally:
                os.close(shim)
        return self.inspect(container_id)

    def remove(self, container_id: str, force: bool = False) -> None:
        """Delete a stopped container: cgroup, mounts (if any leaked), state and run directories.

        Idempotent (no error if it does not exist). A running container needs ``force=True``
        (SIGKILL first), else ``ContainerRunning`` is raised.
        """
        with self._lock(container_id):
            try:
                info = self.inspect(container_id)
            except ContainerNotFound:
                shutil.rmtree(self._run_path(container_id), ignore_errors=True)
                return
            if container_id in self._starting:
                raise ContainerRunning(f"container {info.name} is being started")
            if info.state == RUNNING:
                if not force:
                    raise ContainerRunning(f"container {info.name} is running")  # the caller says what to do
                self.stop(container_id, timeout=0)
            config = read_json(os.path.join(self.container_dir(container_id), "config.json")) or {}
            cgroup = Cgroup(self.cgroups.layout, config.get("cgroup") or self.cgroups.relpath(container_id))
            try:  # an empty cgroup goes at once; rmdir refuses one that still has tasks
                cgroup.remove(timeout=0.0)
            except CgroupError:
                self._kill_cgroup(cgroup)  # strays (e.g. init alive after its shim was killed and stop raced)
                cgroup.remove(timeout=5.0)
            roots = (self.container_dir(container_id), self._run_path(container_id))
            _unmount_below(*roots)
            for root in roots:
                if root == roots[0] and self._reaper.take(root, container_id):
                    continue  # deleted in the background (the run dir is on tmpfs: cheap)
                _remove_dir(root)
                if os.path.lexists(root):
                    raise RuntimeFailure(f"cannot remove {root}")

    def update_etc_file(self, container_id: str, name: str, text: str) -> None:
        """Rewrite /etc/hosts, /etc/resolv.conf or /etc/hostname of a (running) container in place.

        The file lives in the container's overlay upper dir, which the container can modify: it is
        opened without following symlinks at any level, and only a regular file is written.
        """
        if name not in ETC_FILES:
            raise ValueError(f"{name!r} is not one of {', '.join(ETC_FILES)}")
        if not os.path.isdir(self.container_dir(container_id)):
            raise ContainerNotFound(f"no container {container_id}")
        fd = _open_beneath(os.path.join(self.container_dir(container_id), "upper"), f"etc/{name}")
        try:
            os.ftruncate(fd, 0)
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    # -- exec ------------------------------------------------------------------------------------
    def exec(self, container_id: str, argv: list[str], env: dict[str, str] | None = None,
             workdir: str | None = None, timeout: float | None = None) -> int:
        """Run *argv* inside the running container (its namespaces, cgroup, capability set) with this
        process's stdio; return its exit code (128+N if killed by signal N; 126/127 if it cannot be
        executed). Forks: call it from a single-threaded process (the CLI's ``exec``), not the agent.
        *timeout*: kill the command after that many seconds and raise ``TimeoutError``.
        """
        from .nsexec import exec_in_container

        info = self.inspect(container_id)
        if info.state != RUNNING or info.spec is None:
            raise ContainerNotRunning(f"container {info.name} is not running")
        pids = read_json(os.path.join(self._run_path(container_id), "pids.json")) or {}
        config = read_json(os.path.join(self.container_dir(container_id), "config.json")) or {}
        cgroup = Cgroup(self.cgroups.layout, config.get("cgroup") or self.cgroups.relpath(container_id))
        environ = info.spec.environ()
        environ.update(env or {})
        return exec_in_container(
            pids.get("pid") or 0, pids.get("pid_start"), argv, environ, workdir or info.spec.workdir,
            cgroup.join_files, self.caps_of(info.spec), name=info.name, cap_last=self.cap_last, user=info.spec.user,
            seccomp=info.spec.seccomp == "default", timeout=timeout,
        )

    def lower_dirs_in_use(self) -> set[str]:
        """The overlay lower dirs (image layers) of every container on disk, whatever its state."""
        used: set[str] = set()
        for name in os.listdir(self.state_dir) if os.path.isdir(self.state_dir) else []:
            if name.startswith("."):
                continue
            config = read_json(os.path.join(self.state_dir, name, "config.json"))
            rootfs = (config or {}).get("rootfs")
            used.update([rootfs] if isinstance(rootfs, str) else rootfs or [])
        return used

    # -- shutdown --------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the exit watcher and the zygote, and finish deleting removed containers (up to
        10 s; the rest is deleted by the next Runtime). Containers keep running."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self.zygote.close()
        self._reaper.drain(10.0)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Reaper:
    """Deletes removed containers' directories, moved into *trash*, in a thread at nice +10."""

    def __init__(self, trash: str) -> None:
        self.trash = trash
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self.idle = threading.Event()  # set while there is nothing to delete (tests wait for it)
        self.idle.set()
        if os.path.isdir(trash) and os.listdir(trash):
            self._kick()  # left by an earlier agent

    def take(self, directory: str, container_id: str) -> bool:
        """Move *directory* into the trash (False: could not; delete it the slow way)."""
        target = os.path.join(self.trash, f"{container_id}.{os.urandom(4).hex()}")
        try:
            try:
                os.rename(directory, target)
            except FileNotFoundError:  # no trash yet (the directory itself is there: remove holds its lock)
                os.makedirs(self.trash, 0o700, exist_ok=True)
                os.rename(directory, target)
        except OSError as exc:
            log.warning("cannot move %s out of the way for background deletion: %s", directory, exc)
            return False
        self._kick()
        return True

    def _kick(self) -> None:
        self.idle.clear()
        self._wake.set()
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cantainer-reaper", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        thread = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + REAPER_NICE)
        except OSError:
            pass
        while True:
            self._wake.wait(30.0)
            self._wake.clear()
            try:
                names = os.listdir(self.trash)
            except FileNotFoundError:
                names = []
            for name in names:
                shutil.rmtree(os.path.join(self.trash, name), ignore_errors=True)
            if not self._wake.is_set():
                self.idle.set()

    def drain(self, timeout: float) -> None:
        """Wait (up to *timeout*) until everything taken is deleted; then drop the empty trash."""
        if self.idle.wait(timeout):
            try:
                os.rmdir(self.trash)
            except OSError:
                pass  # absent, or something arrived meanwhile


ETC_FILES = ("hosts", "resolv.conf", "hostname")


def _seed_etc(lowers: list[str], upper: str, spec: ContainerSpec) -> None:
    """Write /etc/hosts, resolv.conf and hostname into the (fresh, empty) overlay upper dir.

    Cheaper than bind mounts, and the files stay the container's own, like docker's. upper/etc
    takes the owner and mode of the image's /etc (its topmost layer that has one) so the merged
    directory looks the same.
    """
    etc = os.path.join(upper, "etc")
    os.mkdir(etc, 0o755)
    image_etc = None
    for lower in reversed(lowers):
        try:
            image_etc = os.lstat(os.path.join(lower, "etc"))
            break
        except OSError:
            continue
    if image_etc is not None and stat.S_ISDIR(image_etc.st_mode):
        mine = os.lstat(etc)
        if (mine.st_uid, mine.st_gid) != (image_etc.st_uid, image_etc.st_gid):
            os.chown(etc, image_etc.st_uid, image_etc.st_gid)
        if stat.S_IMODE(mine.st_mode) != stat.S_IMODE(image_etc.st_mode):
            os.chmod(etc, stat.S_IMODE(image_etc.st_mode))
    for name, text in (("hosts", spec.hosts_file()), ("resolv.conf", spec.resolv_conf),
                       ("hostname", spec.hostname + "\n")):
        fd = os.open(os.path.join(etc, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)


def _open_beneath(root: str, relpath: str) -> int:
    """Open the regular file *relpath* below *root* for writing, following no symlink on the way."""
    parts = [part for part in relpath.split("/") if part]
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    dfd = os.open(root, flags | os.O_PATH | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, flags | os.O_PATH | os.O_DIRECTORY, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        fd = os.open(parts[-1], flags | os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RuntimeFailure(f"/{relpath} in the container is not a regular file")
    return fd


def _mkdir_in(path: str, parent: str) -> None:
    """mkdir *path* (0700), making its *parent* first if that is missing; FileExistsError if it exists."""
    try:
        os.mkdir(path, 0o700)
    except FileNotFoundError:
        os.makedirs(parent, 0o700, exist_ok=True)
        os.mkdir(path, 0o700)


def _remove_dir(path: str) -> None:
    """Delete a directory of plain files (a run dir), else fall back to rmtree; no error if absent."""
    try:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _unmount_below(*roots: str) -> None:
    """Detach every mount at or below each of *roots* in our mount namespace (normally there is none)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            points = [line.split()[4] for line in handle]
    except OSError:
        return
    points = [p.replace("\\040", " ") for p in points]
    prefixes = tuple(root.rstrip("/") + "/" for root in roots)
    for point in sorted((p for p in points if p in roots or p.startswith(prefixes)), key=len, reverse=True):
        try:
            linux.umount2(point, linux.MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise


__all__ = ["Runtime", "DEFAULT_CAPS", "DOCKER_DEFAULT_CAPS", "CREATED", "RUNNING", "EXITED", "DEAD"]
