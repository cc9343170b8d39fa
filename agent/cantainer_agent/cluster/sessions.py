"""Client sessions of the state machine: exactly-once writes (Ongaro's thesis, §6.3).

A write may carry ``session = {"client", "seq", "ts"}``: the client's id, a sequence number the
client chose and keeps across its retries, and the proposer's clock. The state machine remembers,
per client, the outcome of its last ``WINDOW`` sequence numbers and answers a duplicate with the
stored outcome instead of applying the command again — also on another node, after a leader change,
a snapshot or a restart (the table is part of the replicated state). A sequence number older than
the window is refused as ``outcome_unknown`` rather than guessed. Clients silent for ``TTL`` seconds
(by the proposers' clocks) are forgotten, and at most ``MAX_CLIENTS`` are kept (the least recently
used go first): both are decided inside the command, so every replica forgets the same clients.
Pure and deterministic, like the rest of cluster/.
"""
from __future__ import annotations

import copy
from typing import Any

from ..errors import STATE_ERRORS, Expired, StateError

TTL = 600.0
MAX_CLIENTS = 4096
WINDOW = 32
MAX_SEQ = 2**53

Outcome = tuple  # (error code or None, message or value)


def check_session(session: Any) -> tuple[str, int, float]:
    if not isinstance(session, dict) or set(session) != {"client", "seq", "ts"}:
        raise StateError("a session is {client, seq, ts}")
    client, seq, ts = session["client"], session["seq"], session["ts"]
    if not isinstance(client, str) or not 1 <= len(client) <= 128:
        raise StateError("session client must be a string of 1-128 characters")
    if type(seq) is not int or not 0 <= seq < MAX_SEQ:
        raise StateError("session seq must be a non-negative integer")
    if type(ts) not in (int, float) or ts != ts or ts < 0:
        raise StateError("session ts must be a non-negative number")
    return client, seq, float(ts)


class Sessions:
    """``clients``: {client: {"last": ts, "floor": seq, "done": {seq: outcome}}}, least recently used first."""

    def __init__(self, clients: dict | None = None) -> None:
        self.clients: dict[str, dict] = dict(clients or {})

    def outcome(self, client: str, seq: int) -> Outcome | None:
        """The stored outcome of (client, seq), None if it was never applied; raises Expired when
        the window has moved past it (its outcome is no longer known)."""
        record = self.clients.get(client)
        if record is None:
            return None
        if seq in record["done"]:
            return record["done"][seq]
        if seq < record["floor"]:
            raise Expired(f"request {seq} of client {client} is older than the {WINDOW} this cluster remembers: "
                          "its outcome is unknown — read the state to find out")
        return None

    def record(self, client: str, seq: int, ts: float, outcome: Outcome) -> None:
        self._expire(ts)
        record = self.clients.pop(client, None) or {"last": ts, "floor": 0, "done": {}}
        record["last"] = max(record["last"], ts)
        record["done"][seq] = outcome
        while len(record["done"]) > WINDOW:
            oldest = min(record["done"])
            del record["done"][oldest]
            record["floor"] = max(record["floor"], oldest + 1)
        self.clients[client] = record  # now the most recently used
        while len(self.clients) > MAX_CLIENTS:
            del self.clients[next(iter(self.clients))]

    def _expire(self, now: float) -> None:
        while self.clients:
            client = next(iter(self.clients))
            if self.clients[client]["last"] >= now - TTL:
                return
            del self.clients[client]


def replay(outcome: Outcome) -> Any:
    """What the first application returned (a copy), or the refusal it raised."""
    code, payload = outcome
    if code is None:
        return copy.deepcopy(payload)
    raise STATE_ERRORS.get(code, StateError)(payload)


def success(value: Any) -> Outcome:
    return (None, copy.deepcopy(value))


def refusal(error: StateError) -> Outcome:
    return (error.code, str(error))
