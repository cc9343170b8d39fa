"""The one place where the agent's errors become protocol errors (the API boundary).

Handlers raise what they meet — a refused state command, a lost leader, a runtime failure — and
:func:`to_protocol` turns it into the code a client can act on (protocol.py lists them): a refusal
keeps the code the state machine gave it; a write that reached no leader is ``unavailable`` (safe to
retry), one that may have committed is ``outcome_unknown``. Anything else is a bug, ``internal``.
"""
from __future__ import annotations

from typing import Callable

from .. import protocol
from ..config import ConfigError
from ..consensus import CommandFailed, CommandRejected, NotSubmitted, OutcomeUnknown, RaftError, RaftNode
from ..errors import AgentError, StateError
from ..overlay import OverlayError
from ..runtime import ContainerNotFound, ContainerRunning, ImageError, RuntimeFailure, SpecError

_INPUT_ERRORS = (SpecError, ImageError, ConfigError)


def to_protocol(error: AgentError) -> protocol.ProtocolError:
    """The protocol error for an agent error (the message is kept as it is)."""
    if isinstance(error, protocol.ProtocolError):
        return error
    if isinstance(error, (StateError, CommandRejected)):  # the state machine's refusal, with its code
        return protocol.ProtocolError(error.code, str(error))
    if isinstance(error, ContainerNotFound):
        return protocol.ProtocolError(protocol.NOT_FOUND, str(error))
    if isinstance(error, ContainerRunning):
        return protocol.ProtocolError(protocol.CONFLICT, str(error))
    if isinstance(error, _INPUT_ERRORS):
        return protocol.ProtocolError(protocol.INVALID, str(error))
    if isinstance(error, OutcomeUnknown):
        return protocol.ProtocolError(protocol.OUTCOME_UNKNOWN, f"{error} — retry it (the same request is applied at "
                                      "most once) or look at the state")
    if isinstance(error, (NotSubmitted, CommandFailed)):
        return protocol.ProtocolError(protocol.UNAVAILABLE, f"{error} (is a majority of the cluster up?)")
    if isinstance(error, RaftError):
        return protocol.ProtocolError(protocol.UNAVAILABLE, str(error))
    if isinstance(error, (RuntimeFailure, OverlayError)):
        return protocol.ProtocolError(protocol.INTERNAL, str(error))
    return protocol.ProtocolError(protocol.INTERNAL, f"{type(error).__name__}: {error}")


def mapped(handler: Callable[[dict], object]) -> Callable[[dict], object]:
    """Wrap *handler* so that the agent errors it raises leave it as protocol errors."""
    def call(params: dict) -> object:
        try:
            return handler(params)
        except AgentError as error:
            raise to_protocol(error) from None
    call.__name__ = getattr(handler, "__name__", "handler")
    return call


def rejected(message: str) -> protocol.ProtocolError:
    return protocol.ProtocolError(protocol.REJECTED, message)


def raft_of(get_raft: Callable[[], RaftNode | None]) -> RaftNode:
    """The running raft node, or ``unavailable`` while the agent is still starting."""
    raft = get_raft()
    if raft is None:
        raise protocol.ProtocolError(protocol.UNAVAILABLE, "the agent is still starting")
    return raft
