"""Applying a plan: one operation per change, in the plan's order, each recorded once it succeeded.

Networks and volumes go through any agent; a container is run (or removed) by its host's agent
(the image pushed there first, as `run` does); services through the services API (rolling updates
are theirs), waited for until they converge. After each operation the stack record gets that
object (``stack.set``): its cluster name, the spec the file gave it and whether the stack made it —
so an apply that fails half-way leaves a record of exactly what it did, and the next plan continues
from there. Unchanged objects cost no write at all: a second apply of the same file touches nothing.
The first failure stops the apply; what follows is reported as not done.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from cantainer.client import AgentClient
from cantainer.containers import (
    ClusterView,
    HostSession,
    RunRequest,
    distribute_image,
    parse_publish,
    resent_write,
    run_params,
)
from cantainer.errors import CantainerError
from cantainer.inventory import Inventory
from cantainer.stacks.plan import Change, network_name, scoped
from cantainer.status import open_status_source
from cantainer_agent import mounts as M

SERVICE_WAIT = 300.0  # seconds a created or updated service may take to converge


class _Kept(Exception):
    """An object the stack would remove but something outside it still uses: kept, and still recorded."""


class _Made(Exception):
    """A service created as the file says that did not converge: recorded (else the next plan would
    refuse it as not the stack's), then *error*. A failed update or scale keeps the record it had,
    so the next plan offers it again."""

    def __init__(self, error: CantainerError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Outcome:
    change: Change
    result: str  # done | failed: … | not done | —
    error: CantainerError | None = None


class Applier:
    def __init__(self, inventory: Inventory, stack: dict, facts: dict, wait: bool = True,
                 report: Callable[[Outcome], None] | None = None) -> None:
        self.inventory = inventory
        self.stack = stack
        self.facts = facts
        self.wait = wait
        self.report = report or (lambda _outcome: None)
        self.client: AgentClient | None = None
        self.volume_hosts = {name: v["host"] for name, v in facts["volumes"].items()}

    async def run(self, changes: list[Change]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        failed = False
        self.client, _ = await open_status_source(self.inventory)
        try:
            for change in changes:
                if failed:
                    outcome = Outcome(change, "not done" if change.action != "unchanged" or change.op != "none"
                                      else "—")
                else:
                    try:
                        outcome = Outcome(change, await self._one(change))
                    except CantainerError as error:
                        outcome, failed = Outcome(change, f"failed: {error}", error), True
                outcomes.append(outcome)
                self.report(outcome)
        finally:
            self.client.close()
            self.client.connection.close()
        return outcomes

    # -- the cluster ------------------------------------------------------------------------------------
    async def _write(self, method: str, params: dict, timeout: float = 30.0):
        return await resent_write(self, method, params, timeout)

    async def _record(self, change: Change, remove: bool = False) -> None:
        entry = None if remove else {"kind": change.kind, "name": change.target, "spec": change.spec,
                                     "owned": change.owned}
        await self._write("stack.set", {"stack": self.stack["name"], "key": change.key, "entry": entry})

    # -- one change -------------------------------------------------------------------------------------
    async def _one(self, change: Change) -> str:
        if change.op == "none":
            return "—"
        if change.op in ("adopt", "record"):
            await self._record(change)
            return "recorded"
        if change.op == "forget":
            await self._record(change, remove=True)
            return "forgotten"
        handler = getattr(self, f"_{change.kind}_{change.op.replace('-', '_')}")
        try:
            result = await handler(change)
        except _Kept as kept:
            return str(kept)
        except _Made as made:
            await self._record(change)
            raise made.error from None
        if change.op != "retire":  # a replaced object's key already names its successor
            await self._record(change, remove=change.action == "remove")
        return result

    async def _network_create(self, change: Change) -> str:
        name = network_name(self.stack["name"], change.name)
        created = await self._write("network.create", {"cidr": change.target, "internal": bool(change.spec.get(
            "internal")), **({"name": name} if name else {})})
        return "created" if created.get("created", True) else "existed"

    async def _network_remove(self, change: Change) -> str:
        """Removed, unless containers outside the stack still use it: then kept (and still the
        stack's, so a later prune tries again) — not a failure."""
        from cantainer.client import AgentError
        from cantainer_agent import protocol

        try:
            await self._write("network.rm", {"cidr": change.target})
        except AgentError as error:
            if error.code != protocol.CONFLICT:
                raise
            raise _Kept(f"kept: {error.message.split(' — ')[0]}") from None
        return "removed"

    async def _network_retire(self, change: Change) -> str:
        """The subnet a changed network had: removed, unless something outside the stack still uses it."""
        try:
            return await self._network_remove(change)
        except _Kept as kept:
            return str(kept)

    async def _volume_create(self, change: Change) -> str:
        host = change.host or change.spec.get("host")
        made = await self._write("volume.create", {"name": change.target, "host": host,
                                                   "labels": {"stack": self.stack["name"]}})
        self.volume_hosts[change.target] = made["host"]
        return f"created on {made['host']}"

    async def _volume_first_use(self, change: Change) -> str:
        return "owned; made by its first use"

    async def _volume_remove(self, change: Change) -> str:
        from cantainer import volumes

        for _name, outcome in await volumes.remove(self.inventory, self._volume_names(change.target)):
            if isinstance(outcome, CantainerError):
                raise outcome
        return "removed, data deleted"

    def _volume_names(self, target: str) -> list[str]:
        if target.endswith(".SLOT"):
            base = target.removesuffix(".SLOT")
            return sorted(name for name in self.volume_hosts if name.startswith(base + "."))
        return [target]

    # -- containers -------------------------------------------------------------------------------------
    def _mounts(self, spec: dict) -> list[dict]:
        """The spec's mounts with the stack's volumes by their cluster names."""
        return [{**m, "source": scoped(self.stack["name"], "volume", m["source"])} if m["type"] == M.VOLUME
                else dict(m) for m in spec.get("mounts") or []]

    def _host_of(self, change: Change, mounts: list[dict]) -> str | None:
        if change.spec.get("host"):
            return change.spec["host"]
        for mount in mounts:
            host = self.volume_hosts.get(mount["source"]) if mount["type"] == M.VOLUME else None
            if host:
                return host
        pinned = [self.stack["volumes"][m["source"]]["host"] for m in change.spec.get("mounts") or []
                  if m["type"] == M.VOLUME and self.stack["volumes"][m["source"]]["host"]]
        return pinned[0] if pinned else None

    async def _container_create(self, change: Change) -> str:
        from cantainer import run_image

        spec = change.spec
        mounts = self._mounts(spec)
        host = self._host_of(change, mounts)
        resources = spec.get("resources") or {}
        request = RunRequest(host=host, network=spec["subnet"], image=spec.get("image") or "alpine",
                             name=change.target, command=spec.get("command"), env=spec.get("env") or {},
                             workdir=spec.get("workdir"), entrypoint=spec.get("entrypoint"), user=spec.get("user"),
                             memory=resources.get("memory"), cpus=resources.get("cpus"), pids=resources.get("pids"),
                             mounts=mounts, publish=parse_publish(spec.get("ports") or []),
                             restart=spec.get("restart"), health=_health(spec),
                             constraints=list(spec.get("constraints") or []))
        if host is None:  # the cluster places it (constraints), as `run` without --host
            async with ClusterView(self.inventory) as cluster:
                image = await distribute_image(self.inventory, cluster.status, request.image, request.constraints)
                created = await cluster.write("container.place", run_params(request, image), timeout=90)
        else:
            async with HostSession(self.inventory.host(host)) as session:
                image = await run_image.resolve(session, self.inventory, request.image)
                created = await session.write("container.run", run_params(request, image), timeout=60)
        for mount in mounts:
            if mount["type"] == M.VOLUME:
                self.volume_hosts.setdefault(mount["source"], created["host"])
        return f"running on {created['host']} ({created['ip']})"

    async def _container_remove(self, change: Change) -> str:
        existing = self.facts["containers"].get(change.target)
        if existing is None:
            return "already gone"
        if self.facts.get("nodes", {}).get(existing["host"]) == "down":
            await self._write("container.rm", {"name": change.target, "force": True})
        else:
            async with HostSession(self.inventory.host(existing["host"])) as session:
                await session.write("container.rm", {"name": change.target, "force": True}, timeout=60)
        return "removed"

    async def _container_replace(self, change: Change) -> str:
        await self._container_remove(change)
        return "replaced: " + await self._container_create(change)

    # -- services (the services API: cantainer/services.py) ---------------------------------------------
    def _service_params(self, change: Change) -> dict:
        spec = change.spec
        health = _health(spec)
        params = {"name": change.target, "network": spec["subnet"], "command": spec.get("command"),
                  "entrypoint": spec.get("entrypoint"), "env": spec.get("env"), "workdir": spec.get("workdir"),
                  "user": spec.get("user"), "limits": spec.get("resources"), "restart": spec.get("restart"),
                  "health": health, "constraints": spec.get("constraints"), "publish": spec.get("ports"),
                  "mounts": self._mounts(spec) or None, "policy": self._policy(spec)}
        return {key: value for key, value in params.items() if value is not None}

    @staticmethod
    def _policy(spec: dict) -> dict | None:
        policy = {**(spec.get("update") or {}),
                  **({"volumes": spec["volume_policy"]} if spec.get("volume_policy") else {})}
        return policy or None

    async def _service_create(self, change: Change) -> str:
        from cantainer import services

        spec = change.spec
        params = {**self._service_params(change), "mode": spec.get("mode") or "replicated",
                  **({"replicas": spec["replicas"] if spec.get("replicas") is not None else 1}
                     if (spec.get("mode") or "replicated") == "replicated" else {})}
        created = await services.create(self.inventory, params, spec.get("image") or "alpine")
        try:
            return await self._converged(change, f"created (version {created['version']})")
        except CantainerError as error:
            raise _Made(error) from None

    async def _service_scale(self, change: Change) -> str:
        from cantainer import services

        replicas = change.spec["replicas"] if change.spec.get("replicas") is not None else 1
        await services.cluster_write(self.inventory, "service.scale", {"name": change.target, "replicas": replicas})
        return await self._converged(change, f"scaled to {replicas}")

    async def _service_update(self, change: Change) -> str:
        from cantainer import services

        params = self._service_params(change)
        dropped = set((change.previous or {}).get("env") or {}) - set(change.spec.get("env") or {})
        if dropped:  # the update API merges variables: the ones the file no longer has are dropped by name
            params["env_rm"] = sorted(dropped)
        if (change.spec.get("mode") or "replicated") == "replicated":
            params["replicas"] = change.spec["replicas"] if change.spec.get("replicas") is not None else 1
        image = change.spec.get("image") or "alpine" if "image" in change.fields else None
        updated = await services.update(self.inventory, params, image)
        return await self._converged(change, f"updated to version {updated['version']}")

    async def _service_remove(self, change: Change) -> str:
        """The service goes, and the apply waits until its tasks have (drained, stopped, removed): only
        then are its volumes unused and its network empty, for the removals that follow."""
        from cantainer import services

        removed = await services.cluster_write(self.inventory, "service.rm", {"name": change.target})
        deadline = time.monotonic() + SERVICE_WAIT
        while True:
            listed = await self.client.call("container.ps", {"consistency": "linearizable"}, timeout=30)
            left = [c["name"] for c in listed if c.get("service") == change.target]
            if not left:
                return f"removed with its {removed.get('tasks', 0)} task{'s' if removed.get('tasks') != 1 else ''}"
            if time.monotonic() > deadline:
                raise CantainerError(f"service {change.target} was removed, but its tasks {', '.join(left)} are "
                                     f"still there after {SERVICE_WAIT:g} s", "see `cantainer ps -a`, then apply "
                                     "again")
            await asyncio.sleep(0.5)

    async def _converged(self, change: Change, done: str) -> str:
        from cantainer import services

        if not self.wait:
            return done
        doc = await services.wait(self.inventory, change.target, SERVICE_WAIT)
        update = doc["service"]["update"]
        if update["state"] == "paused" or (update["kind"] == "rollback" and "failed" in (update["message"] or "")):
            raise CantainerError(f"service {change.target}: {update['message']}",
                                 f"see `cantainer service ps {change.target}`")
        return f"{done}; {doc['service']['ready']}/{doc['service']['replicas']} ready"


def _health(spec: dict) -> dict | None:
    """The file's health table as the agent API takes it (what `run --health-cmd` sends)."""
    health = spec.get("health")
    if health and not health.get("disable"):
        return {"test": ["CMD-SHELL", health["cmd"]], **{k: v for k, v in health.items() if k != "cmd"}}
    return health or None
