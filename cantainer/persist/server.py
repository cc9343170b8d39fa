"""The connection process: serves the protocol of wire.py on its unix socket until it has been idle.

``python -m cantainer.persist.server --socket PATH --ready-fd N --idle SECONDS`` (started by
client.py, detached, one per user and code version). It holds ``PATH.lock`` (flock) for its life,
so a socket file nobody holds is stale and a second process refuses to start; binds the socket 0600
in the private directory; tells its starter "ready" (or one error line) on the ready fd; answers only
peers of its own uid. Host connections are cached by the host's settings plus the state of the files
SSH trusts, and made once at a time per host; a cached connection found closed is replaced, and a
channel that cannot be opened because the connection died is retried once on a new one (nothing ran
yet). It exits after SECONDS without a client (or on SIGTERM), removing its socket. ``stats`` (no host)
answers its pid and how many connections it made per host (tests prove reuse with it).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from cantainer import ssh
from cantainer.errors import CantainerError, HostError
from cantainer.persist import wire

log = logging.getLogger("cantainer.persist")

TRUSTED_FILES = ("~/.ssh/config", "~/.ssh/known_hosts", "~/.ssh/known_hosts2", "/etc/ssh/ssh_config",
                 "/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _file_state(path: str) -> tuple:
    try:
        info = os.stat(os.path.expanduser(path))
    except OSError:
        return (path, None)
    return (path, info.st_ino, info.st_size, info.st_mtime_ns)


def connection_key(spec: dict) -> tuple:
    """What a host's connection depends on: its inventory settings, the ssh-agent the client uses and
    the files SSH trusts. A change of any makes a new connection (an old one is never reused with a
    changed known_hosts or identity)."""
    files = [*TRUSTED_FILES, *(spec[name] for name in ("identity_file", "known_hosts") if spec.get(name))]
    return (json.dumps(spec, sort_keys=True), tuple(_file_state(path) for path in files))


class Master:
    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.active = 0
        self.last_activity = time.monotonic()
        self._connections: dict[str, tuple[tuple, ssh.Connection]] = {}  # host spec -> (key, connection)
        self._connecting: dict[str, asyncio.Lock] = {}
        self.made: dict[str, int] = {}  # host name -> SSH connections made (op "stats")
        self.stopping = asyncio.Event()

    # -- host connections ---------------------------------------------------------------------------
    async def connection(self, spec: dict, fresh: bool = False) -> ssh.Connection:
        name = json.dumps(spec, sort_keys=True)
        async with self._connecting.setdefault(name, asyncio.Lock()):
            key = connection_key(spec)
            cached = self._connections.get(name)
            if cached and not fresh and cached[0] == key and not cached[1].is_closed():
                return cached[1]
            if cached:
                cached[1].close()  # settings, trusted files or the connection itself changed
            agent = spec.get("ssh_auth_sock")
            host = wire.host_of({k: v for k, v in spec.items() if k != "ssh_auth_sock"})
            connection = await ssh.connect(host, agent_path=agent if agent else None)
            self.made[host.name] = self.made.get(host.name, 0) + 1
            self._connections[name] = (connection_key(spec), connection)  # after accept-new wrote known_hosts
            return connection

    async def _opened(self, spec: dict, open_channel):
        """open_channel(connection) on the cached connection; once more on a new one if that failed
        because the connection had died, or did not answer within the host's connect timeout (a cut
        link sends no FIN): nothing ran, the channel never opened."""
        connection = await self.connection(spec)
        try:
            return await asyncio.wait_for(open_channel(connection), connection.host.connect_timeout)
        except asyncio.TimeoutError:
            log.info("connection to %s does not answer: reconnecting", connection.host.name)
            connection.close()
        except (HostError, OSError, EOFError) as error:
            if not connection.is_closed():
                raise
            log.info("connection to %s was closed (%s): reconnecting", connection.host.name, error)
        return await open_channel(await self.connection(spec, fresh=True))

    # -- serving ------------------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request. Every request that got as far as doing something gets an answer (a client
        resends only a request nobody answered)."""
        self.active += 1
        reply = _Reply(writer)
        try:
            if peer_uid(writer.get_extra_info("socket")) != os.geteuid():
                log.warning("refused a client of another user")
                return
            request = json.loads(await reader.readline() or b"{}")
            if request.get("op") == "stats":
                reply.ok(pid=os.getpid(), connections_made=self.made,
                         open=sorted(c.host.name for _, c in self._connections.values() if not c.is_closed()))
                return
            op = getattr(self, f"op_{request.get('op')}", None)
            if op is None or not isinstance(request.get("host"), dict):
                reply.error({"kind": "usage", "message": f"unknown request {request.get('op')!r}"})
                return
            try:
                await op(request, reader, reply)
            except CantainerError as error:
                reply.error(wire.error_document(error))
            except Exception as error:  # noqa: BLE001 - asyncssh's own, or a bug: one line for the user
                log.exception("request %s failed", request.get("op"))
                reply.error({"kind": "host", "host": request["host"].get("name", "?"),
                             "message": f"{type(error).__name__}: {error}"})
        except (ConnectionError, ValueError) as error:
            log.info("client request failed: %s", error)
        finally:
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, RuntimeError):
                pass
            self.active -= 1
            self.last_activity = time.monotonic()

    async def op_run(self, request: dict, _reader, reply: "_Reply") -> None:
        argv, timeout = request["argv"], request.get("timeout")
        process = await self._opened(request["host"], lambda c: c.create_process(argv))
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(request.get("input")), timeout)
        except asyncio.TimeoutError:
            process.close()
            raise HostError(request["host"]["name"], f"`{argv[0]}` did not finish within {timeout:.0f}s") from None
        status = process.exit_status if process.exit_status is not None else 255
        reply.ok(exit_status=status, stdout=stdout or "", stderr=stderr or "")

    async def op_put(self, request: dict, _reader, reply: "_Reply") -> None:
        await self._opened(request["host"], lambda c: c.sftp_ready())  # a dead connection is replaced first
        connection = await self.connection(request["host"])
        data = Path(request["source"]) if request.get("source") else base64.b64decode(request["data"])
        await connection.write_file(request["path"], data, request["mode"])
        reply.ok()

    async def op_agent(self, request: dict, reader, reply: "_Reply") -> None:
        channel_reader, channel_writer = await self._opened(request["host"],
                                                            lambda c: c.open_agent(request["socket"]))
        writer = reply.ok()
        await writer.drain()

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                channel_writer.write(chunk)
            channel_writer.write_eof()

        async def downstream() -> None:
            while chunk := await channel_reader.read(65536):
                writer.write(chunk)
                await writer.drain()

        await _relay(upstream(), downstream(), channel_writer.close)

    async def op_exec(self, request: dict, reader, reply: "_Reply") -> None:
        tty = request.get("tty")
        options: dict = {"encoding": None}
        if tty:
            options.update(term_type=tty["term"], term_size=(tty["cols"], tty["rows"]))
        process = await self._opened(request["host"], lambda c: c.create_process(request["argv"], **options))
        writer = reply.ok()
        await writer.drain()
        if not request.get("stdin"):
            process.stdin.write_eof()

        async def upstream() -> None:
            while (item := await wire.read_frame(reader)) is not None:
                kind, payload = item
                if kind == wire.STDIN and payload:
                    process.stdin.write(payload)
                elif kind == wire.STDIN:
                    process.stdin.write_eof()
                elif kind == wire.RESIZE:
                    size = json.loads(payload)
                    process.change_terminal_size(size["cols"], size["rows"])
            raise ConnectionResetError("the client went away")  # its end closed: stop the command

        async def copy(stream, kind: bytes) -> None:
            while chunk := await stream.read(65536):
                writer.write(wire.frame(kind, chunk))
                await writer.drain()

        async def downstream() -> None:
            await asyncio.gather(copy(process.stdout, wire.STDOUT),
                                 *([] if tty else [copy(process.stderr, wire.STDERR)]))
            completed = await process.wait()
            status = completed.exit_status if completed.exit_status is not None else 255
            writer.write(wire.frame(wire.EXIT, json.dumps({"exit_status": status}).encode()))

        await _relay(upstream(), downstream(), process.close, finish_with=downstream)

    # -- life ---------------------------------------------------------------------------------------
    async def watch_idle(self) -> None:
        """Until no client came for `idle` seconds, or SIGTERM."""
        while True:
            try:
                await asyncio.wait_for(self.stopping.wait(), 1.0)
                log.info("stopping (SIGTERM)")
                return
            except asyncio.TimeoutError:
                pass
            if self.active == 0 and time.monotonic() - self.last_activity >= self.idle:
                log.info("idle for %.0f s: exiting", self.idle)
                return

    def close(self) -> None:
        for _key, connection in self._connections.values():
            connection.close()


class _Reply:
    """The one answer line of a request (later errors of a relay that said ok are only logged)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sent = False

    def ok(self, **fields) -> asyncio.StreamWriter:
        self._send({"ok": True, **fields})
        return self.writer

    def error(self, document: dict) -> None:
        if self.sent:
            log.info("after the answer: %s", document.get("message"))
            return
        self._send({"ok": False, "error": document})

    def _send(self, document: dict) -> None:
        self.sent = True
        self.writer.write(wire.line(document))


async def _relay(upstream, downstream, close_channel, finish_with=None) -> None:
    """Run both directions; the channel closes when the downstream ends or the client goes away."""
    up, down = asyncio.ensure_future(upstream), asyncio.ensure_future(downstream)
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED if finish_with else asyncio.ALL_COMPLETED)
    finally:
        for task in (up, down):
            if not task.done():
                task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        close_channel()


def take_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def bind(path: Path) -> socket.socket:
    """The listening socket, 0600 from birth (umask), in place of a stale one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


async def serve(path: Path, idle: float, ready) -> None:
    master = Master(idle)
    sock = bind(path)
    inode = os.stat(path).st_ino
    server = await asyncio.start_unix_server(master.handle, sock=sock, limit=wire.MAX_LINE)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, master.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # no terminal: nothing to hang up on
    ready("ready")
    try:
        await master.watch_idle()
    finally:
        try:
            if os.stat(path).st_ino == inode:  # never remove a socket a successor has bound
                os.unlink(path)
        except OSError:
            pass
        server.close()
        master.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cantainer.persist.server")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--idle", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # a line per channel otherwise
    told = False

    def ready(message: str) -> None:
        nonlocal told
        if not told:
            told = True
            os.write(args.ready_fd, message.encode() + b"\n")
            os.close(args.ready_fd)

    lock = take_lock(args.socket.with_suffix(".lock"))
    if lock is None:
        ready("busy")  # another process of this version serves (or is starting): connect to it
        return 0
    try:
        asyncio.run(serve(args.socket, args.idle, ready))
    except Exception as error:  # noqa: BLE001 - the starter gets one line instead of a silent death
        log.exception("connection process failed")
        ready(f"error {type(error).__name__}: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
