"""argparse, shaped for cantainer: one-line usage errors with suggestions, help with examples, and a
registry each command module adds to.

A command module has ``register(commands: Commands)``; it declares its subcommands (name, help,
examples, arguments) and the function that runs each. Adding a command is a change to one module.
A typo of a command or an option gets "did you mean" (difflib), and an unknown option points at the
help of the subcommand it was given to, not the top level.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import math
import re
from typing import Callable

from cantainer.errors import UsageError

INVENTORY_ENV = "CANTAINER_INVENTORY"
STALE_HELP = ("read the answering agent's replica as it is (fast, may miss the latest writes; "
              "default: linearizable, confirmed by the raft leader)")
Handler = Callable[[argparse.Namespace], int]
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def suggest(word: str, candidates) -> str:
    """" (did you mean X?)" for the closest candidates, or ""."""
    close = difflib.get_close_matches(word, list(candidates), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what, a suggestion, where to look) and exit code 2.

    ``dash_command``: the attribute that takes everything after ``--`` (``service create NAME [options]
    -- CMD``: options may follow the positional NAME, which argparse's REMAINDER would swallow)."""

    dash_command: str | None = None

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self.dash_command is None or args is None:
            return super().parse_known_args(args, namespace)
        args = list(args)
        tail: list[str] = []
        if "--" in args:
            cut = args.index("--")
            args, tail = args[:cut], args[cut + 1:]
        parsed, extras = super().parse_known_args(args, namespace)
        setattr(parsed, self.dash_command, tail)
        return parsed, extras

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = _INVALID_CHOICE.search(message)
        if choice and message.startswith("argument -"):  # an option's value, not a command
            word, choices = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
            option = message.split(":", 1)[0].removeprefix("argument ").split("/")[-1]
            message = f"{option} '{word}' is not one of {', '.join(choices)}{suggest(word, choices)}"
        elif choice:
            word, choices = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
            what = "command" if self.prog == "cantainer" else f"`{self.prog}` verb"
            message = f"unknown {what} '{word}'{suggest(word, choices)}"
        raise UsageError(message, f"see `{self.prog} --help`")

    def unknown_options(self, extras: list[str]) -> None:
        """Options this (sub)command does not have: one line, a suggestion, and its own help."""
        known = [option for action in self._actions for option in action.option_strings]
        words = [extra.split("=", 1)[0] for extra in extras]
        flags = [word for word in words if word.startswith("-")]
        if not flags:
            self.error(f"unexpected argument{'s' if len(words) > 1 else ''}: {' '.join(words)}")
        hints = "".join(suggest(flag, known) for flag in flags[:1])
        self.error(f"unknown option{'s' if len(flags) > 1 else ''} {' '.join(flags)}{hints}")


def finite_float(text: str) -> float:
    """argparse type: a float, but not nan or inf (they cannot travel as JSON and mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def formatter(width: int | None):
    """Help keeps the examples' line breaks; *width* fixes it (the README reference), else the terminal's."""
    if width is None:
        return argparse.RawDescriptionHelpFormatter
    return functools.partial(argparse.RawDescriptionHelpFormatter, width=width)


def examples_epilog(examples: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


class Commands:
    """The subcommands of one parser (the top level, or a group such as `network`).

    ``tool_errors`` maps a command name to the exit code of its own failures when it differs from
    the error's (run/exec: 125, as docker's, so they differ from the container's exit codes)."""

    def __init__(self, parser: Parser, dest: str, metavar: str, width: int | None = None,
                 tool_errors: dict[str, int] | None = None) -> None:
        self.parser = parser
        self._width = width
        self._sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=Parser)
        self.tool_errors = {} if tool_errors is None else tool_errors

    @property
    def choices(self) -> dict[str, Parser]:
        return self._sub.choices

    def add(self, name: str, help_text: str, handler: Handler | None = None, *, examples: list[str],
            inventory_flags: tuple[str, ...] = ("-i", "--inventory"), tool_error: int | None = None,
            description: str = "") -> Parser:
        """A subcommand running `handler(args)`; it takes the inventory as `inventory_flags`."""
        sub = self._sub.add_parser(name, help=help_text, description=description or help_text,
                                   epilog=examples_epilog(examples), formatter_class=formatter(self._width))
        sub.set_defaults(handler=handler, parser=sub)
        if tool_error is not None:
            self.tool_errors[name] = tool_error
        sub.add_argument(*inventory_flags, dest="inventory", help=f"inventory TOML (default: ${INVENTORY_ENV})")
        return sub

    def group(self, name: str, help_text: str, *, examples: list[str], dest: str = "verb",
              description: str = "") -> "Commands":
        """A subcommand with verbs of its own (`cantainer network create|ls|rm`); alone it shows its help."""
        return Commands(self.add(name, help_text, examples=examples, description=description), dest, dest.upper(),
                        self._width)
