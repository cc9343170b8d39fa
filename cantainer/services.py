"""Workstation side of services (and of `run` without --host): images to the hosts, then the cluster.

The cluster places tasks itself — also long after this command, when a host dies — so a service's
image must be on every host a task may land on (containers.distribute_image). The commands then
wait, as docker's do, until the service has converged (or a timeout).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from cantainer.client import SESSIONS, retrying
from cantainer.containers import distribute_image
from cantainer.errors import CantainerError
from cantainer.inventory import Inventory
from cantainer.status import open_status_source

POLL = 0.5


class ServiceError(CantainerError):
    pass


async def cluster_write(inventory: Inventory, method: str, params: dict, timeout: float = 30.0):
    """A write through whichever agent answers, with a session, resent while its outcome is unknown."""
    session = SESSIONS.next()

    async def attempt():
        client, _ = await open_status_source(inventory)
        try:
            return await client.call(method, params, timeout=timeout, session=session)
        finally:
            client.close()
            client.connection.close()

    return await retrying(attempt)


async def cluster_read(inventory: Inventory, method: str, params: dict | None = None):
    client, _ = await open_status_source(inventory)
    try:
        return await client.call(method, {"consistency": "linearizable", **(params or {})}, timeout=30)
    finally:
        client.close()
        client.connection.close()


async def _node_states(inventory: Inventory) -> dict:
    """One agent's view of which hosts are up (a status document from the way in)."""
    client, _ = await open_status_source(inventory)
    try:
        return await client.call("status", {"consistency": "stale"})
    finally:
        client.close()
        client.connection.close()


async def create(inventory: Inventory, params: dict, image_name: str) -> dict:
    status = await _node_states(inventory)
    image = await distribute_image(inventory, status, image_name, params.get("constraints") or [])
    return await cluster_write(inventory, "service.create", {**params, "image": image.params()})


async def update(inventory: Inventory, params: dict, image_name: str | None) -> dict:
    if image_name is not None:
        status = await _node_states(inventory)
        constraints = params.get("constraints")
        if constraints is None:
            current = await cluster_read(inventory, "service.ps", {"name": params["name"]})
            constraints = current["service"]["spec"].get("constraints") or []
        image = await distribute_image(inventory, status, image_name, constraints)
        params = {**params, "image": image.params()}
    return await cluster_write(inventory, "service.update", params)


def converged(doc: dict) -> bool:
    """Every task of the current version ready, nothing being replaced or retired, no update running."""
    service = doc["service"]
    update = service["update"]
    tasks = doc["tasks"]
    current = [t for t in tasks if not t["retiring"]]
    return (update["state"] != "updating" and len(current) == service["replicas"]
            and all(t["version"] == service["version"] and t["state"] == "running"
                    and (t["health"] is None or t["health"]["status"] == "healthy") for t in current)
            and not any(t["retiring"] for t in tasks))


async def wait(inventory: Inventory, name: str, timeout: float, done: Callable[[dict], bool] = converged,
               progress: Callable[[dict], None] | None = None) -> dict:
    """Poll `service.ps` until *done* (or its update is paused) or *timeout* (ServiceError)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await cluster_read(inventory, "service.ps", {"name": name})
        if progress is not None:
            progress(doc)
        if done(doc) or doc["service"]["update"]["state"] == "paused":
            return doc
        if time.monotonic() > deadline:
            service = doc["service"]
            note = f": {service['note']}" if service.get("note") else ""
            raise ServiceError(f"service {name} has {service['ready']} of {service['replicas']} tasks ready after "
                               f"{timeout:g} s{note}", f"see `cantainer service ps {name}`")
        await asyncio.sleep(POLL)
