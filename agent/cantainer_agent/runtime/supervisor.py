"""The per-container supervisor ("shim"): forked from the zygote, parent of the container's init.

Both are forked *before* their request arrives (a warm slot, zygote.py): the shim is already in its
session and PID namespace; on cgroup v1 the init is forked too and prepared (init.prepare_init); on
v2 the init is forked at request time with clone3(CLONE_INTO_CGROUP). Over the per-container channel
the shim reports ``ready`` (init waits before execve), takes ``go`` / ``abort`` (EOF: the agent is
gone, init is killed), then ``started`` or ``error``. After ``started`` it needs nobody: it copies
the container's output to the log (logfile.py) and attached clients (attach.py), reaps init and
records exit.json (exit code, 128+signal, OOM kill). The protocol in full: docs/design/runtime.md.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time

from . import linux, users
from .attach import ATTACH_WAIT, hold_for_attach, listen, output_frame, relay
from .cgroups import Cgroup, CgroupError, CgroupLayout, CgroupManager, apply_plan, prepare_slot
from .init import container_init, join_cgroup, prepare_init
from .linux import (
    CLONE_NEWPID,
    write_all,
)
from .logfile import LogFile
from .records import write_json as _write_json


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _send(chan: socket.socket | None, message: dict) -> None:
    if chan is None:
        return
    try:
        chan.send(json.dumps(message).encode())
    except OSError:
        pass  # the agent is gone; we carry on without it


def _exit_code(status: int) -> tuple[int, int | None]:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return 128 - code, -code
    return code, None


def _fork_into(directory: str | None) -> tuple[int, bool]:
    """fork(); on cgroup v2 straight into *directory*. Returns (pid, born in the cgroup)."""
    if directory:
        try:
            cgroup_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            cgroup_fd = -1
        if cgroup_fd >= 0:
            try:
                pid = linux.fork_into_cgroup(cgroup_fd)
            except OSError:
                pid = -1  # e.g. kernel < 5.7: fall back to joining via cgroup.procs
            os.close(cgroup_fd)  # in the child too: a host directory must not stay open in init (CVE-2024-21626)
            if pid == 0:
                return 0, True
            if pid > 0:
                return pid, True
    return os.fork(), False


def _v1_layout(options: dict) -> CgroupLayout:
    return CgroupLayout(1, tuple((controller, mount) for controller, mount in options["v1_mounts"]))


def _abandon(pid: int, code: int, cgroup: Cgroup | None = None) -> None:
    """Kill the prepared init (if any), delete the slot's cgroup (if still ours) and exit."""
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    if cgroup is not None:
        try:
            cgroup.remove(timeout=1.0)
        except CgroupError:
            pass
    os._exit(code)


def _copy_to_log(sources: dict[int, str], log: LogFile) -> None:
    """Copy the container's stdout and stderr pipes to the log, each record tagged, until both end."""
    poller = select.poll()
    for fd in sources:
        poller.register(fd, select.POLLIN)
    while sources:
        for fd, _events in poller.poll():
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if data:
                log.write(data, sources[fd])
            else:
                poller.unregister(fd)
                os.close(fd)
                del sources[fd]


def _oom_kills(memory_dir: str, version: int) -> int:
    """Like cgroups.oom_kill_count, without importing that module into the zygote."""
    try:
        with open(os.path.join(memory_dir, "memory.oom_control" if version == 1 else "memory.events"), "rb") as handle:
            for line in handle.read().splitlines():
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


SLOT_FD = 3
DIRECT_FD = 4
TAKEN = b"T"  # to the zygote (zygote.TAKEN): a request came straight from the agent
WARM = b"W"  # a prepared init's first status byte: it tried to join the slot's cgroup (see _warm_init)
# Shaped like a start request (container.py; a test keeps the keys in step): see _rehearse.
REHEARSAL_REQUEST = {
    "op": "start", "id": "c", "hostname": "c", "argv": ["/bin/true"], "env": {"PATH": "/bin", "HOME": "/"},
    "workdir": "/", "lower": "/l", "user": "", "upper": "/u", "work": "/w", "rootfs": "/r",
    "cgroup_join": ["/g"], "memory_cgroup": "/g", "cgroup_v2_dir": None, "cgroup_version": 1, "caps": 1,
    "cap_last": 40, "seccomp": True, "wait_for_go": False, "log": "/l", "log_max": 1, "pids_file": "/p",
    "exit_file": "/e", "tty": False, "stdin": False, "attach_sock": None, "attach_wait": 10.0, "mounts": [],
    "protected": ["/p"], "cgroup_slot": {"relpath": "p/c", "plan": [["/g", "1", True, "pids"]],
                                         "v1_mounts": [["pids", "/g"]], "pids": 1},
}


def _rehearse(init: bool) -> None:
    """Run, while the slot is warm, code its start runs first — the JSON codec, and in init the user
    lookup — on sample data, without effect. A forked child copies each page in which it changes a
    reference count (copy-on-write: ~4 µs a page on this VM); some 200 such faults per process fell
    on the start's path."""
    json.loads(json.dumps({**REHEARSAL_REQUEST, "event": "started", "started_at": 1.5, "pid": 1}))
    if init:
        users.resolve("", "root:x:0:0:root:/root:/bin/sh\n", "root:x:0:root\nwheel:x:10:root\n")
EXEC_FAILURE_CODES = {b"N": 127, b"X": 126}  # init's markers (init.py): the command not found / not executable


class _CommandError(RuntimeError):
    def __init__(self, message: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_shim(slot_fd: int, opts: dict, direct_fd: int = -1) -> None:
    """Body of a shim, forked by the zygote *before* its request arrives. Never returns.

    Warm phase: own session, pipes, a new PID namespace and — on cgroup v1 — the slot's cgroup
    (``cgroups.prepare_slot``: device list, default pids limit) with the container's init already
    forked, prepared (``prepare_init``) and in it. Then wait on the slot socket for the request (+
    the agent's channel); EOF means the zygote is gone: clean up. The request comes from the zygote
    or — the usual way — straight from the agent on *direct_fd* (zygote.py: the slot was offered);
    then the zygote hears "taken". A request renames the slot's cgroup to the container's and writes
    its limits (``cgroup_slot``) before init goes on.
    """
    os.dup2(slot_fd, SLOT_FD)
    if direct_fd >= 0:
        os.dup2(direct_fd, DIRECT_FD)
    os.closerange(DIRECT_FD + 1 if direct_fd >= 0 else SLOT_FD + 1, 1 << 30)  # the zygote's socket, the rest
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote ignores it to auto-reap us
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
                signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    os.setsid()  # not in the agent's session or process group: survives it
    devnull = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    os.close(devnull)
    linux.set_process_name("cshim-warm")
    slot = socket.socket(fileno=SLOT_FD)
    slot.set_inheritable(False)
    direct = socket.socket(fileno=DIRECT_FD) if direct_fd >= 0 else None
    if direct is not None:
        direct.set_inheritable(False)
    pid = 0
    slot_cgroup = None  # v1: made ahead for this slot; None once it is the container's (renamed)
    try:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        go_r, go_w = os.pipe()
        req_r, req_w = os.pipe()
        in_r, in_w = os.pipe()  # stdin (used by "stdin" containers without a tty)
        tty_shim, tty_init = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # pty master
        linux.unshare(CLONE_NEWPID)
        slot_opts = opts.get("cgroup_slot")
        if slot_opts:
            try:
                slot_cgroup = prepare_slot(_v1_layout(slot_opts), slot_opts["parent"], os.getpid(), slot_opts["pids"])
            except (OSError, CgroupError):
                pass  # the request's cgroup is made when it comes (and a failure then reported)
        if opts.get("prefork_init"):
            pid = os.fork()
            if pid == 0:
                try:  # never back into the shim's code below, whatever happens
                    for fd in (slot.detach(), out_r, err_r, status_r, go_w, req_w, in_w, tty_shim.detach()):
                        os.close(fd)
                    if direct is not None:
                        direct.close()
                    _warm_init(opts, req_r, (out_w, err_w), status_w, go_r, in_r, tty_init.detach(),
                               slot_cgroup.join_files if slot_cgroup is not None else None)
                finally:
                    os._exit(127)
            os.close(req_r)
            if slot_cgroup is not None and os.read(status_r, 1) != WARM:  # init is in it (or failed to be)
                raise RuntimeError("the prepared init died")
        else:
            os.close(req_r)
            os.close(req_w)
    except BaseException:  # noqa: BLE001 - a broken slot: the zygote falls back to a fresh one
        _abandon(pid, 1, slot_cgroup)
    _rehearse(init=False)
    # Our start time and the prepared init's are known now: read /proc here, not on the start's path.
    starts = (linux.proc_start_time(os.getpid()), linux.proc_start_time(pid) if pid else None)

    # -- wait for the request (or for our prepared init to die, or the zygote to go away)
    poller = select.poll()
    poller.register(slot.fileno(), select.POLLIN)
    if direct is not None:
        poller.register(direct.fileno(), select.POLLIN)
    init_fd = os.pidfd_open(pid) if pid else -1
    if init_fd >= 0:
        poller.register(init_fd, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if init_fd >= 0 and init_fd in events:
            _abandon(pid, 1, slot_cgroup)
        source = direct if direct is not None and direct.fileno() in events else slot
        if source is slot and slot.fileno() not in events:
            continue
        break
    try:  # (EOF on the direct way: the agent dropped it — this slot is done, the zygote makes another)
        message, fds, _flags, _addr = socket.recv_fds(source, 1 << 18, 1, socket.MSG_CMSG_CLOEXEC)
    except OSError:
        message, fds = b"", []
    if init_fd >= 0:
        os.close(init_fd)
    if direct is not None:
        direct.close()
    if not message or not fds:
        for fd in fds:
            os.close(fd)
        _abandon(pid, 0, slot_cgroup)
    if source is not slot:
        try:
            slot.send(TAKEN)  # the zygote prepares the next slot once this start is over
        except OSError:
            pass
    chan = socket.socket(fileno=fds[0])
    try:
        req = json.loads(message)
    except ValueError as exc:
        _send(chan, {"event": "error", "message": f"bad request: {exc}"})
        _abandon(pid, 1, slot_cgroup)
    claim = req.get("cgroup_slot")
    if claim is not None or slot_cgroup is not None:  # (init is in the slot's: a claim is required)
        try:  # the slot's cgroup becomes the container's before init goes on
            if slot_cgroup is not None:
                slot_cgroup.rename(claim["relpath"])
                slot_cgroup = None  # the container's now: the agent removes it (also if the start fails)
            else:  # this slot has none (it could not make one, or was not asked to): made now, init joins it
                layout = _v1_layout(claim)
                CgroupManager(claim["relpath"].rpartition("/")[0], layout).cap_parent()
                prepare_slot(layout, claim["relpath"], None, claim["pids"])
            apply_plan(claim["plan"])
        except (OSError, CgroupError, KeyError, TypeError, ValueError) as exc:
            _send(chan, {"event": "error", "message": f"cannot set up the container's cgroup: {exc}"})
            _abandon(pid, 1, slot_cgroup)
    if pid:  # the waiting init takes it from here
        try:
            write_all(req_w, message)
        except OSError:
            pass  # init died: reported below through the status pipe
        os.close(req_w)
    linux.set_process_name(f"cshim-{req.get('id', '')}")
    _supervise(req, chan, pid, (out_r, out_w, err_r, err_w), (status_r, status_w), (go_r, go_w), (in_r, in_w),
               (tty_shim, tty_init), slot, starts)


def _supervise(
    req: dict,
    chan: socket.socket,
    pid: int,
    out: tuple[int, int, int, int],
    status: tuple[int, int],
    go: tuple[int, int],
    stdin: tuple[int, int],
    tty_pair: tuple[socket.socket, socket.socket | None],
    slot: socket.socket | None = None,
    starts: tuple[int | None, int | None] = (None, None),
) -> None:
    """The shim once it has its request; *pid* is the prepared init (already given the request) or 0.
    *out* is (stdout read, write, stderr read, write): the two streams stay apart in the log.
    *slot* (the zygote's socket) is closed once the start is over: the zygote then prepares the
    next warm slot (zygote.REFILL_MAX). *starts*: the /proc start times of this shim and of the
    prepared init, read while the slot was warm (None: read them now)."""
    out_r, out_w, err_r, err_w = out
    status_r, status_w = status
    go_r, go_w = go
    in_r, in_w = stdin
    tty_shim, tty_init = tty_pair
    tty = bool(req.get("tty"))
    attach_path = req.get("attach_sock")
    master = -1
    listener = None
    try:
        if not pid:
            pid, in_cgroup = _fork_into(req.get("cgroup_v2_dir"))
            if pid == 0:
                for fd in (chan.detach(), out_r, err_r, status_r, go_w, in_w, tty_shim.detach()):
                    os.close(fd)
                if slot is not None:
                    slot.close()
                container_init(req, out_w, status_w, go_r, in_cgroup, False, in_r, tty_init.detach(), err_w)
                os._exit(127)  # not reached
        for fd in (out_w, err_w, status_w, go_r, in_r):
            os.close(fd)
        if tty_init is not None:
            tty_init.close()
        if not (req.get("stdin") and not tty):
            os.close(in_w)
            in_w = -1
        shim_start, init_start = starts
        identity = {"pid": pid, "pid_start": init_start if init_start is not None else linux.proc_start_time(pid),
                    "shim_pid": os.getpid(),
                    "shim_start": shim_start if shim_start is not None else linux.proc_start_time(os.getpid())}
        log = LogFile(req["log"], req.get("log_max", 0))

        first = os.read(status_r, 1)
        if first != b"R":
            detail = _read_to_eof(status_r).decode("utf-8", "replace") if first == b"E" else ""
            _, wstatus = os.waitpid(pid, 0)
            raise RuntimeError(detail or f"container init died during setup (exit status {_exit_code(wstatus)[0]})")
        if tty:
            _msg, fds, _flags, _addr = socket.recv_fds(tty_shim, 16, 1, socket.MSG_CMSG_CLOEXEC)
            if not fds:
                raise RuntimeError("cannot allocate a terminal: no pty master from the container")
            master = fds[0]
        tty_shim.close()
        if attach_path:
            listener = listen(attach_path)
        promised = None
        if req.get("wait_for_go", True):
            _send(chan, {"event": "ready", **identity})
            try:
                reply = json.loads(chan.recv(65536) or b"{}")
            except (OSError, ValueError):
                reply = {}
            if reply.get("op") != "go":
                _abandon(pid, 0)  # the cgroup is the container's now: the agent removes it
            promised = reply.get("started_at")  # the start time the agent recorded in raft, if it did
            if listener is None:
                os.write(go_w, b"G")
        if listener is None:
            os.close(go_w)
            result = _read_to_eof(status_r)  # EOF without data: execve closed the close-on-exec pipe
            os.close(status_r)
            if result:
                os.waitpid(pid, 0)
                raise _CommandError(result[1:].decode("utf-8", "replace") or "container init failed",
                                    EXEC_FAILURE_CODES.get(result[:1]))
        started_at = promised if type(promised) is float else time.time()
        _write_json(req["pids_file"], {"boot_id": linux.boot_id(), **identity, "started_at": started_at},
                    durable=False)
        _send(chan, {"event": "started", "started_at": started_at, **identity})
    except BaseException as exc:  # noqa: BLE001
        _send(chan, {"event": "error", "message": str(exc) or type(exc).__name__,
                     "exit_code": getattr(exc, "exit_code", None)})
        _abandon(pid, 1)
    chan.close()
    if slot is not None:
        slot.close()  # the start is over: the zygote may prepare the next slot now

    if listener is None:
        _copy_to_log({out_r: "stdout", err_r: "stderr"}, log)
    else:
        sources = {master: "stdout"} if tty else {out_r: "stdout", err_r: "stderr"}
        if tty:  # one terminal: both streams are on it
            os.close(out_r)
            os.close(err_r)
        clients = hold_for_attach(pid, listener, master, req.get("attach_wait", ATTACH_WAIT))
        try:
            os.write(go_w, b"G")
        except OSError:
            pass  # init died while held (e.g. stop): recorded below like any exit
        os.close(go_w)
        result = _read_to_eof(status_r)
        os.close(status_r)
        if result:  # execve failed: no one else will say why
            message = (result[1:].decode("utf-8", "replace") or "container init failed").encode()
            message = b"cantainer: " + message + (b"\r\n" if tty else b"\n")
            stream = "stdout" if tty else "stderr"
            log.write(message, stream)
            for client in clients:
                client.queue(output_frame(stream, message))
        relay(sources, master if tty and req.get("stdin") else in_w, master, log, listener, clients)
        listener.close()
        try:
            os.unlink(attach_path)
        except OSError:
            pass
    _, wstatus = os.waitpid(pid, 0)
    finished_at = time.time()
    code, sig = _exit_code(wstatus)
    memory = req.get("memory_cgroup")
    oom = bool(memory) and _oom_kills(memory, req["cgroup_version"]) > 0
    try:  # not fsync'd (records.write_json says why); the exit also goes to raft, durably
        _write_json(req["exit_file"], {"exit_code": code, "signal": sig, "oom_killed": oom,
                                       "started_at": started_at, "finished_at": finished_at})
    except OSError:
        pass
    os._exit(0)


def _warm_init(opts: dict, req_r: int, out: tuple[int, int], status_w: int, go_r: int, in_r: int,
               tty_sock: int, join: list[str] | None = None) -> None:
    """A prepared container init waiting for its request, in the slot's cgroup if *join* names it
    (v1: writing "0" to its ``tasks`` files moves only this thread, cheap). Never returns."""
    failure = None
    try:
        prepare_init()
    except BaseException as exc:  # noqa: BLE001 - reported once the request (and a channel) exists
        failure = f"cannot create namespaces: {exc}"
    _rehearse(init=True)
    if join:
        if failure is None:
            try:
                join_cgroup(join)
            except OSError as exc:
                failure = f"cannot join the cgroup: {exc}"
        try:
            os.write(status_w, WARM)  # the shim renames the cgroup at the request only after this
        except OSError:
            os._exit(0)  # the shim is gone
    data = _read_to_eof(req_r)
    os.close(req_r)
    if not data:
        os._exit(0)  # the slot was abandoned
    if failure:
        try:
            os.write(status_w, b"E" + failure.encode())
        finally:
            os._exit(127)
    container_init(json.loads(data), out[0], status_w, go_r, bool(join), True, in_r, tty_sock, out[1])
