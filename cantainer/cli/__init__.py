"""The `cantainer` command line. The only place that turns errors into the one line a user sees.

One module per command group (cluster, containers, networks, services, images) registers its subcommands; this one
builds the parser from them, runs the chosen command and maps errors to one line and an exit code
(exitcodes.py). Heavy imports (asyncssh, rich) happen inside the commands, so `cantainer --help`
and error paths start fast.
"""
from __future__ import annotations

import os
import sys

from cantainer import __version__
from cantainer.cli import cluster, completion, containers, exitcodes, images, networks, services, stacks, volumes
from cantainer.cli.parser import Commands, Parser, formatter
from cantainer.errors import CantainerError, Interrupted

COMMAND_MODULES = (cluster, stacks, networks, containers, services, volumes, images, completion)
DESCRIPTION = "Agentless orchestrator: containers on a VXLAN overlay, over SSH."
EPILOG = """examples:
  cantainer up inventory.toml                        # agents on every host, one raft cluster
  export CANTAINER_INVENTORY=inventory.toml
  cantainer run --host h1 -n 10.0.0.0/24 --name web -d sleep 3600
  cantainer exec -it web sh
  cantainer ps
  cantainer status
  cantainer down

Run `cantainer COMMAND --help` for a command's options and examples. Every command takes
-i INVENTORY before or after it (run and exec: --inventory after it) or $CANTAINER_INVENTORY."""
TOP_INVENTORY = ("-i", "--inventory")


def build(width: int | None = None) -> tuple[Parser, Commands]:
    parser = Parser(prog="cantainer", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter(width))
    parser.add_argument("--version", action="version", version=f"cantainer {__version__}")
    parser.add_argument("--no-persist", action="store_true",
                        help="connect to the hosts from this process instead of through the connection process "
                             "(also: CANTAINER_PERSIST=no)")
    # `cantainer -i inv.toml ps`, as git/docker/ansible users type it; the subcommand's own -i wins
    parser.add_argument(*TOP_INVENTORY, dest="inventory_top", metavar="INVENTORY",
                        help="inventory TOML, for any command (default: $CANTAINER_INVENTORY)")
    parser.set_defaults(handler=None, parser=parser)
    commands = Commands(parser, "command", "COMMAND", width)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser, commands


def build_parser(width: int | None = None) -> Parser:
    return build(width)[0]


def _command_name(argv: list[str]) -> str | None:
    """The subcommand's name: the first word that is neither an option nor the top-level -i's value."""
    words = iter(argv)
    for word in words:
        if word in TOP_INVENTORY:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    tool_error = None
    try:
        parser, commands = build()
        tool_error = commands.tool_errors.get(_command_name(argv) or "")
        args, extras = parser.parse_known_args(argv)
        if extras:
            args.parser.unknown_options(extras)
        if args.no_persist:
            from cantainer.persist import settings

            settings.disable()
        if args.handler is None:  # `cantainer` or `cantainer network` alone: show what there is
            print(args.parser.format_help(), end="")
            return exitcodes.OK
        return args.handler(args)
    except Interrupted as error:
        print(f"cantainer: {error}", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except CantainerError as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return exitcodes.exit_code_for(error, tool_error)
    except KeyboardInterrupt:
        print("cantainer: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except Exception as error:  # noqa: BLE001 - a bug, but the user still gets one line
        if os.environ.get("CANTAINER_DEBUG"):
            raise
        print(f"cantainer: internal error: {type(error).__name__}: {error} — this is a bug; "
              "run again with CANTAINER_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return tool_error or exitcodes.INTERNAL
