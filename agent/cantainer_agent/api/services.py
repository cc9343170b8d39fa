"""Service methods of the agent API (any node; writes go to the leader through raft).

``service.create {name, mode?, replicas?, network, image: {reference, digest, layers, config}, command?,
entrypoint?, env?, workdir?, user?, limits?, restart?, health?, constraints?, publish?, mounts?, policy?}`` -> the
service (a volume mount gives each task its slot's own volume, ``NAME.SLOT``, and the tasks stay with
them: cluster/volumes.py; such a service updates stop-first unless its policy says otherwise)
``service.update {name, image?, command?, entrypoint?, env?, env_rm?, workdir?, user?, limits?, restart?,
health?, constraints?, publish?, mounts?, network?, replicas?, policy?, force?}`` -> the service (a new version when the
task template changes or *force*; a paused update resumes otherwise)
``service.scale {name, replicas}``, ``service.rollback {name}``, ``service.rm {name}``
``service.ls`` -> [summary], ``service.ps {name}`` -> {service, tasks, endpoints, progress}

The image's config and the options are merged as `run` merges them (api/containers.container_fields);
the options are kept with the service (``source``) so that an update changes only what it names.
Services default to ``--restart always``. The leader's controller does the rest (controllers/services.py).
"""
from __future__ import annotations

import secrets
import time
from typing import Callable

from .. import layout
from ..cluster import orchestrator
from ..cluster.liveness import down_after
from ..cluster.services import service_view
from ..cluster.specs import check_service_name
from ..cluster.views import container_view, down_hosts, service_endpoints
from ..consensus import RaftNode
from ..consensus.writes import replicate
from ..errors import NotFound
from .containers import container_fields
from .errors import raft_of
from .requests import Reads, session_of

OPTIONS = ("command", "entrypoint", "env", "workdir", "user", "limits", "restart", "health", "mounts")
SERVICE_DEFAULT_RESTART = "always"


def _template(name: str, image: dict, options: dict, network: str, constraints: list, publish: list) -> dict:
    fields = container_fields(f"{name}.1", {"image": image, **options,
                                            "restart": options.get("restart") or SERVICE_DEFAULT_RESTART})
    # gateway: the network a task creates gets one (its DNS server, egress), as `run`'s does
    return {**fields, "network": network, "constraints": constraints, "publish": publish, "gateway": True}


class ServiceHandlers:
    def __init__(self, node: str, get_raft: Callable[[], RaftNode | None], reads: Reads,
                 heartbeat_interval: float = layout.HEARTBEAT_INTERVAL) -> None:
        self._node = node
        self._get_raft = get_raft
        self._reads = reads
        self._heartbeat_interval = heartbeat_interval

    def handlers(self) -> dict[str, Callable[[dict], object]]:
        return {"service.create": self.create, "service.update": self.update, "service.scale": self.scale,
                "service.rollback": self.rollback, "service.rm": self.rm, "service.ls": self.ls,
                "service.ps": self.ps}

    def create(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        name = check_service_name(params.get("name"))
        options = {key: params[key] for key in OPTIONS if params.get(key) is not None}
        source = {"image": params.get("image"), "options": options, "network": params.get("network"),
                  "constraints": params.get("constraints") or [], "publish": params.get("publish") or []}
        spec = _template(name, source["image"], options, source["network"], source["constraints"], source["publish"])
        policy = params.get("policy") or {}
        if any(m["type"] == "volume" for m in spec.get("mounts") or ()) and isinstance(policy, dict):
            policy = {"order": "stop-first", **policy}  # one task at a time on a slot's volume, unless asked
        service = {"name": name, "id": secrets.token_hex(6), "mode": params.get("mode") or "replicated",
                   "replicas": params.get("replicas", 1), "spec": spec, "source": source, "policy": policy}
        return replicate(raft, "create_service", {"service": service, "ts": time.time()},
                         session_of(params, "service.create"))

    def update(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        name = check_service_name(params.get("name"))
        current = self._service(raft, params, name)
        source = dict(current["source"])
        options = dict(source.get("options") or {})
        changed = False
        for key in OPTIONS:
            if key == "env":
                continue
            if params.get(key) is not None:
                options[key] = params[key]
                changed = True
        if params.get("env") or params.get("env_rm"):
            env = {k: v for k, v in (options.get("env") or {}).items() if k not in (params.get("env_rm") or [])}
            env.update(params.get("env") or {})
            options["env"] = env
            changed = True
        for key in ("image", "network", "constraints", "publish"):
            if params.get(key) is not None:
                source[key] = params[key]
                changed = True
        source["options"] = options
        args: dict = {"name": name, "ts": time.time(), "force": bool(params.get("force"))}
        if changed:
            args["spec"] = _template(name, source["image"], options, source["network"], source.get("constraints")
                                     or [], source.get("publish") or [])
            args["source"] = source
        if params.get("replicas") is not None:
            args["replicas"] = params["replicas"]
        if params.get("policy"):
            args["policy"] = params["policy"]
        return replicate(raft, "update_service", args, session_of(params, "service.update"))

    def scale(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        return replicate(raft, "scale_service", {"name": params.get("name"), "replicas": params.get("replicas")},
                         session_of(params, "service.scale"))

    def rollback(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        return replicate(raft, "rollback_service", {"name": params.get("name"), "ts": time.time(),
                                                    "reason": "rollback asked for"},
                         session_of(params, "service.rollback"))

    def rm(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        return replicate(raft, "remove_service", {"name": params.get("name"), "ts": time.time()},
                         session_of(params, "service.rm"))

    def _service(self, raft: RaftNode, params: dict, name: str) -> dict:
        service = self._reads.snapshot(raft, params)["state"]["services"].get(name)
        if service is None:
            raise NotFound(f"no service named {name!r} — see `cantainer service ls`")
        return service

    def ls(self, params: dict) -> list[dict]:
        state = self._reads.snapshot(raft_of(self._get_raft), params)["state"]
        down = down_hosts(state, time.time(), self._heartbeat_interval, self._node)
        endpoints = service_endpoints(state, down)
        out = []
        for name, record in sorted(state.get("services", {}).items()):
            tasks = [c for c in state["containers"].values() if c.get("service_id") == record["id"]]
            current = [t for t in tasks if not t.get("retire") and not t.get("superseded_at")]
            out.append({**summary(record, current, self._wanted(record, state, current)),
                        "serving": len(endpoints.get(name, []))})
        return out

    def _wanted(self, record: dict, state: dict, current: list[dict]) -> int:
        """Tasks the service should have: its replicas, or (global) the hosts that can take one plus
        those that have one."""
        if record["mode"] == "replicated":
            return record["replicas"]
        now = time.time()
        hosts = orchestrator.global_hosts(record, state, now, down_after(self._heartbeat_interval, len(state["nodes"])))
        return len(set(hosts) | {t["host"] for t in current})

    def ps(self, params: dict) -> dict:
        state = self._reads.snapshot(raft_of(self._get_raft), params)["state"]
        name = check_service_name(params.get("name"))
        record = state.get("services", {}).get(name)
        if record is None:
            raise NotFound(f"no service named {name!r} — see `cantainer service ls`")
        down = down_hosts(state, time.time(), self._heartbeat_interval, self._node)
        tasks = sorted((c for c in state["containers"].values() if c.get("service_id") == record["id"]),
                       key=lambda c: (c.get("retire") is not None or c.get("superseded_at") is not None,
                                      _slot_order(c.get("slot", "")), c["created_at"]))
        current = [t for t in tasks if not t.get("retire") and not t.get("superseded_at")]
        return {"service": {**summary(record, current, self._wanted(record, state, current)), "spec": record["spec"],
                            "policy": record["policy"]},
                "tasks": [container_view(t, down) for t in tasks],
                "endpoints": service_endpoints(state, down).get(name, [])}


def _slot_order(slot: str) -> tuple:
    return (0, int(slot), "") if slot.isdigit() else (1, 0, slot)


def summary(record: dict, current: list[dict], wanted: int) -> dict:
    """A service in one line's worth: desired (*wanted*) and running tasks, image, version, update
    progress, note."""
    view = service_view(record)
    target = record["version"]
    running = [t for t in current if t["observed"]["state"] == "running"]
    updated = [t for t in current if t.get("version") == target]
    ready = [t for t in current if orchestrator.is_ready(t, True)]
    return {
        "name": record["name"], "id": record["id"], "mode": record["mode"],
        "replicas": wanted,
        "running": len(running), "ready": len(ready), "image": record["spec"]["image"],
        "version": target, "previous_version": view["previous_version"],
        "update": {**record["update"], "updated": len(updated), "total": len(current)},
        "note": (record.get("note") or {}).get("message") or None,
        "publish": record["spec"].get("publish", []), "network": record["spec"]["network"],
        "created_at": record["created_at"], "updated_at": record["updated_at"],
    }
