"""The CLI's side of the connection process: start it when needed, and ``ProxyConnection``, which offers
what ``ssh.Connection`` offers the CLI (run, write_file, open_agent, stream) by asking the process.

Starting is serialised between CLI processes (a lock file in the private directory): the first that
finds no process starts one and waits for its "ready" line; the others then connect to it. A request
that got no reply at all (a process exiting idle as we connected) is sent once more, to a new
process; one that got an answer is never resent here (writes are resent by client.retrying, with
their session). The process must run as this user (SO_PEERCRED), like the socket's directory.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import sys
from pathlib import Path

from cantainer.inventory import Host
from cantainer.persist import settings, wire
from cantainer.persist.settings import PersistError
from cantainer.remote import CommandResult

START_TIMEOUT = 30.0
_start_lock: asyncio.Lock | None = None


def _peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def start_process(path: Path) -> None:
    """Start the connection process for *path* unless one answers there; return once it serves."""
    import fcntl
    import select
    import subprocess
    import time

    with open(path.parent / "start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
            return  # another CLI started it meanwhile
        except OSError:
            pass
        finally:
            probe.close()
        read_end, write_end = os.pipe()
        log = os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            subprocess.Popen([sys.executable, "-m", "cantainer.persist.server", "--socket", str(path),
                              "--ready-fd", str(write_end), "--idle", str(settings.idle_seconds())],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
                             start_new_session=True)
        finally:
            os.close(write_end)
            os.close(log)
        answer = b""
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while (left := deadline - time.monotonic()) > 0 and select.select([read_end], [], [], left)[0]:
                chunk = os.read(read_end, 4096)
                if not chunk:
                    break
                answer += chunk
        finally:
            os.close(read_end)
    text = answer.decode(errors="replace").strip()
    if text not in ("ready", "busy"):
        raise PersistError(f"the connection process did not start ({text or 'no answer'}; "
                           f"see {path.with_suffix('.log')})", f"set {settings.ENV}=no to connect without it")


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=2 * wire.MAX_LINE)
    if _peer_uid(writer.get_extra_info("socket")) != os.geteuid():
        writer.close()
        raise PersistError(f"{path} is served by another user's process", f"remove it, or set {settings.ENV}=no")
    return reader, writer


async def request(document: dict, argv: list[str] | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict]:
    """Send one request; return the stream and the answer once the process said ok (raise its error
    otherwise)."""
    global _start_lock
    path = settings.socket_path()
    for attempt in (1, 2):
        try:
            reader, writer = await _connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if _start_lock is None:
                _start_lock = asyncio.Lock()
            async with _start_lock:  # concurrent requests of this CLI start it once
                await asyncio.to_thread(start_process, path)
            reader, writer = await _connect(path)
        try:
            writer.write(wire.line(document))
            reply = await reader.readline()
        except ConnectionError:
            reply = b""
        if reply:
            break
        writer.close()
        if attempt == 2:  # two processes in a row closed on us without a word
            raise PersistError("the connection process closed the connection without an answer",
                               f"see {path.with_suffix('.log')}, or set {settings.ENV}=no")
    answer = json.loads(reply)
    if not answer.get("ok"):
        writer.close()
        raise wire.error_of(answer.get("error") or {}, argv)
    return reader, writer, answer


class ProxyConnection:
    """A host reached through the connection process (nothing is opened until the first request)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._spec = {**wire.host_spec(host), "ssh_auth_sock": os.environ.get("SSH_AUTH_SOCK")}

    @property
    def needs_sudo(self) -> bool:
        return self.host.become and self.host.user != "root"

    async def run(self, argv: list[str], input: str | None = None, check: bool = True,
                  timeout: float | None = 120) -> CommandResult:
        _, writer, answer = await request({"op": "run", "host": self._spec, "argv": argv, "input": input,
                                           "timeout": timeout}, argv)
        writer.close()
        result = CommandResult(answer["exit_status"], answer["stdout"], answer["stderr"])
        if check and result.exit_status != 0:
            from cantainer.errors import RemoteCommandError

            raise RemoteCommandError(self.host.name, argv, result.exit_status, result.stderr)
        return result

    async def write_file(self, path: str, data: bytes | Path, mode: int) -> None:
        source = {"source": str(Path(data).resolve())} if isinstance(data, Path) else \
            {"data": base64.b64encode(data).decode()}
        _, writer, _ = await request({"op": "put", "host": self._spec, "path": path, "mode": mode, **source})
        writer.close()

    async def open_agent(self, socket_path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer, _ = await request({"op": "agent", "host": self._spec, "socket": socket_path})
        return reader, writer

    async def stream(self, argv: list[str], interactive: bool, use_tty: bool) -> int:
        """Run *argv* on the host attached to this process's stdio; its exit status."""
        from cantainer.terminal import relay_frames, terminal_size

        tty = None
        if use_tty:
            cols, rows = terminal_size()
            tty = {"term": os.environ.get("TERM", "xterm"), "cols": cols, "rows": rows}
        reader, writer, _ = await request({"op": "exec", "host": self._spec, "argv": argv, "stdin": interactive,
                                           "tty": tty})
        try:
            return await relay_frames(reader, writer, interactive, use_tty)
        finally:
            writer.close()

    def close(self) -> None:
        pass  # nothing is held here: the process keeps the host's connection

    def is_closed(self) -> bool:
        return False

    async def wait_closed(self) -> None:
        pass
