"""The agent's exception root. Every error the agent raises on purpose derives from AgentError.

Each package adds subclasses per cause (``ConfigError``, ``StateError``, ``RaftError``,
``JoinError``, ``RuntimeFailure``, ``OverlayError``, ``ProtocolError``); the API turns them into
protocol errors in one place (``api/errors.py``). Messages are one line for the operator.
"""
from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class StateError(AgentError, ValueError):
    """A replicated command was rejected; the state is unchanged. The message is for the user."""
