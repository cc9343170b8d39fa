"""What the commands share: the inventory they act on and one way into the cluster."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cantainer.cli.parser import INVENTORY_ENV
from cantainer.errors import UsageError


def inventory_path(args: argparse.Namespace) -> Path:
    """The inventory a command acts on: `up`/`down`'s positional INVENTORY or -i (before or after the
    subcommand), else $CANTAINER_INVENTORY; two different ones given is a usage error, not a guess."""
    given = [p for p in (getattr(args, "inventory_path", None), getattr(args, "inventory", None),
                         getattr(args, "inventory_top", None)) if p]
    if len({os.path.normpath(p) for p in given}) > 1:
        raise UsageError(f"two inventories given: {given[0]} and {given[1]}", "pass one, as INVENTORY or with -i")
    chosen = given[0] if given else os.environ.get(INVENTORY_ENV)
    if not chosen:
        raise UsageError("no inventory given", f"pass -i INVENTORY (or set {INVENTORY_ENV})")
    return Path(chosen)


def load(args: argparse.Namespace):
    from cantainer.inventory import load_inventory

    return load_inventory(inventory_path(args))


def run_async(coroutine):
    import asyncio

    return asyncio.run(coroutine)


def cluster_call(args: argparse.Namespace, method: str, params: dict | None = None, write: bool = False):
    """Call `method` on whichever agent answers first (writes are forwarded to the leader). A write
    carries a session and is resent — to whichever agent answers then — while its outcome is unknown."""
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

    return run_async(retrying(attempt) if write else attempt())


def consistency(args: argparse.Namespace) -> dict:
    return {"consistency": "stale" if getattr(args, "stale", False) else "linearizable"}
