"""Cluster commands: `up`, `status`, `down`."""
from __future__ import annotations

import argparse

from cantainer.cli import output
from cantainer.cli.common import load
from cantainer.cli.parser import STALE_HELP, Commands
from cantainer.errors import UsageError


def register(commands: Commands) -> None:
    up = commands.add("up", "push and start the agent on every host and form the cluster", cmd_up, examples=[
        "cantainer up inventory.toml            # start or update every host; a re-run changes nothing",
        "cantainer up -i inventory.toml --fanout 8",
    ], description="Push and start the agent on every host and form the cluster. Hosts that already match\n"
                   "are left alone; unreachable hosts are reported (exit 1) and change nobody's config.")
    up.add_argument("inventory_path", nargs="?", metavar="INVENTORY", help="inventory TOML (same as -i)")
    up.add_argument("--fanout", type=int, default=32, help="hosts handled at once (default 32)")
    status = commands.add("status", "show nodes, raft, networks and containers", cmd_status, examples=[
        "cantainer status",
        "cantainer status --json | jq '.nodes[] | select(.state != \"up\")'",
        "cantainer status --watch                # live until Ctrl-C; with --json: one document per line",
    ])
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C (reads are --stale)")
    status.add_argument("--stale", action="store_true", help=STALE_HELP)
    down = commands.add("down", "stop the agents and remove what they created on the hosts", cmd_down, examples=[
        "cantainer down                          # agents stopped, containers stopped, state kept",
        "cantainer down --purge                  # everything cantainer wrote on the hosts removed",
    ])
    down.add_argument("--purge", action="store_true", help="also remove raft state, config and bundles")
    down.add_argument("--fanout", type=int, default=32, help="hosts handled at once (default 32)")


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
    consistency = {"consistency": "stale" if args.stale or args.watch else "linearizable"}

    async def main() -> int:
        client, status = await open_status_source(inventory)
        try:
            status = await client.call("status", consistency)
            if args.json:
                output.print_json(merge_inventory(status, inventory))
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
                    status = await client.call("status", consistency)
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
