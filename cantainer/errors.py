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


class HostError(CantainerError):
    """Something went wrong with one host; other hosts carry on."""

    def __init__(self, host: str, message: str, hint: str = "") -> None:
        super().__init__(f"{host}: {message}", hint)
        self.host = host


class RemoteCommandError(HostError):
    def __init__(self, host: str, argv: list[str], exit_status: int | None, stderr: str) -> None:
        import shlex

        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {exit_status}"
        shown = ["<script>" if "\n" in part else part for part in argv[:3]]
        super().__init__(host, f"`{shlex.join(shown)}{' …' if len(argv) > 3 else ''}` failed: {detail}")
        self.exit_status = exit_status
        self.stderr = stderr
