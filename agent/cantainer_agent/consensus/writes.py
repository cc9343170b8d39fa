"""The agent's write path: one replicated command, exactly once, retried while its outcome is unknown.

Every writer — an API request, a controller, the heartbeat — holds a :class:`Session`: a client id
and sequence numbers. :func:`replicate` takes the next number and keeps it across its retries, so
a command whose first attempt did commit is answered from the state machine's session table
instead of applied twice (cluster/sessions.py); no refusal is ever read as success. It retries only
while the outcome is unknown (the leader changed, no confirmation in time), up to ``RETRY_FOR``
seconds; a command that reached no leader, or that the state machine refused, is not retried here.
Raises the consensus errors; the API maps them (api/errors.py).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

from .errors import CommandFailed, CommandRejected, OutcomeUnknown
from .node import RaftNode

RETRY_FOR = 10.0  # seconds: long enough to ride out an election on a loaded host
SUB_REQUESTS = 64  # writes one client request may make (see Session.for_request)


class Session:
    """A client of the replicated state: ``client`` plus increasing sequence numbers (thread-safe)."""

    def __init__(self, client: str, first_seq: int = 0, last_seq: int | None = None) -> None:
        self.client = client
        self.first = first_seq
        self._seqs = itertools.count(first_seq)
        self._last = last_seq
        self._lock = threading.Lock()

    @classmethod
    def new(cls, purpose: str) -> "Session":
        """A session of this process: unique across restarts (a random part), named for the logs."""
        return cls(f"{purpose}:{os.urandom(6).hex()}")

    @classmethod
    def for_request(cls, session: dict) -> "Session":
        """The writes of one client request ``{client, seq}``: its sub-requests get the sequence
        numbers seq*64 … seq*64+63, so a retried request repeats exactly the same writes."""
        base = session["seq"] * SUB_REQUESTS
        return cls(session["client"], base, base + SUB_REQUESTS - 1)

    def next(self) -> dict:
        with self._lock:
            seq = next(self._seqs)
        if self._last is not None and seq > self._last:
            raise ValueError(f"a request may make at most {SUB_REQUESTS} writes")
        return {"client": self.client, "seq": seq, "ts": time.time()}


def replicate(raft: RaftNode, command: str, args: dict, session: Session, timeout: float = 5.0) -> Any:
    """Apply *command* through raft, at most once; returns the state machine's value."""
    request = session.next()  # one sequence number for every attempt
    deadline = time.monotonic() + RETRY_FOR
    attempt = 0
    uncertain: OutcomeUnknown | None = None
    while True:
        attempt += 1
        try:
            return raft.apply(command, args, timeout=timeout, session=request)
        except OutcomeUnknown as error:
            uncertain = error
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(0.05 * attempt, 0.5))
        except CommandRejected:
            raise
        except CommandFailed as error:
            # After an attempt of unknown outcome, a later "not submitted" says nothing about the
            # first one: the outcome stays unknown (the caller may retry with the same session).
            if uncertain is not None:
                raise OutcomeUnknown(f"{uncertain}; retrying failed: {error}") from None
            raise
