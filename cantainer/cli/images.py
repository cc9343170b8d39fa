"""`image load | pull | ls | rm | prune` (the work is cantainer/image_cmds.py)."""
from __future__ import annotations

import argparse

from cantainer.cli.common import load
from cantainer.cli.output import print_table
from cantainer.cli.parser import Commands


def register(commands: Commands) -> None:
    verbs = commands.group("image", "images: load, pull, ls, rm, prune",
                           description="the workstation's image store (and the layers on hosts)", examples=[
        "cantainer image load web.tar", "cantainer image pull registry.example.org:5000/team/web:1.4",
        "cantainer image ls --hosts", "cantainer image rm team/web:1.4", "cantainer image prune"])
    load_cmd = verbs.add("load", "load a `docker save` or OCI archive (every tag in it)", cmd_image, examples=[
        "cantainer image load web.tar            # a docker save or an OCI archive: every tag in it"])
    load_cmd.add_argument("file", metavar="FILE")
    pull_cmd = verbs.add("pull", "pull an image from a registry into the store", cmd_image, examples=[
        "cantainer image pull registry.example.org:5000/team/web:1.4",
        "cantainer image pull registry.example.org:5000/team/web@sha256:… --platform linux/arm64"])
    pull_cmd.add_argument("reference", metavar="REF", help="HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")
    pull_cmd.add_argument("--platform", help="OS/ARCH[/VARIANT] (default: this machine's)")
    ls_cmd = verbs.add("ls", "list the store's images", cmd_image, examples=[
        "cantainer image ls", "cantainer image ls --hosts -i inventory.toml   # which hosts hold each image",
        "cantainer image ls -q                   # names only"])
    ls_cmd.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls_cmd.add_argument("--json", action="store_true", help="print JSON")
    ls_cmd.add_argument("--hosts", action="store_true", help="also show which hosts hold each image")
    rm_cmd = verbs.add("rm", "remove images from the store", cmd_image, examples=[
        "cantainer image rm team/web:1.4         # the name, and the blobs nothing else uses"])
    rm_cmd.add_argument("names", metavar="NAME", nargs="+")
    prune_cmd = verbs.add("prune", "remove unreferenced blobs here and unused layers on hosts", cmd_image,
                          description="remove blobs no image name reaches from the store, and layers no container "
                                      "uses from every host", examples=[
        "cantainer image prune                   # the store, and every host of the inventory",
        "cantainer image prune --local           # only the workstation's store"])
    prune_cmd.add_argument("--local", action="store_true", help="only the workstation's store")


def cmd_image(args: argparse.Namespace) -> int:
    from cantainer import image_cmds

    return image_cmds.main(args, load, print_table)
