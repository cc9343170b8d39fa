"""Code that runs in processes forked from the zygote: the per-container shim and the container init.

Process tree of one container (host PID namespace on the left)::

    zygote ──fork──> shim (setsid; unshare(NEWPID)) ──fork──> init = PID 1 of the container
                      │  holds the log pipe, waits,                (cgroup, namespaces, overlay,
                      │  writes pids.json + exit.json              pivot_root, /proc /dev /sys,
                      │                                            hostname, caps, no_new_privs, execve)

Both are forked *before* their request arrives (a "warm slot", see zygote.py): the shim is already
in its session and PID namespace; on cgroup v1 the init is already forked too and has done
``prepare_init`` (UTS/IPC/net namespaces, signal dispositions, no_new_privs, bounding set). On
cgroup v2 the init is forked at request time with clone3(CLONE_INTO_CGROUP), born in its cgroup.

Start protocol over the per-container channel (a SOCK_SEQPACKET socket the agent sent along with the
request; JSON messages). With a ``before_exec`` hook (``wait_for_go``)::

    shim -> agent  {"event": "ready", "pid", "pid_start", "shim_pid", "shim_start"}
                   namespaces and rootfs are ready; init waits on a pipe before execve
    agent -> shim  {"op": "go"}        after the agent's before_exec(pid) hook
                   {"op": "abort"} or EOF (agent gone): the shim kills init and exits
    shim -> agent  {"event": "started", "started_at", "pid", ...}   execve succeeded (seen as EOF
                   on a close-on-exec pipe), or {"event": "error", "message"} at any step

Without a hook only "started" (or "error") is sent. After "started" the shim no longer needs the
agent: it copies the container's stdout+stderr to the log file (rotated at ``log_max`` bytes, one old
file kept), reaps init, records exit.json (exit code, 128+signal for a signal, oom_killed) and
exits. Both processes are plain forks of the zygote interpreter: no new Python start per container.

Attach (``tty`` and/or ``stdin`` containers, the request has ``attach_sock``): the shim listens on
that unix socket and sends "started" *before* letting init execve; it then holds init until the
first client connects (its window-size frame is applied first) or ``attach_wait`` passes, so the
client sees everything from the first byte. Then: output (pty master or pipe) -> log + every
client; client frames (``encode_frame``: data / window size / stdin EOF) -> the pty master or the
stdin pipe. A failed execve is written to the log and the clients (exit 127 in exit.json).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import select
import signal
import socket
import stat
import struct
import termios
import time

from . import linux
from .state import write_json as _write_json
from .linux import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
)

CONTAINER_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP

# docker's /proc and /sys hardening (moby oci/defaults.go)
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEVICES = (  # name, major, minor (mode 0666)
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
)
DEV_SYMLINKS = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"),
)


# -- container init ------------------------------------------------------------------------------
def _ensure_dir(path: str, mode: int = 0o755) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass


def setup_rootfs(req: dict) -> None:
    """Mount the container's filesystem tree and make it the root. Runs in the new mount namespace."""
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do propagates back to the host
    root = req["rootfs"]
    linux.mount("overlay", root, "overlay", MS_NODEV,
                f"lowerdir={req['lower']},upperdir={req['upper']},workdir={req['work']}")

    # runc's pivot_root: no temporary directory needed, the old root is stacked and detached
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount2(".", MNT_DETACH)
    os.chdir("/")

    _ensure_dir("/proc")
    linux.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    _ensure_dir("/dev")
    linux.mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, target in DEV_SYMLINKS:
        os.symlink(target, f"/dev/{name}")
    for name, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o1777)):
        os.mkdir(f"/dev/{name}", mode)
    linux.mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    linux.mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    linux.mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    _ensure_dir("/sys")
    linux.mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)

    for path in MASKED_PATHS:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            linux.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        else:
            linux.mount("/dev/null", path, None, MS_BIND)
    for path in READONLY_PATHS:
        if os.path.exists(path):
            linux.mount(path, path, None, MS_BIND | MS_REC)
            linux.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _reset_signals() -> None:
    """Default disposition for every signal (ignored ones survive execve), nothing blocked."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_command(argv: list[str], env: dict[str, str], caps: int, cap_last: int | None = None) -> None:
    """Last steps before becoming the user's command (used by exec; start uses its warm variant)."""
    os.umask(0o022)
    _reset_signals()
    linux.set_no_new_privs()
    linux.drop_capabilities(caps, cap_last)
    os.execvpe(argv[0], argv, env)


def describe_exec_error(argv0: str, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{argv0}: executable file not found"
    if isinstance(exc, PermissionError):
        return f"{argv0}: permission denied"
    if isinstance(exc, OSError):
        return f"{argv0}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def join_cgroup(files: list[str]) -> None:
    """Move the calling process into a cgroup by writing "0" (= the writer) to each file."""
    for path in files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def prepare_init(caps: int, cap_last: int | None) -> None:
    """The part of init that does not depend on the request: done ahead of time in a warm slot.

    The mount namespace is *not* created here: a copy made now could miss mounts the host makes
    before the request (e.g. the image store). Dropping the bounding set and setting
    no_new_privs only matter at execve; our current privileges (mounts) are unaffected.
    """
    linux.unshare(CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)
    _reset_signals()
    linux.set_no_new_privs()
    linux.drop_bounding_set(caps, cap_last)


def container_init(req: dict, out_w: int, status_w: int, go_r: int, in_cgroup: bool,
                   prepared_caps: int | None, in_r: int = -1, tty_sock: int = -1) -> None:
    """PID 1 of the container until execve. Never returns.

    *prepared_caps* is the capability mask ``prepare_init`` already ran with, or None. *in_r* is
    the read end of the stdin pipe (used with ``stdin`` and no ``tty``); *tty_sock* the socket on
    which the pty master goes to the shim (with ``tty``).
    """
    step = "set up stdio"
    tty = bool(req.get("tty"))
    try:
        gc.disable()
        if not tty:
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            if req.get("stdin") and in_r >= 0:
                os.dup2(in_r, 0)
        os.close(out_w)
        if in_r >= 0:
            os.close(in_r)
        os.umask(0)
        if prepared_caps is None:
            step = "create namespaces"
            prepare_init(req["caps"], req.get("cap_last"))
        elif prepared_caps != req["caps"]:
            linux.drop_bounding_set(req["caps"], req.get("cap_last"))
        if not in_cgroup:
            step = "join the cgroup"
            join_cgroup(req["cgroup_join"])
        step = "create namespaces"
        linux.unshare(CLONE_NEWNS | CLONE_NEWCGROUP)  # cgroup ns after joining: its root is our cgroup
        step = "set up the root filesystem"
        setup_rootfs(req)
        step = "set the hostname"
        socket.sethostname(req["hostname"])
        step = f"enter the working directory {req['workdir']}"
        try:
            os.chdir(req["workdir"])
        except FileNotFoundError:
            os.makedirs(req["workdir"], 0o755)
            os.chdir(req["workdir"])
        if tty:
            # Like runc: the pty comes from the container's own devpts (/dev/ptmx -> pts/ptmx), so
            # `tty` inside names a device that exists there; the master goes to the shim.
            step = "allocate a terminal"
            master, slave = os.openpty()
            with socket.socket(fileno=tty_sock) as sock:
                socket.send_fds(sock, [b"M"], [master])
            os.close(master)
            for target in (0, 1, 2):
                os.dup2(slave, target)
            os.close(slave)
        os.write(status_w, b"R")
        if (req.get("wait_for_go", True) or req.get("attach_sock")) and os.read(go_r, 1) != b"G":
            os._exit(1)
        os.setsid()
        if tty:
            step = "set the controlling terminal"
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.umask(0o022)
        step = "drop capabilities"
        linux.set_capabilities(req["caps"])
        step = "execute the command"
        argv = req["argv"]
        os.execvpe(argv[0], argv, req["env"])
        raise OSError(errno.ENOEXEC, "execve returned")
    except BaseException as exc:  # noqa: BLE001 - report whatever it is, then die
        if step == "execute the command":
            message = describe_exec_error(req["argv"][0], exc)
        else:
            message = f"cannot {step}: {exc}"
        try:
            os.write(status_w, b"E" + message.encode("utf-8", "replace")[:3000])
        except OSError:
            pass
    os._exit(127)


# -- the shim ------------------------------------------------------------------------------------
def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


class _Log:
    """Append-only log with one rotation: <path> grows to *limit* bytes, then becomes <path>.1."""

    def __init__(self, path: str, limit: int):
        self.path, self.limit = path, limit
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        try:
            _write_all(self.fd, data)
            self.size += len(data)
            if self.limit and self.size >= self.limit:
                os.replace(self.path, self.path + ".1")
                os.close(self.fd)
                self._open()
        except OSError:
            pass  # a full disk must not block the container: drop output rather than stall it


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
            if pid == 0:
                return 0, True
            os.close(cgroup_fd)
            if pid > 0:
                return pid, True
    return os.fork(), False


def _kill_and_exit(pid: int, code: int) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    os._exit(code)


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

# -- attach --------------------------------------------------------------------------------------
ATTACH_WAIT = 10.0  # seconds an attachable container is held before execve waiting for a client
FRAME_DATA, FRAME_WINSIZE, FRAME_EOF = 0x64, 0x77, 0x65  # b"d" b"w" b"e"
MAX_FRAME = 1 << 16
CLIENT_BUFFER = 4 << 20  # output queued for a client that does not read; beyond it, it is dropped
STDIN_BUFFER = 1 << 16  # input queued for the container; beyond it, clients are not read


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    """Client -> shim message: 1 byte type, 4 bytes big-endian length, payload."""
    return bytes((kind,)) + len(payload).to_bytes(4, "big") + payload


def encode_winsize(rows: int, cols: int) -> bytes:
    return encode_frame(FRAME_WINSIZE, struct.pack("!HH", rows, cols))


def unix_address(path: str) -> tuple[str, int]:
    """(address usable for bind/connect, fd to close or -1): paths beyond sun_path's 108 bytes go
    through /proc/self/fd/<dir fd>/<name>."""
    if len(path.encode()) < 100:
        return path, -1
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dfd}/{os.path.basename(path)}", dfd


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, dfd = unix_address(path)
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            listener.bind(address)  # mode 0600: root only (the run dir is 0700 too)
        finally:
            os.umask(old)
        listener.listen(8)
    finally:
        if dfd >= 0:
            os.close(dfd)
    listener.setblocking(False)
    return listener


class _Client:
    """One attached client: framed input in, raw output out (non-blocking)."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.sent_input = False
        self.dead = False

    def queue(self, data: bytes) -> None:
        if self.dead:
            return
        if not self.outbuf:
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                pass
            except OSError:
                self.dead = True
                return
        self.outbuf += data
        if len(self.outbuf) > CLIENT_BUFFER:
            self.dead = True

    def flush(self) -> None:
        try:
            del self.outbuf[:self.sock.send(self.outbuf)]
        except BlockingIOError:
            pass
        except OSError:
            self.dead = True

    def frames(self):
        """Read what is available; yield complete (type, payload) frames. Sets ``dead`` on EOF."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.dead = True
            return
        self.inbuf += data
        yield from self.parsed()

    def parsed(self):
        """Complete frames in the input buffer (the rest stays)."""
        while len(self.inbuf) >= 5:
            size = int.from_bytes(self.inbuf[1:5], "big")
            if size > MAX_FRAME:
                self.dead = True
                return
            if len(self.inbuf) < 5 + size:
                return
            kind, payload = self.inbuf[0], bytes(self.inbuf[5:5 + size])
            del self.inbuf[:5 + size]
            yield kind, payload


def _set_winsize(master: int, payload: bytes) -> None:
    if master >= 0 and len(payload) == 4:
        rows, cols = struct.unpack("!HH", payload)
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError:
            pass


def _hold_for_attach(pid: int, listener: socket.socket, master: int, wait: float) -> list[_Client]:
    """Before execve: wait up to *wait* s for the first client (so it sees the first output and the
    command starts with the client's window size); give up early if init dies."""
    clients: list[_Client] = []
    deadline = time.monotonic() + wait
    try:
        init_fd = os.pidfd_open(pid)
    except OSError:
        return clients
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return clients
            ready, _, _ = select.select([listener, init_fd], [], [], remaining)
            if init_fd in ready:
                return clients
            if listener in ready:
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                client = _Client(sock)
                clients.append(client)
                break
        if master >= 0:  # the client's first frame is its window size: apply it before execve
            pending: list[tuple[int, bytes]] = []
            limit = time.monotonic() + 1.0
            while not client.dead and time.monotonic() < limit:
                if not select.select([client.sock], [], [], max(0.0, limit - time.monotonic()))[0]:
                    break
                pending += list(client.frames())
                if any(kind == FRAME_WINSIZE for kind, _ in pending):
                    break
            for kind, payload in pending:
                if kind == FRAME_WINSIZE:
                    _set_winsize(master, payload)
            client.inbuf[:0] = b"".join(encode_frame(k, p) for k, p in pending if k != FRAME_WINSIZE)
        return [c for c in clients if not c.dead]
    finally:
        os.close(init_fd)


def _relay(source: int, stdin_fd: int, master: int, log: "_Log", listener: socket.socket,
           clients: list[_Client]) -> None:
    """Copy the container's output (pipe or pty master) to the log and every attached client, and
    the clients' input to its stdin (pipe or pty master), until the output ends."""
    os.set_blocking(source, False)
    if stdin_fd >= 0:
        os.set_blocking(stdin_fd, False)
    tty = master >= 0
    pending = bytearray()  # input for the container
    stdin_eof = False
    for client in clients:  # frames left over from the hold (input typed before execve)
        for kind, payload in client.parsed():
            stdin_eof = _handle(kind, payload, client, stdin_fd, master, pending) or stdin_eof
    while True:
        for client in clients:
            if client.dead:
                client.sock.close()
        clients[:] = [c for c in clients if not c.dead]
        if stdin_fd >= 0 and not tty and stdin_eof and not pending:
            os.close(stdin_fd)
            stdin_fd = -1
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        by_fd = {}
        for client in clients:
            mask = select.POLLIN if len(pending) < STDIN_BUFFER else 0
            if client.outbuf:
                mask |= select.POLLOUT
            poller.register(client.sock.fileno(), mask)
            by_fd[client.sock.fileno()] = client
        want_out = stdin_fd >= 0 and bool(pending)
        if stdin_fd >= 0 and stdin_fd != source and want_out:
            poller.register(stdin_fd, select.POLLOUT)
        poller.register(source, select.POLLIN | (select.POLLOUT if want_out and stdin_fd == source else 0))
        for fd, events in poller.poll():
            if fd == stdin_fd and events & (select.POLLOUT | select.POLLERR) and pending:
                try:
                    del pending[:os.write(stdin_fd, pending)]
                except BlockingIOError:
                    pass
                except OSError:  # the reader is gone
                    pending.clear()
                    if not tty:
                        os.close(stdin_fd)
                        stdin_fd = -1
            if fd == source and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = os.read(source, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: the last holder of the pty slave is gone
                    data = b""
                if not data:
                    for client in clients:
                        _drain(client)
                        client.sock.close()
                    return
                log.write(data)
                for client in clients:
                    client.queue(data)
            elif fd == listener.fileno():
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                clients.append(_Client(sock))
            elif fd in by_fd:
                client = by_fd[fd]
                if events & select.POLLOUT:
                    client.flush()
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    for kind, payload in client.frames():
                        stdin_eof = _handle(kind, payload, client, stdin_fd, master, pending) or stdin_eof
                    if client.dead and client.sent_input and not tty:
                        stdin_eof = True  # like docker's StdinOnce: the client's input ended
                if client.dead:
                    client.sock.close()


def _handle(kind: int, payload: bytes, client: _Client, stdin_fd: int, master: int, pending: bytearray) -> bool:
    """Apply one client frame; True if it ends the container's (pipe) stdin."""
    if kind == FRAME_DATA and stdin_fd >= 0:
        client.sent_input = True
        pending += payload
    elif kind == FRAME_WINSIZE:
        _set_winsize(master, payload)
    elif kind == FRAME_EOF:
        return stdin_fd >= 0 and master < 0
    return False


def _drain(client: _Client, timeout: float = 2.0) -> None:
    """Give a client its queued output before the shim exits (bounded)."""
    deadline = time.monotonic() + timeout
    while client.outbuf and not client.dead and time.monotonic() < deadline:
        select.select([], [client.sock], [], max(0.0, deadline - time.monotonic()))
        client.flush()


def run_shim(slot_fd: int, opts: dict) -> None:
    """Body of a shim, forked by the zygote *before* its request arrives. Never returns.

    Warm phase: own session, pipes, a new PID namespace and — where joining a cgroup later is
    cheap (v1) — the container's init already forked and prepared (``prepare_init``). Then wait on
    the slot socket for the request (+ the agent's channel); EOF means the zygote is gone: clean up.
    """
    os.dup2(slot_fd, SLOT_FD)
    os.closerange(SLOT_FD + 1, 1 << 30)  # zygote socket, any fd that came with the fork (close_range)
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
    pid = 0
    try:
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        go_r, go_w = os.pipe()
        req_r, req_w = os.pipe()
        in_r, in_w = os.pipe()  # stdin (used by "stdin" containers without a tty)
        tty_shim, tty_init = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # pty master
        linux.unshare(CLONE_NEWPID)
        if opts.get("prefork_init"):
            pid = os.fork()
            if pid == 0:
                for fd in (slot.detach(), out_r, status_r, go_w, req_w, in_w, tty_shim.detach()):
                    os.close(fd)
                _warm_init(opts, req_r, out_w, status_w, go_r, in_r, tty_init.detach())
            os.close(req_r)
        else:
            os.close(req_r)
            os.close(req_w)
    except BaseException:  # noqa: BLE001 - a broken slot: the zygote falls back to a fresh one
        _kill_and_exit(pid, 1)

    # -- wait for the request (or for our prepared init to die, or the zygote to go away)
    poller = select.poll()
    poller.register(slot.fileno(), select.POLLIN)
    init_fd = os.pidfd_open(pid) if pid else -1
    if init_fd >= 0:
        poller.register(init_fd, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if init_fd >= 0 and init_fd in events:
            _kill_and_exit(pid, 1)
        if events:
            break
    try:
        message, fds, _flags, _addr = socket.recv_fds(slot, 1 << 18, 1, socket.MSG_CMSG_CLOEXEC)
    except OSError:
        message, fds = b"", []
    slot.close()
    if init_fd >= 0:
        os.close(init_fd)
    if not message or not fds:
        for fd in fds:
            os.close(fd)
        _kill_and_exit(pid, 0)
    chan = socket.socket(fileno=fds[0])
    if pid:  # hand the request to the waiting init first: it has the longer way to go
        try:
            _write_all(req_w, message)
        except OSError:
            pass  # init died: reported below through the status pipe
        os.close(req_w)
    try:
        req = json.loads(message)
    except ValueError as exc:
        _send(chan, {"event": "error", "message": f"bad request: {exc}"})
        _kill_and_exit(pid, 1)
    linux.set_process_name(f"cshim-{req.get('id', '')}")
    _supervise(req, chan, pid, (out_r, out_w), (status_r, status_w), (go_r, go_w), (in_r, in_w), (tty_shim, tty_init))


def _supervise(req: dict, chan: socket.socket, pid: int, out: tuple[int, int], status: tuple[int, int],
               go: tuple[int, int], stdin: tuple[int, int], tty_pair: tuple[socket.socket, socket.socket | None]) -> None:
    """The shim once it has its request; *pid* is the prepared init (already given the request) or 0."""
    out_r, out_w = out
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
                for fd in (chan.detach(), out_r, status_r, go_w, in_w, tty_shim.detach()):
                    os.close(fd)
                container_init(req, out_w, status_w, go_r, in_cgroup, None, in_r, tty_init.detach())
                os._exit(127)  # not reached
        for fd in (out_w, status_w, go_r, in_r):
            os.close(fd)
        if tty_init is not None:
            tty_init.close()
        if not (req.get("stdin") and not tty):
            os.close(in_w)
            in_w = -1
        identity = {"pid": pid, "pid_start": linux.proc_start_time(pid),
                    "shim_pid": os.getpid(), "shim_start": linux.proc_start_time(os.getpid())}
        log = _Log(req["log"], req.get("log_max", 0))

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
            listener = _listen(attach_path)
        if req.get("wait_for_go", True):
            _send(chan, {"event": "ready", **identity})
            try:
                reply = json.loads(chan.recv(65536) or b"{}")
            except (OSError, ValueError):
                reply = {}
            if reply.get("op") != "go":
                _kill_and_exit(pid, 0)
            if listener is None:
                os.write(go_w, b"G")
        if listener is None:
            os.close(go_w)
            result = _read_to_eof(status_r)  # EOF without data: execve closed the close-on-exec pipe
            os.close(status_r)
            if result:
                os.waitpid(pid, 0)
                raise RuntimeError(result[1:].decode("utf-8", "replace") or "container init failed")
        started_at = time.time()
        _write_json(req["pids_file"], {"boot_id": linux.boot_id(), **identity, "started_at": started_at},
                    durable=False)
        _send(chan, {"event": "started", "started_at": started_at, **identity})
    except BaseException as exc:  # noqa: BLE001
        _send(chan, {"event": "error", "message": str(exc) or type(exc).__name__})
        _kill_and_exit(pid, 1)
    chan.close()

    if listener is None:
        while True:
            try:
                data = os.read(out_r, 65536)
            except OSError:
                break
            if not data:
                break
            log.write(data)
    else:
        source = master if tty else out_r
        if tty:
            os.close(out_r)
        clients = _hold_for_attach(pid, listener, master, req.get("attach_wait", ATTACH_WAIT))
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
            log.write(message)
            for client in clients:
                client.queue(message)
        _relay(source, master if tty and req.get("stdin") else in_w, master, log, listener, clients)
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
    try:
        _write_json(req["exit_file"], {"exit_code": code, "signal": sig, "oom_killed": oom,
                                       "started_at": started_at, "finished_at": finished_at}, durable=True)
    except OSError:
        pass
    os._exit(0)


def _warm_init(opts: dict, req_r: int, out_w: int, status_w: int, go_r: int, in_r: int, tty_sock: int) -> None:
    """A prepared container init waiting for its request. Never returns."""
    try:
        prepare_init(opts["caps"], opts.get("cap_last"))
        failure = None
    except BaseException as exc:  # noqa: BLE001 - reported once the request (and a channel) exists
        failure = f"cannot create namespaces: {exc}"
    data = _read_to_eof(req_r)
    os.close(req_r)
    if not data:
        os._exit(0)  # the slot was abandoned
    if failure:
        try:
            os.write(status_w, b"E" + failure.encode())
        finally:
            os._exit(127)
    container_init(json.loads(data), out_w, status_w, go_r, False, opts["caps"], in_r, tty_sock)
