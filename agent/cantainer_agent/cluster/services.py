"""Services in the replicated state: desired state, versions, update progress, and task commands (pure).

A service record::

    {name, id, mode: replicated|global, replicas (replicated), spec (the task template: the container
     fields, network, layers, restart, health, constraints, publish), source (the API's inputs, kept
     to re-merge an update), version, next_version, previous: {version, spec, source} | None,
     policy: {parallelism, order: start-first|stop-first, monitor, failure_action: rollback|pause, drain},
     update: {kind: update|rollback, state: updating|paused|completed, from, to, seq, started_at,
              finished_at, message}, note: {message, at} | None (why it does not converge),
     created_at, updated_at}

Tasks are containers with ``service``, ``service_id``, ``slot``, ``version``, ``update_seq``, named
``SERVICE.SLOT``; ``place_task`` places one (``supersede``: the slot's task is renamed ``SERVICE.SLOT.ID``
and serves until its successor is ready), ``retire_task`` renames and drains one. A rollback swaps spec
and previous (a second undoes the first). Only the leader's controller issues task commands.
"""
from __future__ import annotations

import copy
import json
from typing import Any

from ..errors import AlreadyExists, NotFound, StateError
from . import specs
from .scheduler import NoHostFits, Request, place
from .volumes import slot_mounts

MODES = ("replicated", "global")
ORDERS = ("start-first", "stop-first")
FAILURE_ACTIONS = ("rollback", "pause")
POLICY_DEFAULTS = {"parallelism": 1, "order": "start-first", "monitor": 5.0, "failure_action": "rollback",
                   "drain": 2.0, "volumes": "stay"}
VOLUME_POLICIES = ("stay", "move-empty")  # a task whose volume's host is lost: waits / may move if it is empty
MAX_REPLICAS = 10000
MAX_SOURCE = 64 * 1024
UPDATE_STATES = ("updating", "paused", "completed")


def check_policy(value: Any, base: dict | None = None) -> dict:
    """An update policy, merged over *base* (or the defaults)."""
    if value is None:
        value = {}
    if not isinstance(value, dict) or set(value) - set(POLICY_DEFAULTS):
        raise StateError(f"update policy may only name {', '.join(POLICY_DEFAULTS)}")
    merged = {**(base or POLICY_DEFAULTS), **{k: v for k, v in value.items() if v is not None}}
    if type(merged["parallelism"]) is not int or not 0 <= merged["parallelism"] <= MAX_REPLICAS:
        raise StateError("update parallelism must be a number of tasks (0: all at once)")
    if merged["order"] not in ORDERS:
        raise StateError(f"update order {merged['order']!r} must be start-first or stop-first")
    if merged.get("volumes", "stay") not in VOLUME_POLICIES:
        raise StateError(f"volume policy {merged['volumes']!r} must be stay or move-empty")
    if merged["failure_action"] not in FAILURE_ACTIONS:
        raise StateError(f"update failure action {merged['failure_action']!r} must be rollback or pause")
    for key, top in (("monitor", 3600.0), ("drain", 600.0)):
        item = merged[key]
        if type(item) not in (int, float) or item != item or not 0 <= item <= top:
            raise StateError(f"update {key} must be a number of seconds from 0 to {top:g}")
        merged[key] = float(item)
    return merged


def _check_replicas(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_REPLICAS:
        raise StateError(f"replicas must be a number from 0 to {MAX_REPLICAS}")
    return value


def _check_source(value: Any) -> dict:
    if value is None:
        return {}
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError):
        raise StateError("service source must be plain JSON data") from None
    if not isinstance(value, dict) or size > MAX_SOURCE:
        raise StateError(f"service source must be an object of at most {MAX_SOURCE} bytes")
    return copy.deepcopy(value)


def service_view(record: dict) -> dict:
    """A service as the API shows it (without its source)."""
    return {key: copy.deepcopy(value) for key, value in record.items() if key not in ("source", "previous")} | {
        "previous_version": (record.get("previous") or {}).get("version")}


class ServiceCommands:
    """The service commands of ClusterState (mixed in; uses its containers, nodes and helpers)."""

    SERVICE_COMMANDS = ("create_service", "update_service", "scale_service", "rollback_service",
                        "service_update_state", "remove_service", "place_task", "retire_task", "note_service")

    services: dict
    containers: dict
    nodes: dict
    networks: dict

    # ------------------------------------------------------------------ services

    def apply_create_service(self, service: dict, ts: float) -> dict:
        if not isinstance(service, dict):
            raise StateError("a service is an object")
        name = specs.check_service_name(service.get("name"))
        existing = self.services.get(name)
        if existing is not None:
            if existing["id"] == service.get("id"):
                return service_view(existing)  # the same request again
            raise AlreadyExists(f"service {name!r} already exists — update it, or remove it first")
        service_id = service.get("id")
        if not isinstance(service_id, str) or not 1 <= len(service_id) <= 64:
            raise StateError("a service needs an id")
        mode = service.get("mode", "replicated")
        if mode not in MODES:
            raise StateError(f"service mode {mode!r} must be replicated or global")
        replicas = _check_replicas(service.get("replicas", 1)) if mode == "replicated" else None
        spec = self._check_template(service.get("spec"))
        policy = check_policy(service.get("policy"))
        ts = float(ts)
        self.services[name] = {
            "name": name, "id": service_id, "mode": mode, "replicas": replicas, "spec": spec,
            "source": _check_source(service.get("source")), "version": 1, "next_version": 2, "previous": None,
            "policy": policy,
            "update": {"kind": "update", "state": "completed", "from": None, "to": 1, "seq": 0, "started_at": ts,
                       "finished_at": ts, "message": ""},
            "created_at": ts, "updated_at": ts,
        }
        return service_view(self.services[name])

    def _service(self, name: Any) -> dict:
        specs.check_service_name(name)
        service = self.services.get(name)
        if service is None:
            raise NotFound(f"no service named {name!r} — see `cantainer service ls`")
        return service

    def apply_update_service(self, name: str, ts: float, spec: dict | None = None, source: dict | None = None,
                             replicas: int | None = None, policy: dict | None = None, force: bool = False) -> dict:
        """Change a service. A new spec (or *force*) makes a new version and starts a rolling update;
        with neither, a paused update resumes."""
        service = self._service(name)
        template = self._check_template(spec) if spec is not None else None
        new_policy = check_policy(policy, service["policy"]) if policy is not None else None
        if replicas is not None:
            if service["mode"] != "replicated":
                raise StateError(f"service {name} runs in global mode (one task per host): it has no replica count")
            _check_replicas(replicas)
        new_source = _check_source(source) if source is not None else None
        if new_policy is not None:
            service["policy"] = new_policy
        if replicas is not None:
            service["replicas"] = replicas
        update = service["update"]
        if (template is not None and template != service["spec"]) or force:
            service["previous"] = {"version": service["version"], "spec": service["spec"], "source": service["source"]}
            service["version"] = service["next_version"]
            service["next_version"] += 1
            if template is not None:
                service["spec"] = template
            if new_source is not None:
                service["source"] = new_source
            service["update"] = {"kind": "update", "state": "updating", "from": service["previous"]["version"],
                                 "to": service["version"], "seq": update["seq"] + 1, "started_at": float(ts),
                                 "finished_at": None, "message": ""}
        elif update["state"] == "paused":
            update.update(state="updating", message="resumed")
        service["updated_at"] = float(ts)
        return service_view(service)

    def apply_scale_service(self, name: str, replicas: int) -> dict:
        service = self._service(name)
        if service["mode"] != "replicated":
            raise StateError(f"service {name} runs in global mode (one task per host): it cannot be scaled")
        service["replicas"] = _check_replicas(replicas)
        return service_view(service)

    def apply_rollback_service(self, name: str, ts: float, reason: str = "") -> dict:
        """Back to the previous spec (docker's: the current one becomes the previous)."""
        service = self._service(name)
        previous = service.get("previous")
        if not previous:
            raise StateError(f"service {name} has no previous version to roll back to")
        reason = _text(reason)
        current = {"version": service["version"], "spec": service["spec"], "source": service["source"]}
        service.update(version=previous["version"], spec=previous["spec"], source=previous["source"], previous=current)
        service["update"] = {"kind": "rollback", "state": "updating", "from": current["version"],
                             "to": service["version"], "seq": service["update"]["seq"] + 1,
                             "started_at": float(ts), "finished_at": None, "message": reason}
        service["updated_at"] = float(ts)
        return service_view(service)

    def apply_service_update_state(self, name: str, seq: int, state: str, ts: float, message: str = "") -> bool:
        """The controller's verdict on update *seq*: completed or paused (stale verdicts are ignored)."""
        service = self._service(name)
        if state not in UPDATE_STATES:
            raise StateError(f"update state must be one of {', '.join(UPDATE_STATES)}")
        update = service["update"]
        if update["seq"] != seq or update["state"] == state:
            return False
        update.update(state=state, message=_text(message) or update["message"],  # a rollback keeps its reason
                      finished_at=float(ts) if state == "completed" else None)
        return True

    def apply_note_service(self, name: str, message: str, ts: float) -> bool:
        """What keeps the orchestrator from converging (e.g. no host fits), or "" once it does."""
        service = self._service(name)
        message = _text(message)
        if (service.get("note") or {}).get("message", "") == message:
            return False
        service["note"] = {"message": message, "at": float(ts)} if message else None
        return True

    def apply_remove_service(self, name: str, ts: float) -> dict:
        """Forget a service; its tasks are retired (drained, stopped, then removed by the controller)."""
        service = self._service(name)
        tasks = [task for task in self.containers.values() if task.get("service_id") == service["id"]]
        for task in tasks:
            if "retire" not in task:
                self._retire(task, float(ts), service["policy"]["drain"], hold_slot=False)
        del self.services[name]
        return {"removed": name, "tasks": len(tasks)}

    # --------------------------------------------------------------------- tasks

    def apply_place_task(self, service: str, slot: str, id: str, ts: float, down_after: float,
                         supersede: bool = False, hint: str | None = None) -> dict:
        """Create the task of *slot* on the host the scheduler picks (global: the slot's host;
        *hint*: the proposer's pick, taken if it fits — scheduler.place)."""
        record = self._service(service)
        if not isinstance(slot, str) or not specs.SLOT_RE.match(slot):
            raise StateError(f"task slot {slot!r} is invalid")
        if record["mode"] == "replicated" and not slot.isdigit():
            raise StateError(f"a replicated service's slots are numbers, not {slot!r}")
        name = specs.task_name(service, slot)
        current = self.containers.get(name)
        if current is not None and current["id"] == id:
            return copy.deepcopy(current)  # the same command again
        if current is not None and not supersede:
            raise AlreadyExists(f"task {name} exists already")
        spec = record["spec"]
        mounts = slot_mounts(spec.get("mounts") or [], slot)  # the slot's own volumes, NAME.SLOT
        movable = record["policy"].get("volumes", "stay") == "move-empty"
        pinned, moving = self._volume_pin(mounts, float(ts), float(down_after), movable)
        request = task_request(record, slot, current, pinned)
        try:
            host = place(self.nodes, self.containers, request, float(ts), float(down_after),
                         hint if isinstance(hint, str) else None)
        except NoHostFits as error:
            if pinned:
                raise NoHostFits(f"{error} (its volumes' data lives on {pinned})") from None
            raise
        moved = {name: self.volumes.pop(name) for name in moving}  # made again, empty, on the new host
        renamed = None
        if current is not None:  # start-first: the old task keeps serving until its successor is ready
            renamed = specs.retired_name(service, current.get("slot", slot), current["id"])
            self._rename(name, renamed)
            self.containers[renamed]["superseded_at"] = float(ts)
        task = {"service": service, "service_id": record["id"], "slot": slot, "version": record["version"],
                "update_seq": record["update"]["seq"]}
        try:
            return self._new_container(name, {**spec, "id": id, "name": name, **({"mounts": mounts} if mounts else {})},
                                       host, ts, placed=True, task=task, gateway=spec.get("gateway") is True)
        except StateError:
            self.volumes.update(moved)
            if renamed is not None:
                self.containers[renamed].pop("superseded_at", None)
                self._rename(renamed, name)
            raise

    def apply_retire_task(self, name: str, ts: float, hold_slot: bool = False, reason: str = "") -> dict:
        """Take a task out of its service: renamed, out of its addresses now, stopped ``drain`` later.
        *hold_slot* (stop-first): its slot gets a successor only once it is gone."""
        task = self._container(name)
        if not task.get("service_id"):
            raise StateError(f"container {name} is not a service task")
        if "retire" in task:
            return copy.deepcopy(task)
        service = next((s for s in self.services.values() if s["id"] == task["service_id"]), None)
        drain = service["policy"]["drain"] if service else 0.0
        task = self._retire(task, float(ts), drain, bool(hold_slot), _text(reason))
        return copy.deepcopy(task)

    def _retire(self, task: dict, ts: float, drain: float, hold_slot: bool, reason: str = "") -> dict:
        name = task["name"]
        if specs.TASK_NAME_RE.match(name).group(3) is None:  # still SERVICE.SLOT: free the name
            new = specs.retired_name(task["service"], task["slot"], task["id"])
            self._rename(name, new)
            task = self.containers[new]
        task["retire"] = {"at": ts, "stop_at": ts + drain, "hold_slot": hold_slot, "reason": reason}
        return task

    def _rename(self, old: str, new: str) -> None:
        if new in self.containers:
            raise AlreadyExists(f"container name {new!r} is already in use")
        record = self.containers.pop(old)
        record["name"] = new
        self.containers[new] = record
        network = self.networks.get(record["network"])
        if network is not None and network["ips"].get(record["ip"]) == old:
            network["ips"][record["ip"]] = new


def task_request(service: dict, slot: str, current: dict | None, pinned: str | None = None) -> Request:
    """What the task of *slot* asks of its host (*current*: the task it supersedes, if any; *pinned*:
    the host its volumes live on)."""
    only = (slot,) if service["mode"] == "global" else ()
    if pinned is not None:
        only = (pinned,) if not only or pinned in only else ("",)  # ("",): no host is both
    return Request.of(f"{service['name']}.{slot}", service["spec"], service=service["name"], only=only,
                      leaving=current["host"] if current is not None else None)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return value[:1024]
