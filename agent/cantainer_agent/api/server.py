"""The API's transport: JSON lines (protocol.py) on a root-only unix socket, one thread per connection.

The socket is created 0600 (umask around ``bind``, then ``chmod``); the workstation reaches it over
SSH direct-streamlocal — there is no TCP API. A connection carries any number of requests, answered
in order; an oversized line ends the connection. A handler may return :class:`AfterReply` to act
(e.g. stop the agent) after its answer is written. Handlers by resource live beside this module.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from typing import Any, Callable, Mapping

from .. import protocol

log = logging.getLogger(__name__)


class AfterReply:
    """Handler result wrapper: send *result*, then call *action* (e.g. shut down)."""

    def __init__(self, result: Any, action: Callable[[], None]):
        self.result = result
        self.action = action


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 32

    def server_bind(self) -> None:
        old = os.umask(0o177)
        try:
            super().server_bind()
        finally:
            os.umask(old)
        os.chmod(self.server_address, 0o600)


def _claim_socket_path(path: str) -> None:
    """Remove a stale socket; refuse if a live agent answers on it."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listening: stale
        return
    finally:
        probe.close()
    raise OSError(f"another agent is already serving {path}")


class ApiServer:
    """Binds in the constructor (fail fast), serves after :meth:`start`."""

    def __init__(self, path: str, handlers: Mapping[str, Callable[[dict], Any]]):
        self.path = path
        self._handlers = handlers
        _claim_socket_path(path)
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._serve(self.rfile, self.wfile)

        self._server = _UnixServer(path, Handler)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="api-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _serve(self, rfile: Any, wfile: Any) -> None:
        after: list[Callable[[], None]] = []

        def capture(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
            def inner(params: dict) -> Any:
                res = fn(params)
                if isinstance(res, AfterReply):
                    after.append(res.action)
                    return res.result
                return res
            return inner

        handlers = {name: capture(fn) for name, fn in self._handlers.items()}
        while True:
            try:
                line = rfile.readline(protocol.MAX_LINE + 1)
            except OSError:
                return
            if not line:
                return
            if len(line) > protocol.MAX_LINE:
                self._write(wfile, protocol.encode_error(None, protocol.TOO_LARGE,
                                                         f"request exceeds {protocol.MAX_LINE} bytes"))
                return  # cannot resynchronise inside an oversized line
            if not line.strip():
                continue
            response, _req = protocol.dispatch(line, handlers)
            if not self._write(wfile, response):
                return
            while after:
                action = after.pop()
                try:
                    action()
                except Exception:  # noqa: BLE001
                    log.exception("post-reply action failed")

    @staticmethod
    def _write(wfile: Any, data: bytes) -> bool:
        try:
            wfile.write(data)
            wfile.flush()
            return True
        except OSError:
            return False
