"""Exception classes shared by the agent's pure-logic modules."""
from __future__ import annotations


class StateError(ValueError):
    """A replicated command was rejected; the state is unchanged. The message is for the user."""
