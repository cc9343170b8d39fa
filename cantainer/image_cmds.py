"""``cantainer image load|pull|ls|rm|prune``: the workstation's store, and the layers on hosts.

The store needs no inventory; ``pull`` reads ``[registries]`` from one if given, ``ls --hosts`` and
``prune`` (unless ``--local``) reach every host of it. A host holds an image when it has every layer.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Callable

from cantainer.errors import CantainerError, UsageError
from cantainer.image_store import ImageError, Store
from cantainer.inventory import Inventory
from cantainer.run_image import store
from cantainer_agent.images.errors import ImageSourceError
from cantainer_agent.images.manifest import Platform, host_platform
from cantainer_agent.images.reference import BadReference, parse_local, parse_reference


def _maybe_inventory(args: argparse.Namespace, load: Callable) -> Inventory | None:
    if getattr(args, "inventory", None) or os.environ.get("CANTAINER_INVENTORY"):
        return load(args)
    return None


def _human(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(size)


def cmd_load(args: argparse.Namespace) -> int:
    from cantainer.image_archive import load as load_archive

    loaded = load_archive(store(), Path(args.file))
    for name, digest in loaded:
        print(f"loaded {name} {digest}")
    return 0


def cmd_pull(args: argparse.Namespace, load: Callable) -> int:
    from cantainer import registries

    try:
        reference = parse_reference(args.reference)
        platform = Platform.parse(args.platform) if args.platform else host_platform()
    except ImageSourceError as error:
        raise UsageError(str(error), "e.g. registry.example.org:5000/team/app:1.0 --platform linux/arm64") from None
    inventory = _maybe_inventory(args, load)
    settings = inventory.registry(reference.registry) if inventory else None
    if settings is None:
        from cantainer.inventory import RegistrySettings

        settings = RegistrySettings(reference.registry)
    image = registries.pull(store(), reference, settings, platform)
    print(f"{args.reference} {image.digest} ({platform}, {len(image.layers)} layers)")
    return 0


def _layers_of(images: Store, digest: str) -> list[set[str]]:
    """For each platform the store has of image *digest*: the diff_ids of its layers."""
    out = []
    for platform in images.platforms(digest):
        try:
            image = images.image(digest, digest, Platform.parse(platform))
        except (ImageError, ImageSourceError):
            continue
        out.append({layer.diff_id for layer in image.layers})
    return out


async def _host_layers(inventory: Inventory) -> dict[str, set[str] | str]:
    from cantainer.containers import HostSession

    async def one(host) -> tuple[str, set[str] | str]:
        try:
            async with HostSession(host) as session:
                answer = await session.client.call("image.ls")
                return host.name, {layer["diff_id"] for layer in answer["layers"]}
        except CantainerError as error:
            return host.name, f"unreachable ({error.message})"
    return dict(await asyncio.gather(*(one(h) for h in inventory.hosts)))


def cmd_ls(args: argparse.Namespace, load: Callable, print_table: Callable) -> int:
    images = store()
    held: dict[str, set[str] | str] = {}
    if args.hosts:
        held = asyncio.run(_host_layers(load(args)))
    rows = []
    for name, entry in sorted(images.tags().items()):
        digest = entry.get("digest", "")
        try:
            platforms = images.platforms(digest)
            size = images.size(digest)
        except ImageError:
            platforms, size = [], 0
        row = {"name": name, "digest": digest, "platforms": platforms, "size": size, "source": entry.get("source")}
        if args.hosts:
            layer_sets = _layers_of(images, digest)
            row["hosts"] = sorted(h for h, layers in held.items()
                                  if isinstance(layers, set) and any(s and s <= layers for s in layer_sets))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if getattr(args, "quiet", False):
        for row in rows:
            print(row["name"])
        return 0
    header = ["NAME", "DIGEST", "PLATFORMS", "SIZE"] + (["HOSTS"] if args.hosts else [])
    print_table(header, [[r["name"], r["digest"][:19], ",".join(r["platforms"]) or "-", _human(r["size"])]
                         + ([",".join(r["hosts"]) or "-"] if args.hosts else []) for r in rows])
    for host, problem in held.items():
        if isinstance(problem, str):
            print(f"{host}: {problem}")
    return 0


def _store_key(name: str) -> str:
    try:
        reference = parse_local(name)
    except BadReference as error:
        raise UsageError(str(error)) from None
    if reference.digest and not reference.tag:
        return f"{reference.name}@{reference.digest}"
    return f"{reference.name}:{reference.tag}"


def cmd_rm(args: argparse.Namespace) -> int:
    images = store()
    keys = [_store_key(name) for name in args.names]
    unknown = [name for name, key in zip(args.names, keys, strict=True) if images.lookup(key) is None]
    if unknown:
        raise ImageError(f"no image named {', '.join(unknown)} in the store", "see `cantainer image ls`")
    for name, key in zip(args.names, keys, strict=True):
        images.untag(key)
        print(f"removed {name}")
    count, size = images.gc()
    if count:
        print(f"freed {count} blobs, {_human(size)}")
    return 0


def cmd_prune(args: argparse.Namespace, load: Callable) -> int:
    count, size = store().gc()
    print(f"store: freed {count} blobs, {_human(size)}")
    if args.local:
        return 0
    inventory = load(args)

    async def main() -> int:
        from cantainer.containers import HostSession

        async def one(host) -> str:
            try:
                async with HostSession(host) as session:
                    removed = (await session.client.call("image.prune", {}, timeout=300))["removed"]
                    return f"{host.name}: removed {len(removed)} unused layers"
            except CantainerError as error:
                return f"{host.name}: {error}"
        lines = await asyncio.gather(*(one(h) for h in inventory.hosts))
        for line in lines:
            print(line)
        return 1 if any("removed" not in line for line in lines) else 0
    return asyncio.run(main())


def main(args: argparse.Namespace, load: Callable, print_table: Callable) -> int:
    """Run `image VERB`; *load* reads the inventory, *print_table* is the CLI's table printer."""
    if args.verb == "load":
        return cmd_load(args)
    if args.verb == "pull":
        return cmd_pull(args, load)
    if args.verb == "ls":
        return cmd_ls(args, load, print_table)
    if args.verb == "rm":
        return cmd_rm(args)
    return cmd_prune(args, load)
