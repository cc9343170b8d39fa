"""argparse, shaped for cantainer: one-line usage errors, and a registry each command module adds to.

A command module has ``register(commands: Commands)``; it declares its subcommands (name, help,
arguments) and the function that runs each. Adding a command is a change to one module.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from cantainer.errors import UsageError

INVENTORY_ENV = "CANTAINER_INVENTORY"
STALE_HELP = ("read the answering agent's replica as it is (fast, may miss the latest writes; "
              "default: linearizable, confirmed by the raft leader)")
Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what, and where to look) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}", f"see `{self.prog} --help`")


def finite_float(text: str) -> float:
    """argparse type: a float, but not nan or inf (they cannot travel as JSON and mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


class Commands:
    """The subcommands of one parser (the top level, or a group such as `network`)."""

    def __init__(self, parser: Parser, dest: str, metavar: str) -> None:
        self._sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=Parser)
        self._sub.required = True

    def add(self, name: str, help_text: str, handler: Handler | None = None, *,
            inventory_flags: tuple[str, ...] = ("-i", "--inventory"), description: str = "") -> Parser:
        """A subcommand running `handler(args)`; it takes the inventory as `inventory_flags`."""
        sub = self._sub.add_parser(name, help=help_text, description=description or help_text)
        if handler is not None:
            sub.set_defaults(handler=handler)
        sub.add_argument(*inventory_flags, dest="inventory", help=f"inventory TOML (default: ${INVENTORY_ENV})")
        return sub

    def group(self, name: str, help_text: str, dest: str = "verb", description: str = "") -> "Commands":
        """A subcommand with verbs of its own (`cantainer network create|ls|rm`)."""
        return Commands(self.add(name, help_text, description=description), dest, dest.upper())
