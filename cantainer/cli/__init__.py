"""The `cantainer` command line. The only place that turns errors into the one line a user sees.

One module per command group (cluster, containers, networks) registers its subcommands; this one
builds the parser from them and runs the chosen command. Heavy imports (asyncssh, rich) happen
inside the commands, so `cantainer --help` and error paths start fast.
"""
from __future__ import annotations

import os
import sys

from cantainer import __version__
from cantainer.cli import cluster, containers, images, networks
from cantainer.cli.parser import Commands, Parser
from cantainer.errors import CantainerError

COMMAND_MODULES = (cluster, networks, containers, images)


def build_parser() -> Parser:
    parser = Parser(prog="cantainer", description="Agentless orchestrator: containers on a VXLAN overlay, over SSH.")
    parser.add_argument("--version", action="version", version=f"cantainer {__version__}")
    commands = Commands(parser, "command", "COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Everything after the first `--` is the container command, passed through untouched."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    try:
        options, command_argv = split_command(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(options)
        args.command_argv = command_argv
        return args.handler(args)
    except CantainerError as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cantainer: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug, but the user still gets one line
        if os.environ.get("CANTAINER_DEBUG"):
            raise
        print(f"cantainer: internal error: {type(error).__name__}: {error} — this is a bug; "
              "run again with CANTAINER_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 70
