"""What every API request may carry beside its parameters: a write session and a read consistency.

``session`` ``{client, seq}`` (protocol.py) makes a request's writes exactly-once: a retry of the
same request repeats the same writes, which the state machine answers from its session table.
``consistency`` is ``linearizable`` (the default: the read reflects every write acknowledged before
it began, ReadIndex — docs/design/raft.md "Reads") or ``stale`` (this node's replica as it is).
"""
from __future__ import annotations

import time
from typing import Callable

from .. import protocol
from ..consensus import NotLeader, RaftError, RaftNode
from ..consensus.node import READ_WAIT
from ..consensus.writes import Session
from ..join.wire import AuthError, SecretMismatch
from ..join.wire import request as join_request

LINEARIZABLE, STALE = "linearizable", "stale"


def session_of(params: dict, purpose: str) -> Session:
    """The writes of this request: the client's session, or (no session sent) a fresh one."""
    session = params.get("session")
    return Session.for_request(session) if session else Session.new(purpose)


def applied_before(raft: RaftNode, params: dict) -> bool:
    """Is this request a retry whose first write was already applied (the session table holds its
    outcome, or has forgotten it)? Then its answer is that outcome — which ``replicate`` returns —
    not what a check of the state as it is now would say: a `volume.rm` whose first attempt removed
    the volume, retried after another host created one of that name, must answer "removed", not "it
    is on another host"; and it must touch nothing the other request made. Reads this replica: call
    it after the request's (linearizable) read."""
    session = params.get("session")
    if not isinstance(session, dict):
        return False
    client, first = session.get("client"), Session.for_request(session).first

    def known(state) -> bool:
        record = state.sessions.clients.get(client)
        return record is not None and (first in record["done"] or first < record["floor"])

    return bool(raft.read(known))


def consistency_of(params: dict) -> str:
    consistency = params.get("consistency", LINEARIZABLE)
    if consistency not in (LINEARIZABLE, STALE):
        raise protocol.ProtocolError(protocol.BAD_REQUEST, f'"consistency" must be "{LINEARIZABLE}" or "{STALE}"')
    return consistency


class Reads:
    """Reads of the replicated state at the consistency a request asks for."""

    def __init__(self, get_raft: Callable[[], RaftNode | None], secret: bytes) -> None:
        self._get_raft = get_raft
        self._secret = secret

    def snapshot(self, raft: RaftNode, params: dict) -> dict:
        """A snapshot of this node's replica — after a read barrier unless ``stale`` was asked for."""
        if consistency_of(params) == LINEARIZABLE:
            self.barrier(raft)
        return raft.snapshot()

    def barrier(self, raft: RaftNode) -> None:
        """Return once this replica holds every write acknowledged before the call (ReadIndex):
        the leader confirms itself; another node asks the leader for the index and waits for it."""
        deadline = time.monotonic() + READ_WAIT
        try:
            status = raft.status()
            if status["role"] == "leader":
                raft.read_index(READ_WAIT)
                return
            leader = status["leader"]
            join_addr = leader and raft.read(lambda state: next(
                (rec["join_addr"] for rec in state.nodes.values() if rec["raft_addr"] == leader), None))
            if not join_addr:
                raise RaftError("no raft leader known")
            answer = join_request(join_addr, self._secret, "read_index", {}, timeout=READ_WAIT)
            if not answer.get("ok"):
                raise RaftError(answer.get("error", {}).get("message", "the leader refused"))
            raft.wait_applied(int(answer["result"]["index"]), max(0.0, deadline - time.monotonic()))
        except (NotLeader, RaftError, OSError, ValueError, KeyError, TypeError, AuthError, SecretMismatch) as error:
            raise protocol.ProtocolError(protocol.UNAVAILABLE, "no leader could confirm the current state, so no "
                                         f"answer rather than a stale one ({error}); `--stale` reads this node's "
                                         "replica as it is") from None
