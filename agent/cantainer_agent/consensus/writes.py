"""The agent's write path: one replicated command, retried while its outcome is unknown.

Every internal writer (the API, controllers, heartbeats) goes through :func:`replicate`, so the
retry policy lives in one place. A command whose outcome is unknown (the leader changed while it
was in flight) is resubmitted within ``RETRY_FOR`` seconds; one that never reached a leader, or
that the state machine refused, is not. Raises the consensus errors; the API maps them.
"""
from __future__ import annotations

import time
from typing import Any

from .errors import CommandRejected, OutcomeUnknown
from .node import RaftNode

# Commands whose second application, after a first one of unknown outcome, is refused with this
# text although the first one did happen: the refusal then means success.
ALREADY_DONE = {"remove_container": "no container named", "delete_network": "does not exist"}
RETRY_FOR = 10.0  # seconds: long enough to ride out an election on a loaded host


def replicate(raft: RaftNode, command: str, args: dict, timeout: float = 5.0) -> Any:
    """Apply *command* through raft; returns the state machine's value."""
    deadline = time.monotonic() + RETRY_FOR
    attempt = 0
    while True:
        attempt += 1
        try:
            return raft.apply(command, args, timeout=timeout)
        except CommandRejected as error:
            if attempt > 1 and ALREADY_DONE.get(command, "\0") in str(error):
                return True
            raise
        except OutcomeUnknown:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(0.05 * attempt, 0.5))
