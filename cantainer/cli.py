"""The `cantainer` command line. The only place that turns errors into the one line a user sees.

Heavy imports (asyncssh, rich) happen inside the commands, so `cantainer --help` and error paths
start fast.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from cantainer import __version__
from cantainer.errors import CantainerError, UsageError

INVENTORY_ENV = "CANTAINER_INVENTORY"
STALE_HELP = ("read the answering agent's replica as it is (fast, may miss the latest writes; "
              "default: linearizable, confirmed by the raft leader)")


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


def build_parser() -> Parser:
    parser = Parser(prog="cantainer", description="Agentless orchestrator: containers on a VXLAN overlay, over SSH.")
    parser.add_argument("--version", action="version", version=f"cantainer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def command(name: str, help_text: str) -> Parser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # run and exec use -i for --interactive (as docker does); they take --inventory only.
        flags = ["--inventory"] if name in ("run", "exec") else ["-i", "--inventory"]
        sub.add_argument(*flags, help=f"inventory TOML (default: ${INVENTORY_ENV})")
        return sub

    up = command("up", "push and start the agent on every host and form the cluster")
    up.add_argument("inventory_path", nargs="?", metavar="INVENTORY", help="inventory TOML (same as -i)")
    up.add_argument("--fanout", type=int, default=32, help="hosts handled at once (default 32)")
    status = command("status", "show nodes, raft, networks and containers")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C (reads are --stale)")
    status.add_argument("--stale", action="store_true", help=STALE_HELP)
    network = command("network", "create, list and remove overlay networks")
    network_verbs = network.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    network_verbs.required = True
    for verb, text in (("create", "create a network (one CIDR, one VXLAN VNI)"), ("rm", "remove an unused network")):
        sub = network_verbs.add_parser(verb, help=text, description=text)
        sub.add_argument("cidr", metavar="CIDR", help="e.g. 10.0.0.0/24")
    listing = network_verbs.add_parser("ls", help="list networks", description="list networks")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--stale", action="store_true", help=STALE_HELP)
    for sub in network_verbs.choices.values():
        sub.add_argument("-i", "--inventory", help=f"inventory TOML (default: ${INVENTORY_ENV})")
    run = command("run", "start a container on a host: cantainer run --host H -n CIDR [opts] [-- CMD ARGS...]")
    run.add_argument("--host", required=True, help="inventory host to run on")
    run.add_argument("-n", "--network", required=True, metavar="CIDR", help="network, created on first use")
    run.add_argument("--name", help="unique container name (default: generated)")
    run.add_argument("--image", default="alpine",
                     help="alpine, an [images.NAME], NAME:TAG (image load/pull) or HOST[:PORT]/REPO[:TAG|@DIGEST]")
    run.add_argument("-d", "--detach", action="store_true", help="print name and IP and return")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    run.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    run.add_argument("-w", "--workdir", help="working directory inside the container (default: the image's, or /)")
    run.add_argument("--user", "-u", help="NAME|UID[:GROUP|GID] to run as (default: the image's User, or root)")
    run.add_argument("--entrypoint", help="replace the image's Entrypoint (and drop its Cmd); '' clears it")
    run.add_argument("--memory", help="memory limit, e.g. 256m")
    run.add_argument("--cpus", type=finite_float, help="CPU limit, e.g. 0.5")
    run.add_argument("--pids", type=int, help="maximum number of processes")
    execute = command("exec", "run a command in a running container: cantainer exec NAME -- CMD ARGS...")
    execute.add_argument("name", metavar="NAME")
    execute.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    execute.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    logs = command("logs", "print a container's output")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following until the container exits")
    stop = command("stop", "stop a container (SIGTERM, then SIGKILL)")
    stop.add_argument("name", metavar="NAME")
    stop.add_argument("--time", type=finite_float, default=10.0, help="seconds before SIGKILL (default 10)")
    rm = command("rm", "remove a stopped container and release its address")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("-f", "--force", action="store_true", help="stop it first if it runs")
    ps = command("ps", "list containers")
    ps.add_argument("-a", "--all", action="store_true", help="include exited containers")
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.add_argument("--stale", action="store_true", help=STALE_HELP)
    image = commands.add_parser("image", help="images: load, pull, ls, rm, prune",
                                description="the workstation's image store (and the layers on hosts)")
    image_verbs = image.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    image_verbs.required = True
    load_cmd = image_verbs.add_parser("load", help="load a `docker save` or OCI archive (every tag in it)",
                                      description="load a `docker save` or OCI archive (every tag in it)")
    load_cmd.add_argument("file", metavar="FILE")
    pull_cmd = image_verbs.add_parser("pull", help="pull an image from a registry into the store",
                                      description="pull an image from a registry into the store")
    pull_cmd.add_argument("reference", metavar="REF", help="HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")
    pull_cmd.add_argument("--platform", help="OS/ARCH[/VARIANT] (default: this machine's)")
    ls_cmd = image_verbs.add_parser("ls", help="list the store's images", description="list the store's images")
    ls_cmd.add_argument("--json", action="store_true", help="print JSON")
    ls_cmd.add_argument("--hosts", action="store_true", help="also show which hosts hold each image")
    rm_cmd = image_verbs.add_parser("rm", help="remove images from the store",
                                    description="remove images from the store")
    rm_cmd.add_argument("names", metavar="NAME", nargs="+")
    prune_cmd = image_verbs.add_parser("prune", help="remove unreferenced blobs here and unused layers on hosts",
                                       description="remove blobs no image name reaches from the store, and layers no "
                                                   "container uses from every host")
    prune_cmd.add_argument("--local", action="store_true", help="only the workstation's store")
    for sub in image_verbs.choices.values():
        sub.add_argument("-i", "--inventory", help=f"inventory TOML (default: ${INVENTORY_ENV})")
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

    consistency = {"consistency": "stale" if args.stale or args.watch else "linearizable"}

    async def main() -> int:
        client, status = await open_status_source(inventory)
        try:
            status = await client.call("status", consistency)
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


def cluster_call(args: argparse.Namespace, method: str, params: dict | None = None, write: bool = False):
    """Call `method` on whichever agent answers first (writes are forwarded to the leader). A write
    carries a session and is resent — to whichever agent answers then — while its outcome is unknown."""
    import asyncio

    from cantainer.client import SESSIONS, retrying
    from cantainer.status import open_status_source

    inventory = load(args)
    session = SESSIONS.next() if write else None

    async def attempt():
        client, _ = await open_status_source(inventory)
        try:
            return await client.call(method, params or {}, session=session)
        finally:
            client.close()
            client.connection.close()

    return asyncio.run(retrying(attempt) if write else attempt())


def consistency(args: argparse.Namespace) -> dict:
    return {"consistency": "stale" if getattr(args, "stale", False) else "linearizable"}


def cmd_network(args: argparse.Namespace) -> int:
    if args.verb == "create":
        network = cluster_call(args, "network.create", {"cidr": args.cidr}, write=True)
        print(f"{network['cidr']} vni {network['vni']}{'' if network.get('created', True) else ' (exists)'}")
    elif args.verb == "rm":
        cluster_call(args, "network.rm", {"cidr": args.cidr}, write=True)
        print(f"removed {args.cidr}")
    else:
        networks = cluster_call(args, "network.ls", consistency(args))
        if args.json:
            print(json.dumps(networks, indent=2, sort_keys=True))
        else:
            print_table(["CIDR", "VNI", "HOSTS", "CONTAINERS"],
                        [[n["cidr"], n["vni"], ",".join(n["hosts"]) or "-", n["containers"]] for n in networks])
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    containers = cluster_call(args, "container.ps", consistency(args))
    if not args.all:
        containers = [c for c in containers if c["state"] not in ("exited", "dead")]
    if args.json:
        print(json.dumps(containers, indent=2, sort_keys=True))
        return 0
    rows = []
    for c in containers:
        state = c["state"] if c["exit_code"] is None else f"{c['state']} ({c['exit_code']})"
        rows.append([c["name"], c["host"], c["network"], c["ip"], state, c["image"],
                     ",".join(c.get("ports") or []) or "-", " ".join(c["command"])[:40]])
    print_table(["NAME", "HOST", "NETWORK", "IP", "STATE", "IMAGE", "PORTS", "COMMAND"], rows)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from cantainer import image_cmds

    return image_cmds.main(args, load, print_table)


def run_async(coroutine):
    import asyncio

    return asyncio.run(coroutine)


def cmd_run(args: argparse.Namespace) -> int:
    from cantainer import containers

    if (args.interactive or args.tty) and args.detach:
        raise UsageError(
            "-d cannot be combined with -i/-t", "use `cantainer exec -it NAME -- sh` on a detached container"
        )
    if args.tty and not containers.stdin_is_tty():
        raise UsageError("-t needs a terminal on stdin and stdout", "drop -t when piping")
    request = containers.RunRequest(
        host=args.host, network=args.network, image=args.image, name=args.name,
        command=args.command_argv or None, env=containers.parse_env(args.env), workdir=args.workdir,
        entrypoint=args.entrypoint, user=args.user,
        memory=containers.parse_size(args.memory) if args.memory else None, cpus=args.cpus, pids=args.pids,
    )
    if request.workdir is not None and not request.workdir.startswith("/"):
        raise UsageError(f"-w {request.workdir!r} is not an absolute path", "write it like -w /app")
    if request.cpus is not None and request.cpus <= 0 or request.pids is not None and request.pids <= 0:
        raise UsageError("--cpus and --pids must be positive")
    return run_async(containers.run(load(args), request, args.detach, args.interactive, args.tty))


def cmd_exec(args: argparse.Namespace) -> int:
    from cantainer import containers

    if not args.command_argv:
        raise UsageError("no command given", "write it after --, e.g. cantainer exec web -- cat /etc/hostname")
    if args.tty and not containers.stdin_is_tty():
        raise UsageError("-t needs a terminal on stdin and stdout", "drop -t when piping")
    return run_async(containers.exec_in(load(args), args.name, args.command_argv, args.interactive, args.tty))


def cmd_logs(args: argparse.Namespace) -> int:
    from cantainer import containers

    run_async(containers.logs(load(args), args.name, args.follow))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from cantainer import containers

    if not 0 <= args.time <= 3600:
        raise UsageError(f"--time {args.time:g} is out of range", "give the seconds before SIGKILL, from 0 to 3600")
    result = run_async(containers.stop(load(args), args.name, args.time))
    print(f"{args.name} {result.get('state', 'stopped')}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from cantainer import containers

    run_async(containers.remove(load(args), args.name, args.force))
    print(f"removed {args.name}")
    return 0


def print_table(header: list[str], rows: list[list]) -> None:
    """Plain aligned columns (pipes and scripts read these; `status` is the rich view)."""
    cells = [header] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down, "network": cmd_network, "ps": cmd_ps,
            "run": cmd_run, "exec": cmd_exec, "logs": cmd_logs, "stop": cmd_stop, "rm": cmd_rm, "image": cmd_image}


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
        return COMMANDS[args.command](args)
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


if __name__ == "__main__":
    sys.exit(main())
