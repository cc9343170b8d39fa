"""`python -m lab`: make, inspect and break a one-machine lab of SSH hosts."""
from __future__ import annotations

import argparse
import sys

from lab import fullos
from lab.lab import Lab, LabError, list_labs
from lab.underlay import UnderlayError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, host: bool = False) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--name", default="demo", help="lab name: 1-7 lowercase letters/digits (default: demo)")
        if host:
            sub.add_argument("host", help="host name, e.g. h1")
        return sub

    up = verb("up", "create (or complete) a lab of N hosts; prints the inventory path last")
    up.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    up.add_argument("--subnet", help="underlay IPv4 subnet (default: a free /24 in 198.18.0.0/15)")
    up.add_argument("--os", dest="os_name", metavar="OS",
                    help="full-OS hosts: boot this distribution with systemd as PID 1 (`debian`: bookworm, "
                         "built once with debootstrap); default: namespace hosts sharing this machine's files")
    down = verb("down", "remove everything the lab made")
    down.add_argument("--keep-logs", action="store_true", help="leave each host's console.log in place")
    verbs.add_parser("ls", help="list labs and their hosts")
    execute = verb("exec", "run a command inside a host's namespaces", host=True)
    execute.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    verb("cut", "take a host's underlay link down (network partition)", host=True)
    verb("heal", "bring a host's underlay link back up", host=True)
    verb("crash", "kill every process of a host at once and lose its network state (power loss)", host=True)
    verb("boot", "start a crashed host again (its disk state is kept)", host=True)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.verb == "ls":
        return show_labs()
    lab = Lab(args.name)
    if args.verb == "up":
        path = lab.up(args.hosts, args.subnet, args.os_name)
        state = lab.load()
        user = fullos.SUDO_USER if state.os else "root"
        for host in state.hosts.values():
            print(
                f"{host.name}  {host.address}  ssh -i {lab.dir / 'id_ed25519'} "
                f"-o UserKnownHostsFile={lab.dir / 'known_hosts'} {user}@{host.address}"
            )
        print(path)
    elif args.verb == "down":
        lab.down(keep_logs=args.keep_logs)
        print(f"lab {args.name} removed" + (f" (console logs kept in {lab.dir / 'hosts'})" if args.keep_logs else ""))
    elif args.verb == "exec":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise LabError("no command given — usage: python -m lab exec --name NAME HOST -- COMMAND [ARGS...]")
        return lab.exec_in_host(args.host, command)
    elif args.verb in ("cut", "heal"):
        lab.cut(args.host, up=args.verb == "heal")
    elif args.verb == "crash":
        lab.crash(args.host)
    elif args.verb == "boot":
        lab.boot(args.host)
    return 0


def show_labs() -> int:
    labs = list_labs()
    if not labs:
        print("no labs")
    for lab in labs:
        state = lab.load()
        kind = f"full-OS {state.os}" if state.os else "namespace hosts"
        print(f"lab {lab.name}  ({state.subnet}, {kind})  inventory: {lab.inventory_file}")
        for host in lab.describe():
            state = "running" if host["running"] else "stopped"
            print(
                f"  {host['host']:<5} {host['address']:<16} {state:<8} underlay {host['underlay']:<5} pid "
                f"{host['pid'] or '-'}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (LabError, UnderlayError) as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
