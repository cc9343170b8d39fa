"""Attach: a client's terminal or pipes joined to a tty/stdin container, through its supervisor.

The supervisor listens on the container's attach socket. Client -> supervisor messages are frames
(``encode_frame``: 1 byte type, 4 bytes length, payload — data, window size, stdin EOF);
supervisor -> client, the output in frames of the same shape whose type is the stream (1 stdout,
2 stderr, as docker's stdcopy), so stderr stays stderr (a terminal has one stream: stdout). The
container is held before execve until the first client connects (its window size applied first)
or ``ATTACH_WAIT`` passes, so the client sees everything from the first byte. A client that does
not read loses output beyond ``CLIENT_BUFFER``; input beyond ``STDIN_BUFFER`` pauses reading.
"""
from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import time

from .logfile import LogFile

ATTACH_WAIT = 10.0  # seconds an attachable container is held before execve waiting for a client
FRAME_DATA, FRAME_WINSIZE, FRAME_EOF = 0x64, 0x77, 0x65  # b"d" b"w" b"e"
OUTPUT_STREAMS = {"stdout": 1, "stderr": 2}  # output frame type: the stream's file descriptor
MAX_FRAME = 1 << 16
CLIENT_BUFFER = 4 << 20  # output queued for a client that does not read; beyond it, it is dropped
STDIN_BUFFER = 1 << 16  # input queued for the container; beyond it, clients are not read


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    """Client -> shim message: 1 byte type, 4 bytes big-endian length, payload."""
    return bytes((kind,)) + len(payload).to_bytes(4, "big") + payload


def encode_winsize(rows: int, cols: int) -> bytes:
    return encode_frame(FRAME_WINSIZE, struct.pack("!HH", rows, cols))


def output_frame(stream: str, data: bytes) -> bytes:
    """Shim -> client: *data* written by the container on *stream*."""
    return encode_frame(OUTPUT_STREAMS[stream], data)


class OutputFrames:
    """The client's side of output frames: feed bytes, get (file descriptor 1 or 2, data)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes):
        self._buffer += data
        while len(self._buffer) >= 5:
            size = int.from_bytes(self._buffer[1:5], "big")
            if len(self._buffer) < 5 + size:
                return
            kind, payload = self._buffer[0], bytes(self._buffer[5:5 + size])
            del self._buffer[:5 + size]
            yield (2 if kind == 2 else 1), payload


def unix_address(path: str) -> tuple[str, int]:
    """(address usable for bind/connect, fd to close or -1): paths beyond sun_path's 108 bytes go
    through /proc/self/fd/<dir fd>/<name>."""
    if len(path.encode()) < 100:
        return path, -1
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dfd}/{os.path.basename(path)}", dfd


def listen(path: str) -> socket.socket:
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


def hold_for_attach(pid: int, listener: socket.socket, master: int, wait: float) -> list[_Client]:
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


def relay(sources: dict[int, str], stdin_fd: int, master: int, log: LogFile, listener: socket.socket,
          clients: list[_Client]) -> None:
    """Copy the container's output ({fd: stream}: the stdout and stderr pipes, or the pty master) to
    the log and every attached client, and the clients' input to its stdin (pipe or pty master),
    until every output ends."""
    sources = dict(sources)
    for source in sources:
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
        if stdin_fd >= 0 and stdin_fd not in sources and want_out:
            poller.register(stdin_fd, select.POLLOUT)
        for source in sources:
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
            if fd in sources and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: the last holder of the pty slave is gone
                    data = b""
                if not data:
                    sources.pop(fd)
                    if fd != stdin_fd:
                        os.close(fd)
                    if sources:
                        continue
                    for client in clients:
                        _drain(client)
                        client.sock.close()
                    return
                stream = sources[fd]
                log.write(data, stream)
                frame = output_frame(stream, data)
                for client in clients:
                    client.queue(frame)
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
