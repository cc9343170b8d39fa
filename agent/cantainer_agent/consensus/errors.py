"""Errors of the raft node. A caller can tell what happened to a write from the class alone."""
from __future__ import annotations

from ..errors import AgentError


class RaftError(AgentError):
    """The raft node could not start or answer."""


class NotLeader(RaftError):
    def __init__(self, leader: str | None):
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class CommandFailed(RaftError):
    """A replicated command did not commit (no leader reachable, rejected by raft)."""


class NotSubmitted(CommandFailed):
    """The command never reached a leader's log (no leader reachable): safe to retry."""


class OutcomeUnknown(CommandFailed):
    """The command was submitted but its fate is unknown (leader changed, no confirmation in time)."""


class CommandRejected(CommandFailed):
    """The command committed but the state machine refused it; ``code`` says why (errors.StateError)."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code
