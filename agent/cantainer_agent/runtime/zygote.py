"""The fork server ("zygote"): a single-threaded interpreter that forks one supervisor per container.

The agent is multi-threaded: Python in a child forked from it can deadlock on locks other threads
held, and a new interpreter per container costs 20-50 ms. So one fresh interpreter (``python3 -I
-S``, fork+exec from C) is started once, warms up, and forks (~1 ms) — keeping one *warm slot*
ready, which it *offers* to the agent: a socket straight to that shim (SCM_RIGHTS on the zygote
socket), so a start reaches the shim without a hop through the zygote. The shim tells the zygote
"taken"; a request that comes through the zygote instead (no offer at hand) gets a fresh slot.
Requests carry a per-container channel (SCM_RIGHTS); all replies travel on it, so concurrent
starts need no demultiplexing. EOF (the agent died) ends the zygote and its warm slot; running
supervisors do not depend on it. docs/design/runtime.md.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable  # already loaded at start-up: free for the zygote

MAX_REQUEST = 1 << 18
# The next warm slot is prepared once the slot just used has started its container (its shim closes
# the slot socket), not while that start still runs: on a 2-core host the refill (fork, a PID and a
# network namespace) competed with it for the CPU. At the latest REFILL_MAX seconds after a start.
REFILL_MAX = 0.05

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from cantainer_agent.runtime.zygote import main; main(int(sys.argv[2]), sys.argv[3])"
)


def package_root() -> str:
    """The directory (or zip file) that contains the ``cantainer_agent`` package."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_INT_SIZE = 4  # sizeof(int): a descriptor in SCM_RIGHTS
OFFER = b"offer"  # zygote -> agent, with a socket to the warm shim (the agent's own way in)
TAKEN = b"T"  # warm shim -> zygote: a request came the direct way


class _Slot:
    """A warm shim waiting for its request on *sock* (or on *direct*'s peer, held by the agent)."""

    def __init__(self, pid: int, sock: socket.socket, direct: socket.socket | None = None):
        self.pid, self.sock, self.direct = pid, sock, direct


def _spawn_slot(zygote_sock: socket.socket, opts: dict, parent=None, stale: bool = False,
                offered: bool = True) -> _Slot:
    """Fork a warm shim (*offered*: with a direct way in for the agent, ``_offer``); *parent* (a
    CgroupManager, v1) gets its caps checked first: the slot's cgroup is made below it. *stale*: a
    warm shim died, its slot's cgroup may be left: delete it."""
    from . import supervisor

    if parent is not None:
        try:
            if stale:
                from .cgroups import remove_stale_slots

                remove_stale_slots(parent.layout, parent.parent)
            parent.cap_parent()
        except Exception:  # noqa: BLE001 - CgroupError, OSError: the slot then makes its cgroup at the request, or says why not
            pass

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    direct, direct_shim = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if offered else (None, None)
    try:
        pid = os.fork()
    except OSError:
        for end in (ours, theirs, direct, direct_shim):
            if end is not None:
                end.close()
        raise
    if pid == 0:
        try:
            ours.close()
            if direct is not None:
                direct.close()
            supervisor.run_shim(theirs.detach(), opts, direct_shim.detach() if direct_shim is not None else -1)
        finally:
            os._exit(70)
    theirs.close()
    if direct_shim is not None:
        direct_shim.close()
    return _Slot(pid, ours, direct)


def _offer(agent: socket.socket, slot: _Slot) -> None:
    """Hand the agent its way straight to *slot*'s shim (our copy is closed: the shim's EOF on it
    then means the agent dropped it)."""
    direct, slot.direct = slot.direct, None
    try:
        socket.send_fds(agent, [OFFER], [direct.fileno()])
    except OSError:
        pass  # the agent is gone: the main loop sees EOF next
    finally:
        direct.close()


def _retire(slot: _Slot, wait: float = 0.0) -> None:
    """Close a slot's socket (its shim then cleans up and exits); optionally wait for that."""
    try:
        pidfd = os.pidfd_open(slot.pid) if wait else -1
    except OSError:
        pidfd = -1
    slot.sock.close()
    if pidfd >= 0:
        select.select([pidfd], [], [], wait)
        os.close(pidfd)


def main(fd: int, opts_json: str) -> None:
    """Zygote process body."""
    from . import init, linux, supervisor  # noqa: F401 - imported (warmed up) before the first fork

    opts = json.loads(opts_json)
    if "caps" in opts:  # the default containers' filter, built once here and shared by every fork
        try:
            init.seccomp_program(opts["caps"], True)
        except ValueError:
            pass  # an architecture without a profile: each start reports it
    try:  # the agent protects itself from the OOM killer; its containers must not inherit that
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
            handle.write("0")
    except OSError:
        pass
    nice = opts.get("nice")
    if isinstance(nice, int) and nice != os.getpriority(os.PRIO_PROCESS, 0):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:  # not root: lowering nice is not allowed
            pass
    linux.boot_id()
    parent = None
    if opts.get("cgroup_slot"):  # v1: every slot makes its container's cgroup ahead (supervisor.py)
        from .cgroups import CgroupLayout, CgroupManager, remove_stale_slots

        slot_opts = opts["cgroup_slot"]
        parent = CgroupManager(slot_opts["parent"], CgroupLayout(1, tuple(map(tuple, slot_opts["v1_mounts"]))))
        remove_stale_slots(parent.layout, parent.parent)
    os.set_inheritable(fd, False)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are reaped automatically
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    linux.set_process_name("cantainer-zyg")
    sock = socket.socket(fileno=fd)
    gc.collect()
    gc.freeze()  # forks share the heap; keep the collector from touching (copying) its pages
    refill_max = float(opts.get("refill_max", REFILL_MAX))
    warm: _Slot | None = None
    refill_at = 0.0
    failures = 0
    starting: list[_Slot] = []  # slots whose container is being started (their shim holds the socket)
    while True:
        if warm is None and (not starting or time.monotonic() >= refill_at):
            delay = refill_at - time.monotonic()
            if delay <= 0:
                try:
                    warm = _spawn_slot(sock, opts, parent, stale=failures > 0)
                    _offer(sock, warm)
                except OSError:
                    failures += 1
                    refill_at = time.monotonic() + min(5.0, 0.05 * 2 ** failures)
                continue
        timeout = None if warm is not None else max(0.0, refill_at - time.monotonic())
        watched = [sock, *([warm.sock] if warm is not None else []), *[slot.sock for slot in starting]]
        readable = select.select(watched, [], [], timeout)[0]
        done = [slot for slot in starting if slot.sock in readable]
        if warm is not None and warm.sock in readable:
            try:
                note = warm.sock.recv(16)
            except OSError:
                note = b""
            if note == TAKEN:  # the agent started a container on it directly: refill once that is over
                starting.append(warm)
                refill_at = time.monotonic() + refill_max
                failures = 0
            else:  # the warm shim died before any request (e.g. its init could not be prepared)
                warm.sock.close()
                failures += 1
                refill_at = time.monotonic() + min(5.0, 0.05 * 2 ** failures)
            warm = None
        for slot in done:  # started (or failed): its shim closed the socket
            starting.remove(slot)
            slot.sock.close()
        if done and not starting:
            refill_at = 0.0
        if sock not in readable:
            continue
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 4, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            continue
        except OSError:
            break
        if not message:
            for extra in fds:
                os.close(extra)
            break
        if not fds:
            continue
        chan = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        delivered = False
        for _attempt in (0, 1):  # a fresh slot: the warm one is the agent's (offered), maybe in use
            slot = None
            try:
                slot = _spawn_slot(sock, opts, parent, stale=failures > 0, offered=False)
                socket.send_fds(slot.sock, [message], [chan])
                delivered = True
            except OSError as exc:
                error = exc
            if delivered:
                starting.append(slot)
                break
            if slot is not None:
                slot.sock.close()
        if not delivered:
            try:
                os.write(chan, json.dumps({"event": "error", "message": f"zygote: {error}"}).encode())
            except OSError:
                pass
        os.close(chan)
    for slot in starting:
        slot.sock.close()
    if warm is not None:
        _retire(warm, wait=2.0)
    if parent is not None and failures:  # a warm shim died: its slot's cgroup may still be there
        from .cgroups import remove_stale_slots

        remove_stale_slots(parent.layout, parent.parent)
    os._exit(0)


class Zygote:
    """Agent-side handle: spawns the zygote lazily and re-spawns it if it died."""

    def __init__(self, python: str | None = None, options: "dict | Callable[[], dict] | None" = None):
        """*options* (or a function returning them, called at spawn): what warm slots prepare ahead
        of a request — {"prefork_init": bool (cgroup v1), "caps": the default capability mask (its
        seccomp filter is built once, before the first fork), "cap_last": int, "refill_max": seconds
        (REFILL_MAX; tests), "cgroup_slot": {"v1_mounts": [[controller, mount], …], "parent": str,
        "pids": the default pids limit} (cgroup v1: each slot's cgroup, made ahead)}."""
        import threading  # noqa: PLC0415 - agent side only; the zygote process stays lean

        self.python = python or sys.executable
        self.options = options
        # The zygote may be (re)spawned from any agent thread, e.g. the reconcile loop's, which
        # runs at a lower CPU priority: the zygote (and every container after it) takes this one.
        self._nice = os.getpriority(os.PRIO_PROCESS, 0)
        self._lock = threading.Lock()
        self._proc = None  # subprocess.Popen
        self._sock: socket.socket | None = None
        self._offer: socket.socket | None = None  # a way straight to the zygote's warm shim

    def _options(self) -> dict:
        opts = dict((self.options() if callable(self.options) else self.options) or {})
        opts.setdefault("nice", self._nice)
        return opts

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _spawn(self) -> None:
        import subprocess  # noqa: PLC0415

        self._close_locked()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [
                    self.python,
                    "-I",
                    "-S",
                    "-c",
                    _BOOT,
                    package_root(),
                    str(theirs.fileno()),
                    json.dumps(self._options()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours

    def running(self) -> bool:
        """True while the zygote process this handle spawned is alive."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    def ensure(self, offer_timeout: float = 0.0) -> None:
        """Spawn the zygote if it is not running; wait up to *offer_timeout* seconds until it has
        offered its first warm slot (a start then goes straight to that shim)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()
            deadline = time.monotonic() + offer_timeout
            while self._offer is None and self._sock is not None:
                self._offer = self._take_offer_locked()
                remaining = deadline - time.monotonic()
                if self._offer is not None or remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                    break
                self._offer = self._take_offer_locked()
                if self._offer is None:
                    break  # readable, yet no offer: the zygote is gone (the next request respawns it)

    def request(self, payload: dict) -> socket.socket:
        """Send a start request; return the agent's end of the new container's channel."""
        data = json.dumps(payload).encode()
        if len(data) > MAX_REQUEST:
            raise ValueError(f"start request too large ({len(data)} bytes)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                for attempt in (0, 1):
                    if self._proc is None or self._proc.poll() is not None:
                        self._spawn()
                    offer = self._take_offer_locked()
                    if offer is not None:  # straight to the warm shim
                        try:
                            socket.send_fds(offer, [data], [theirs.fileno()])
                            break
                        except OSError:
                            pass  # that shim is gone: through the zygote, which forks a fresh one
                        finally:
                            offer.close()
                    try:
                        socket.send_fds(self._sock, [data], [theirs.fileno()])
                        break
                    except (BrokenPipeError, ConnectionResetError):
                        if attempt:
                            raise
                        self._close_locked()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def _take_offer_locked(self) -> socket.socket | None:
        """The newest warm slot the zygote offered since the last request (older ones are dropped:
        their shims are gone), or None."""
        while self._sock is not None:
            try:  # (socket.recv_fds ignores its flags before Python 3.12)
                message, ancillary, _flags, _addr = self._sock.recvmsg(
                    64, socket.CMSG_SPACE(_INT_SIZE), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except OSError:  # BlockingIOError: no offer waiting
                break
            if not message:
                break  # the zygote is gone: the send to it says so
            fds = [int.from_bytes(data[i:i + _INT_SIZE], sys.byteorder, signed=True)
                   for level, kind, data in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for i in range(0, len(data) - len(data) % _INT_SIZE, _INT_SIZE)]
            for fd in fds:
                if self._offer is not None:
                    self._offer.close()
                self._offer = socket.socket(fileno=fd)
        offer, self._offer = self._offer, None
        return offer

    def _close_locked(self) -> None:
        import subprocess  # noqa: PLC0415

        if self._offer is not None:
            self._offer.close()
            self._offer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the zygote (running containers are unaffected)."""
        with self._lock:
            self._close_locked()
