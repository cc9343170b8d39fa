"""Cluster commands: `up`, `status`, `down`."""
from __future__ import annotations

import argparse
import json

from cantainer.cli import exitcodes, output
from cantainer.cli.common import load
from cantainer.cli.parser import STALE_HELP, Commands, finite_float
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
    down = commands.add("down", "stop the agents and their containers", cmd_down, examples=[
        "cantainer down inventory.toml           # agents stopped, containers stopped gracefully, state kept",
        "cantainer down --time 30                # give containers 30 s between SIGTERM and SIGKILL",
        "cantainer down --keep-containers        # only the agents: containers and the overlay keep working",
        "cantainer down --purge                  # everything cantainer wrote on the hosts removed, volumes too",
    ], description="Stop the agents (leader last), then each host's containers: SIGTERM, SIGKILL after --time;\n"
                   "a later `up` shows them exited, \"stopped by down\". Raft state, config, bundles and volumes\n"
                   "stay unless --purge (which names the volumes it deletes, host by host).")
    down.add_argument("inventory_path", nargs="?", metavar="INVENTORY", help="inventory TOML (same as -i)")
    down.add_argument("--purge", action="store_true",
                      help="also remove containers, volumes (named in the output), raft state, config, bundles and "
                           "logs")
    down.add_argument("--keep-containers", action="store_true",
                      help="stop only the agents; containers keep running (and the overlay forwarding)")
    down.add_argument("--time", type=finite_float, default=10.0,
                      help="seconds from SIGTERM to SIGKILL for each container (default 10)")
    down.add_argument("--fanout", type=int, default=32, help="hosts handled at once (default 32)")


def cmd_up(args: argparse.Namespace) -> int:
    from cantainer.preconnect import close_all, open_early

    inventory = load(args)
    if args.fanout < 1:
        raise UsageError(f"--fanout {args.fanout} must be at least 1")
    early = open_early(inventory.hosts, args.fanout)  # each sshd gets going while asyncssh is imported
    try:
        from cantainer.bootstrap import run_up
        from cantainer.lock import cluster_lock
        from cantainer.progress import UpProgress

        with cluster_lock(inventory, "up"), UpProgress(inventory) as progress:
            result = run_up(inventory, progress.report, args.fanout, early)
    finally:
        close_all(early)  # those no connection took
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
            if args.json and not args.watch:
                output.print_json(merge_inventory(status, inventory))
                return 0
            if args.json:  # --watch --json: one document per line, as `kubectl get -w -o json` streams
                while True:
                    print(json.dumps(output.json_times(merge_inventory(status, inventory)), sort_keys=True),
                          flush=True)
                    await asyncio.sleep(1.0)
                    status = await client.call("status", consistency)
            from cantainer.status_view import render_status

            width = output.terminal_width()
            if not args.watch:
                print("\n".join(render_status(merge_inventory(status, inventory), width)))
                return 0
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            console = Console()

            def view():
                return Text("\n".join(render_status(merge_inventory(status, inventory), console.width)))

            with Live(view(), console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(1.0)
                    status = await client.call("status", consistency)
                    live.update(view(), refresh=True)
        finally:
            client.close()
            client.connection.close()

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


def down_line(name: str, outcome, purge: bool) -> str:
    """What `down` did on one host, in words."""
    def count(n: int, what: str) -> str:
        return f"{n} container{'' if n == 1 else 's'} {what}"

    parts = ["agent stopped" if outcome.agent_was_running else "agent was not running"]
    if outcome.kept is not None:
        parts.append(count(outcome.kept, "left running"))
    elif outcome.kept is None and outcome.stopped is not None:
        parts.append(count(outcome.stopped, "stopped") if outcome.stopped else "no container running")
    if outcome.removed:
        parts.append(count(outcome.removed, "removed"))
    if purge:
        volumes = getattr(outcome, "volumes", [])
        if volumes:
            parts.append(f"volume{'' if len(volumes) == 1 else 's'} {', '.join(volumes)} deleted")
        parts.append("state purged")
    return f"{name}: {', '.join(parts)}"


def cmd_down(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cantainer.teardown import DownOptions, run_down

    if args.purge and args.keep_containers:
        raise UsageError("--purge and --keep-containers contradict each other", "choose one")
    if not 0 <= args.time <= 3600:
        raise UsageError(f"--time {args.time:g} is out of range", "give the seconds before SIGKILL, from 0 to 3600")
    inventory = load(args)
    options = DownOptions(purge=args.purge, keep_containers=args.keep_containers, stop_timeout=args.time)
    from cantainer.lock import cluster_lock

    console = Console(stderr=False, highlight=False)
    with cluster_lock(inventory, "down"), console.status("stopping agents and containers…"):
        result = run_down(inventory, options, args.fanout)
    for host in inventory.hosts:
        if host.name in result.hosts:
            console.print(f"[green]✓[/] {down_line(host.name, result.hosts[host.name], args.purge)}")
    for error in result.errors.values():
        console.print(f"[red]✗[/] {error}")
    return exitcodes.ERROR if result.errors else exitcodes.OK
