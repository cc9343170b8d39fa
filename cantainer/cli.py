"""The `cantainer` command line. The only place that turns errors into the one line a user sees.

Heavy imports (asyncssh, rich) happen inside the commands, so `cantainer --help` and error paths
start fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cantainer import __version__
from cantainer.errors import CantainerError, UsageError

INVENTORY_ENV = "CANTAINER_INVENTORY"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what, and where to look) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}", f"see `{self.prog} --help`")


def build_parser() -> Parser:
    parser = Parser(prog="cantainer", description="Agentless orchestrator: containers on a VXLAN overlay, over SSH.")
    parser.add_argument("--version", action="version", version=f"cantainer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def command(name: str, help_text: str) -> Parser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-i", "--inventory", help=f"inventory TOML (default: ${INVENTORY_ENV})")
        return sub

    up = command("up", "push and start the agent on every host and form the cluster")
    up.add_argument("inventory_path", nargs="?", metavar="INVENTORY", help="inventory TOML (same as -i)")
    up.add_argument("--fanout", type=int, default=32, help="hosts handled at once (default 32)")
    status = command("status", "show nodes, raft, networks and containers")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    down = command("down", "stop the agents and remove what they created on the hosts")
    down.add_argument("--purge", action="store_true", help="also remove raft state, config and bundles")
    down.add_argument("--fanout", type=int, default=32, help="hosts handled at once (default 32)")
    return parser


def inventory_path(args: argparse.Namespace) -> Path:
    chosen = getattr(args, "inventory_path", None) or args.inventory or os.environ.get(INVENTORY_ENV)
    if not chosen:
        raise UsageError("no inventory given", f"pass -i INVENTORY (or set {INVENTORY_ENV})")
    return Path(chosen)


def load(args: argparse.Namespace):
    from cantainer.inventory import load_inventory

    return load_inventory(inventory_path(args))


def cmd_up(args: argparse.Namespace) -> int:
    from cantainer.bootstrap import run_up
    from cantainer.progress import UpProgress

    inventory = load(args)
    if args.fanout < 1:
        raise UsageError(f"--fanout {args.fanout} must be at least 1")
    with UpProgress(inventory) as progress:
        result = run_up(inventory, progress.report, args.fanout)
    progress.summary(result)
    return 1 if result.errors else 0


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from cantainer.status import merge_inventory, open_status_source

    inventory = load(args)

    async def main() -> int:
        client, status = await open_status_source(inventory)
        try:
            if args.json:
                print(json.dumps(merge_inventory(status, inventory), indent=2, sort_keys=True))
                return 0
            from rich.console import Console
            from rich.live import Live

            from cantainer.status_view import render_status

            console = Console()
            if not args.watch:
                console.print(render_status(merge_inventory(status, inventory)))
                return 0
            with Live(render_status(merge_inventory(status, inventory)), console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(1.0)
                    status = await client.call("status")
                    live.update(render_status(merge_inventory(status, inventory)), refresh=True)
        finally:
            client.close()
            client.connection.close()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def cmd_down(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cantainer.teardown import run_down

    inventory = load(args)
    console = Console(stderr=False)
    with console.status("stopping agents…"):
        result = run_down(inventory, args.purge, args.fanout)
    for name in result.stopped:
        console.print(f"[green]✓[/] {name}: agent stopped{' and state purged' if args.purge else ''}")
    for error in result.errors.values():
        console.print(f"[red]✗[/] {error}", highlight=False)
    return 1 if result.errors else 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CantainerError as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cantainer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
