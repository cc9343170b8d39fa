"""`network create | ls | rm`."""
from __future__ import annotations

import argparse

from cantainer.cli import output
from cantainer.cli.common import cluster_call, consistency
from cantainer.cli.parser import STALE_HELP, Commands


def register(commands: Commands) -> None:
    verbs = commands.group("network", "create, list and remove overlay networks", examples=[
        "cantainer network create 10.1.0.0/24", "cantainer network ls", "cantainer network rm 10.1.0.0/24"])
    create = verbs.add("create", "create a network (one CIDR, one VXLAN VNI)", cmd_create, examples=[
        "cantainer network create 10.1.0.0/24    # prints the CIDR and its VNI; says so if it exists"])
    create.add_argument("cidr", metavar="CIDR", help="e.g. 10.0.0.0/24")
    listing = verbs.add("ls", "list networks", cmd_ls, examples=["cantainer network ls", "cantainer network ls --json"])
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--stale", action="store_true", help=STALE_HELP)
    remove = verbs.add("rm", "remove an unused network", cmd_rm, examples=[
        "cantainer network rm 10.1.0.0/24       # refused while containers are attached"])
    remove.add_argument("cidr", metavar="CIDR", help="e.g. 10.0.0.0/24")


def cmd_create(args: argparse.Namespace) -> int:
    network = cluster_call(args, "network.create", {"cidr": args.cidr}, write=True)
    print(f"{network['cidr']} vni {network['vni']}{'' if network.get('created', True) else ' (already exists)'}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    cluster_call(args, "network.rm", {"cidr": args.cidr}, write=True)
    print(f"removed {args.cidr}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    networks = cluster_call(args, "network.ls", consistency(args))
    if args.json:
        output.print_json(networks)
    else:
        output.print_table(["CIDR", "VNI", "HOSTS", "CONTAINERS"],
                           [[n["cidr"], n["vni"], ",".join(n["hosts"]) or "-", n["containers"]] for n in networks])
    return 0
