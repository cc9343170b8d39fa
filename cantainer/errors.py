"""Exception classes of the workstation side.

Every error a user can cause is one of these. They carry a short statement of what is wrong
(``message``) and, separately, how to fix it (``hint``); only the CLI edge turns them into the one
line a user sees, so library code never prints.
"""
from __future__ import annotations


class CantainerError(Exception):
    """Base of every error the CLI reports as one friendly line (exit code ``exit_code``)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class Interrupted(CantainerError):
    """Ctrl-C, after cleaning up what the command had started (the message says what)."""

    exit_code = 130


class UsageError(CantainerError):
    """The command line itself is wrong (unknown flag, missing argument)."""

    exit_code = 2
