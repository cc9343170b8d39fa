"""Exit codes: what the CLI's exit status means, in one place.

0 success · 1 an error of the workstation side (inventory, SSH, …) · 2 a usage mistake · an agent's
error by its code, from the one table ``cantainer.client.EXIT_CODES`` (not_found 3, already_exists
4, conflict 5, invalid 6, unavailable 69, internal 70, outcome_unknown 75; a new protocol code is
added there) · 130 interrupted. `run` and `exec` exit with the container's command's code, so
their own failures use docker's instead: 125 (cantainer failed), 126 (the command cannot be
executed), 127 (the command was not found).
"""
from __future__ import annotations

OK, ERROR, USAGE, INTERNAL, INTERRUPTED = 0, 1, 2, 70, 130
TOOL_ERROR, NOT_EXECUTABLE, NOT_FOUND = 125, 126, 127

# Agent error codes whose exit code `run`/`exec` keep instead of TOOL_ERROR: they are about the
# container's command, as docker's 126/127 are.
COMMAND_CODES = frozenset({"command_not_found", "command_not_executable"})


def exit_code_for(error, tool_error: int | None) -> int:
    """The exit code for a CantainerError raised by a command whose own failures use *tool_error*."""
    if tool_error is not None and getattr(error, "code", None) not in COMMAND_CODES:
        return tool_error
    return error.exit_code
