"""Client of the agent API: JSON lines over the host's unix socket, reached through SSH.

The connection (ssh.Connection, or persist.client.ProxyConnection through the connection process)
opens the stream: root logins use SSH direct-streamlocal to the root-only socket; a non-root login
with `become` cannot open that socket itself, so it runs a tiny relay under sudo on the host instead.

Writes carry a session ``{client, seq}`` (one client id per CLI process, one sequence number per
request, kept across its retries): :func:`retrying` resends a write whose outcome is unknown, on
any agent, and the cluster applies it at most once (protocol.py). Each error code the agent can
answer has its own exit code (``EXIT_CODES``), so scripts can tell "not found" from "try again".
"""
from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Awaitable, Callable, TypeVar

from cantainer.errors import CantainerError, HostError
from cantainer_agent import protocol
from cantainer_agent.layout import SOCKET_PATH

# Exit codes of the CLI by the agent's error code (docs: README "Exit codes").
EXIT_CODES = {
    protocol.NOT_FOUND: 3,
    protocol.ALREADY_EXISTS: 4,
    protocol.CONFLICT: 5,
    protocol.INVALID: 6,
    protocol.UNAVAILABLE: 69,      # EX_UNAVAILABLE: nothing was done, try again
    protocol.OUTCOME_UNKNOWN: 75,  # EX_TEMPFAIL: it may have been done
    protocol.INTERNAL: 70,         # EX_SOFTWARE
    protocol.COMMAND_NOT_FOUND: 127,       # docker's: the container's command does not exist
    protocol.COMMAND_NOT_EXECUTABLE: 126,  # docker's: it exists but cannot be executed
}
RETRY_FOR = 15.0  # seconds a write is resent while no agent can tell its outcome
T = TypeVar("T")


class AgentError(CantainerError):
    """The agent answered with an error (its code is kept for callers that branch on it)."""

    USER_ERRORS = (protocol.INVALID, protocol.NOT_FOUND, protocol.ALREADY_EXISTS, protocol.CONFLICT,
                   protocol.COMMAND_NOT_FOUND, protocol.COMMAND_NOT_EXECUTABLE)

    def __init__(self, host: str, code: str, message: str) -> None:
        # A refused request is about the user's input, not about the host that relayed it.
        super().__init__(message if code in self.USER_ERRORS else f"{host}: {message}")
        self.code = code
        self.exit_code = EXIT_CODES.get(code, 1)


class Sessions:
    """This process's client id and the sequence numbers of its writes (protocol ``session``)."""

    def __init__(self) -> None:
        self._pid = -1

    def next(self) -> dict:
        if self._pid != os.getpid():  # a new process (also a fork of one that had a session): a new client
            self._pid = os.getpid()
            self.client = f"cli:{os.uname().nodename[:40]}:{self._pid}:{os.urandom(6).hex()}"
            self._seqs = itertools.count(1)
        return {"client": self.client, "seq": next(self._seqs)}


SESSIONS = Sessions()


def may_retry(error: CantainerError) -> bool:
    """Nothing was done, or what was done is unknown: a write with its session may be resent."""
    if isinstance(error, AgentError):
        return error.code in (protocol.UNAVAILABLE, protocol.OUTCOME_UNKNOWN, protocol.NOT_LEADER)
    return isinstance(error, HostError)  # the connection or the agent went away mid-request


async def retrying(attempt: Callable[[], Awaitable[T]], deadline: float = RETRY_FOR) -> T:
    """Run *attempt* (a write that carries one session) until it gives an answer, resending while
    may_retry; the last error is raised when *deadline* seconds have passed."""
    end = time.monotonic() + deadline
    delay = 0.2
    while True:
        try:
            return await attempt()
        except CantainerError as error:
            if not may_retry(error) or time.monotonic() + delay >= end:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


class AgentClient:
    def __init__(self, connection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._reader = None
        self._writer = None
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        try:
            self._reader, self._writer = await self.connection.open_agent(SOCKET_PATH)
        except HostError:
            raise
        except Exception as error:  # asyncssh.ChannelOpenError and friends: the agent is not listening
            raise HostError(self.connection.host.name, f"agent is not running (cannot open {SOCKET_PATH}: {error})",
                            "run `cantainer up` to start it") from None

    LARGE = frozenset({"status", "container.ps"})  # answers that grow with the cluster: taken in parts

    async def call(self, method: str, params: dict | None = None, timeout: float = 10.0, session: dict | None = None):
        async with self._lock:
            if self._writer is None:
                await self._open()
            deadline = asyncio.get_running_loop().time() + timeout
            parts = method in self.LARGE
            request_id = next(self._ids)
            self._send(protocol.encode_request(request_id, method, params or {}, session, parts=parts))
            response = protocol.decode_response(await self._line(method, timeout, deadline))
            if not response.ok and parts and "unexpected request fields: parts" in response.error.message:
                # an agent from before results came in parts (the workstation was upgraded first)
                self._send(protocol.encode_request(request_id, method, params or {}, session))
                response = protocol.decode_response(await self._line(method, timeout, deadline))
            if not response.ok:
                raise AgentError(self.connection.host.name, response.error.code, response.error.message)
            if response.more is None:
                return response.result
            pieces = []
            while (piece := protocol.decode_part(await self._line(method, timeout, deadline))) is not None:
                pieces.append(piece)
            return protocol.join_parts(response, pieces)

    def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except ConnectionError:
            pass  # the stream is closed: reading says so (see _line)

    async def _line(self, method: str, timeout: float, deadline: float) -> bytes:
        try:
            line = await asyncio.wait_for(self._reader.readline(),
                                          max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            self.close()
            raise HostError(self.connection.host.name, f"agent did not answer `{method}` within {timeout:g}s") from None
        except ConnectionError:
            # The sudo relay (become) opens as a session even when the socket is not there yet,
            # then exits: its channel is closed before or while we write.
            line = b""
        if not line:
            self.close()
            raise HostError(self.connection.host.name, f"agent closed the connection during `{method}`")
        return line

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
