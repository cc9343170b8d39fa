"""`network create | ls | rm`."""
from __future__ import annotations

import argparse

from cantainer.cli import output
from cantainer.cli.common import cluster_call, consistency
from cantainer.cli.parser import STALE_HELP, Commands


def register(commands: Commands) -> None:
    verbs = commands.group("network", "create, list and remove overlay networks", examples=[
        "cantainer network create 10.1.0.0/24 --name backend", "cantainer network ls",
        "cantainer network rm backend"])
    create = verbs.add("create", "create a network (one CIDR, one VXLAN VNI, a gateway)", cmd_create, examples=[
        "cantainer network create 10.1.0.0/24 --name backend   # prints name, CIDR, VNI and gateway",
        "cantainer network create 10.2.0.0/24 --name db --internal   # no egress, no published ports",
        "cantainer network create 10.3.0.0/24                  # named net-10-3-0-0-24"])
    create.add_argument("cidr", metavar="CIDR", help="e.g. 10.0.0.0/24 (its first address is the gateway)")
    create.add_argument("--name", help="1-63 lowercase letters, digits and hyphens, starting with a letter "
                                       "(default: net-A-B-C-D-PREFIX)")
    create.add_argument("--internal", action="store_true",
                        help="no egress and no published ports: its containers reach only each other")
    listing = verbs.add("ls", "list networks", cmd_ls, examples=["cantainer network ls", "cantainer network ls --json",
                                                                 "cantainer network ls -q     # names only"])
    listing.add_argument("-q", "--quiet", action="store_true", help="only names")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--stale", action="store_true", help=STALE_HELP)
    remove = verbs.add("rm", "remove an unused network", cmd_rm, examples=[
        "cantainer network rm backend            # refused while containers are attached",
        "cantainer network rm 10.1.0.0/24        # a CIDR works too"])
    remove.add_argument("network", metavar="NETWORK", help="its name or CIDR")


def cmd_create(args: argparse.Namespace) -> int:
    params = {"cidr": args.cidr, "internal": args.internal, **({"name": args.name} if args.name else {})}
    network = cluster_call(args, "network.create", params, write=True)
    print(f"{network['name']} {network['cidr']} vni {network['vni']} gateway {network.get('gateway') or '-'}"
          f"{' internal' if network.get('internal') else ''}"
          f"{'' if network.get('created', True) else ' (already exists)'}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    cluster_call(args, "network.rm", {"network": args.network}, write=True)
    print(f"removed {args.network}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    networks = cluster_call(args, "network.ls", consistency(args))
    if args.json:
        output.print_json(networks)
    elif args.quiet:
        for network in networks:
            print(network["name"])
    else:
        output.print_table(["NAME", "CIDR", "VNI", "GATEWAY", "INTERNAL", "HOSTS", "CONTAINERS"],
                           [[n["name"], n["cidr"], n["vni"], n.get("gateway") or "-",
                             "yes" if n.get("internal") else "no", ",".join(n["hosts"]) or "-", n["containers"]]
                            for n in networks])
    return 0
