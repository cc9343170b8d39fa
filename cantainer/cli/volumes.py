"""`volume ls | inspect | create | rm` (the routed removal is cantainer/volumes.py)."""
from __future__ import annotations

import argparse

from cantainer.cli import output
from cantainer.cli.common import cluster_call, consistency, load, run_async
from cantainer.cli.parser import STALE_HELP, Commands


def register(commands: Commands) -> None:
    verbs = commands.group("volume", "named volumes: data that outlives containers, on one host", examples=[
        "cantainer run --host h1 -n 10.0.0.0/24 -v data:/var/lib/db -d --image db:1   # created on first use",
        "cantainer volume ls",
        "cantainer volume inspect data",
        "cantainer volume rm data", "cantainer volume create logs --host h2"],
        description="Named volumes: a directory on one host (/var/lib/cantainer/volumes/NAME), created by the\n"
                    "first container that mounts it (-v NAME:/path[:ro]) and seeded from the image's directory\n"
                    "there; containers that mount it run on its host. It outlives its containers, agent\n"
                    "restarts and host reboots, until `volume rm` (or `down --purge`).")
    ls = verbs.add("ls", "list volumes", cmd_ls, examples=[
        "cantainer volume ls", "cantainer volume ls -q", "cantainer volume ls --json"])
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--stale", action="store_true", help=STALE_HELP)
    inspect = verbs.add("inspect", "show volumes: host, path, containers", cmd_inspect, examples=[
        "cantainer volume inspect data", "cantainer volume inspect data logs --json"])
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.add_argument("--json", action="store_true", help="print JSON (a list, as docker's)")
    inspect.add_argument("--stale", action="store_true", help=STALE_HELP)
    create = verbs.add("create", "create a volume on a host (it is also created by first use)", cmd_create,
                       examples=["cantainer volume create logs --host h2"])
    create.add_argument("name", metavar="NAME", help="1-128 letters, digits, '_', '.', '-'")
    create.add_argument("--host", required=True, help="inventory host that keeps its data")
    rm = verbs.add("rm", "remove volumes and delete their data (refused while a container uses one)", cmd_rm,
                   examples=["cantainer volume rm data", "cantainer volume rm $(cantainer volume ls -q)"])
    rm.add_argument("names", nargs="+", metavar="NAME")


VOLUME_HEADER = ["NAME", "HOST", "CREATED", "CONTAINERS"]


def volume_rows(volumes: list[dict], now: float | None = None) -> list[list[str]]:
    return [[v["name"], v["host"] + (" (down)" if v.get("host_down") else ""), output.age(v["created_at"], now),
             ",".join(v["containers"]) or "-"] for v in volumes]


def cmd_ls(args: argparse.Namespace) -> int:
    volumes = cluster_call(args, "volume.ls", consistency(args))
    if args.json:
        output.print_json(volumes)
    elif args.quiet:
        for volume in volumes:
            print(volume["name"])
    else:
        output.print_table(VOLUME_HEADER, volume_rows(volumes))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from cantainer.volumes import VolumeNotFound

    volumes = {v["name"]: v for v in cluster_call(args, "volume.ls", consistency(args))}
    missing = [name for name in args.names if name not in volumes]
    if missing:
        raise VolumeNotFound(f"no volume named {missing[0]!r}", "see `cantainer volume ls`")
    found = [volumes[name] for name in args.names]
    if args.json:
        output.print_json(found)
        return 0
    for index, volume in enumerate(found):
        if index:
            print()
        for key, value in (("name", volume["name"]), ("host", volume["host"] + (" (down)" if volume["host_down"]
                                                                                  else "")),
                           ("mountpoint", volume["mountpoint"]), ("created", output.rfc3339(volume["created_at"])),
                           ("containers", ", ".join(volume["containers"]) or "-"),
                           ("data", {True: "empty", False: "not empty", None: "not seen yet"}[volume.get("empty")]),
                           ("labels", ", ".join(f"{k}={v}" for k, v in sorted(volume["labels"].items())) or "-")):
            print(f"{key:<11} {value}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    inventory = load(args)
    inventory.host(args.host)  # an unknown host is the inventory's one-line error
    volume = cluster_call(args, "volume.create", {"name": args.name, "host": args.host}, write=True)
    print(f"{volume['name']} on {volume['host']}{'' if volume.get('created', True) else ' (already exists)'}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from cantainer import volumes
    from cantainer.cli.containers import report

    results = run_async(volumes.remove(load(args), args.names))
    return report(results, lambda name, _result: f"removed {name}")
