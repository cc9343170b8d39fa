"""Client of the agent API: JSON lines over the host's unix socket, reached through SSH.

Root logins use SSH direct-streamlocal to the root-only socket. A non-root login with `become`
cannot open that socket itself, so it runs a tiny relay under sudo on the host instead.
"""
from __future__ import annotations

import asyncio
import itertools

from cantainer.errors import CantainerError
from cantainer.ssh import Connection, HostError
from cantainer_agent import protocol
from cantainer_agent.layout import SOCKET_PATH

# Copies bytes between stdin/stdout and the agent socket; started under sudo for non-root logins.
SOCKET_RELAY = r"""
import socket, sys, threading
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
def pump_in():
    for chunk in iter(lambda: sys.stdin.buffer.read1(65536), b""):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=pump_in, daemon=True).start()
for chunk in iter(lambda: sock.recv(65536), b""):
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
"""


class AgentError(CantainerError):
    """The agent answered with an error (its code is kept for callers that branch on it)."""

    USER_ERRORS = (protocol.REJECTED, protocol.NOT_FOUND)

    def __init__(self, host: str, code: str, message: str) -> None:
        # A refused request is about the user's input, not about the host that relayed it.
        super().__init__(message if code in self.USER_ERRORS else f"{host}: {message}")
        self.code = code


class AgentClient:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._reader = None
        self._writer = None
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        try:
            if self.connection.needs_sudo:
                argv = [self.connection.host.python, "-c", SOCKET_RELAY, SOCKET_PATH]
                self._reader, self._writer = await self.connection.open_exec_stream(argv)
            else:
                self._reader, self._writer = await self.connection.open_unix(SOCKET_PATH)
        except Exception as error:  # asyncssh.ChannelOpenError and friends: the agent is not listening
            raise HostError(self.connection.host.name, f"agent is not running (cannot open {SOCKET_PATH}: {error})",
                            "run `cantainer up` to start it") from None

    async def call(self, method: str, params: dict | None = None, timeout: float = 10.0):
        async with self._lock:
            if self._writer is None:
                await self._open()
            request_id = next(self._ids)
            self._writer.write(protocol.encode_request(request_id, method, params or {}))
            try:
                line = await asyncio.wait_for(self._reader.readline(), timeout)
            except asyncio.TimeoutError:
                self.close()
                raise HostError(
                    self.connection.host.name, f"agent did not answer `{method}` within {timeout:g}s"
                ) from None
            if not line:
                self.close()
                raise HostError(self.connection.host.name, f"agent closed the connection during `{method}`")
            response = protocol.decode_response(line)
            if not response.ok:
                raise AgentError(self.connection.host.name, response.error.code, response.error.message)
            return response.result

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
