"""Detaching the agent (``run --daemon``): fork, setsid, fork; the launcher waits on a readiness pipe.

The launcher imports nothing of the agent itself (only this module, the standard library's
os/select/sys/time, and the config): the daemon imports the agent after the forks. A launcher that
had imported it first made the daemon copy-on-write most of that heap as soon as it ran (~4000
page faults, ~15 ms of CPU per host at every start; docs/design/agent.md "Start-up").
The launcher returns 0 once the daemon writes ``READY``, else prints one error line and returns 1.
"""
from __future__ import annotations

import os
import select
import sys
import time
from typing import Callable

READY_TIMEOUT = 90.0  # launcher's wait; start-up itself is bounded well below this


def detach(log_file: str, daemon: Callable[[int], None]) -> int:
    """Run ``daemon(ready_fd)`` in a detached grandchild (it must not return: it ``os._exit``s);
    return 0 once it writes ``READY\\n`` on ready_fd, else 1 after one error line on stderr
    (its ``ERROR <line>``, or why there was none; *log_file* is where to look)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        os.waitpid(pid, 0)  # the intermediate child exits right after the second fork
        return _await_ready(r, log_file)
    # intermediate child
    try:
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        daemon(w)
    except BaseException:  # noqa: BLE001 - nothing may return into the launcher's code
        pass
    os._exit(1)


def _await_ready(r: int, log_file: str) -> int:
    buf = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"cantainer-agent: error: agent did not become ready within {READY_TIMEOUT:.0f} s "
                  f"(see {log_file})", file=sys.stderr)
            return 1
        ready_fds, _, _ = select.select([r], [], [], left)
        if not ready_fds:
            continue
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
    os.close(r)
    text = buf.decode("utf-8", "replace").strip()
    if text.startswith("READY"):
        return 0
    if text.startswith("ERROR "):
        print(f"cantainer-agent: error: {text[6:].splitlines()[0]}", file=sys.stderr)
    else:
        print(f"cantainer-agent: error: agent exited during start-up (see {log_file})", file=sys.stderr)
    return 1
