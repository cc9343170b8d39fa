"""Workstation side of services (and of `run` without --host): images to the hosts, then the cluster.

The cluster places tasks itself — also long after this command, when a host dies — so a service's
image must be on every host a task may land on (containers.distribute_image). The commands then
wait, as docker's do, until the service has converged (or a timeout).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, NamedTuple

from cantainer.client import SESSIONS, retrying
from cantainer.containers import distribute_image
from cantainer.errors import CantainerError
from cantainer.inventory import Inventory
from cantainer.status import open_status_source

POLL = 0.5
# Restarts of every task of the service's version, none of them ready: its command or image is broken,
# and waiting out the timeout would not help. High enough for a task that restarts while what it
# needs comes up (the back-off makes 8 restarts last at least ~25 s).
CRASH_LOOP = 8


class ServiceError(CantainerError):
    pass


class NotConverging(ServiceError):
    """Every task of the service keeps failing: `wait` gives up before its timeout."""


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
            and all(t["version"] == service["version"] and _ready(t) for t in current)
            and not any(t["retiring"] for t in tasks))


def _ready(task: dict) -> bool:
    """Running, and healthy if it has a health check."""
    return task["state"] == "running" and (task["health"] is None or task["health"]["status"] == "healthy")


class CrashLoop(NamedTuple):
    """Which task shows that a service keeps failing, and what it does."""
    task: str  # "web.1"
    what: str  # "exited with code 1, restarted 9 times"

    def __str__(self) -> str:
        return f"{self.task} {self.what}"


def crash_looping(doc: dict) -> CrashLoop | None:
    """Pure: a ``service.ps`` answer whose service will not converge by waiting — no update running
    (its monitor decides those), every task of the current version restarted CRASH_LOOP times or
    more and none ready — as its first task and what that task does; None otherwise."""
    service = doc["service"]
    if service["update"]["state"] == "updating":
        return None
    current = sorted((t for t in doc["tasks"] if not t["retiring"] and t["version"] == service["version"]),
                     key=lambda t: t["name"])
    if not current or any(_ready(t) for t in current) or min(t["restart_count"] for t in current) < CRASH_LOOP:
        return None
    task = current[0]
    last = (task.get("restarts") or [{}])[-1]
    code = task["exit_code"] if task["exit_code"] is not None else last.get("exit_code")
    how = f"exited with code {code}" if code is not None else (task.get("reason") or "ended")
    return CrashLoop(task["name"], f"{how}, restarted {task['restart_count']} times")


async def wait(inventory: Inventory, name: str, timeout: float, done: Callable[[dict], bool] = converged,
               progress: Callable[[dict], None] | None = None) -> dict:
    """Poll `service.ps` until *done* (or its update is paused) or *timeout* (ServiceError); raises
    NotConverging as soon as every task keeps failing (``crash_looping``)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = await cluster_read(inventory, "service.ps", {"name": name})
        if progress is not None:
            progress(doc)
        if done(doc) or doc["service"]["update"]["state"] == "paused":
            return doc
        failing = crash_looping(doc)
        if failing is not None:
            raise NotConverging(f"service {name} does not come up: its tasks keep failing ({failing})",
                                f"see `cantainer logs {failing.task}`; the service stays as it is — fix it "
                                f"and update it, or remove it")
        if time.monotonic() > deadline:
            service = doc["service"]
            note = f": {service['note']}" if service.get("note") else ""
            raise ServiceError(f"service {name} has {service['ready']} of {service['replicas']} tasks ready after "
                               f"{timeout:g} s{note}", f"see `cantainer service ps {name}`")
        await asyncio.sleep(POLL)
