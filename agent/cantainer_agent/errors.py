"""The agent's exception root. Every error the agent raises on purpose derives from AgentError.

Each package adds subclasses per cause (``ConfigError``, ``StateError``, ``RaftError``,
``JoinError``, ``RuntimeFailure``, ``OverlayError``, ``ProtocolError``); the API turns them into
protocol errors in one place (``api/errors.py``). Messages are one line for the operator.
"""
from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class StateError(AgentError, ValueError):
    """A replicated command was refused; the state is unchanged. The message is for the user.

    ``code`` is the protocol error code a client acts on (protocol.py); it travels through raft
    with the message, so every node and every retry reports the same refusal."""

    code = "invalid"


class NotFound(StateError):
    code = "not_found"


class AlreadyExists(StateError):
    code = "already_exists"


class Conflict(StateError):
    """The request is valid but collides with the current state (an overlap, a resource in use)."""

    code = "conflict"


class Expired(StateError):
    """A retried request so old that its outcome is no longer remembered (cluster/sessions.py)."""

    code = "outcome_unknown"


STATE_ERRORS = {cls.code: cls for cls in (StateError, NotFound, AlreadyExists, Conflict, Expired)}
