"""What the service orchestrator does next: a pure function of the replicated state and the time.

``plan(state, now, down_after, reschedule_after)`` → the actions (replicated commands) that move every
service toward its spec; the leader's controller (controllers/services.py) applies them, one pass
at a time, and plans again from the new state — so a plan never needs to be complete, only right.
Per service: tasks of a host gone for ``down_after + reschedule_after`` (or removed) are dropped and
their slots placed elsewhere (global tasks stay with their host); unhealthy tasks are replaced;
missing slots are placed (lowest slot numbers first) and surplus ones retired (newest first);
an update replaces outdated tasks ``parallelism`` at a time — start-first supersedes (the old task
serves until its successor is ready), stop-first retires first and holds the slot — and the next
batch waits until the new tasks have been ready (running, healthy) for ``monitor`` seconds; a new
task that exits, restarts or turns unhealthy first rolls the service back (or pauses the update).
Retired tasks leave the service's addresses at once, are stopped ``drain`` later, and removed once
stopped (or their host is gone). A task whose volumes' data is on its lost host stays with it
(unless the ``move-empty`` policy lets an empty one go), and such services are not rebalanced.
Docs: docs/design/services.md, docs/design/stacks.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from .scheduler import Load, Request, loads, why_not
from .specs import constraint_holds

GONE = ("exited", "dead")


@dataclass(frozen=True)
class Action:
    command: str
    args: dict
    why: str
    fallback: "Action | None" = None  # tried when the command is refused (start-first → stop-first)


def host_status(host: str, nodes: dict, now: float, down_after: float, reschedule_after: float) -> str:
    """``up``, ``down`` (silent for down_after) or ``lost`` (down for reschedule_after more, or removed)."""
    node = nodes.get(host)
    if node is None:
        return "lost"
    silent = now - node.get("heartbeat", 0.0)
    if silent >= down_after + reschedule_after:
        return "lost"
    return "down" if silent >= down_after else "up"


def health_of(task: dict) -> str | None:
    """None without a health check; else starting, healthy or unhealthy."""
    if not task.get("health"):
        return None
    health = task.get("observed", {}).get("health")
    return health["status"] if health else "starting"


def will_restart(task: dict) -> bool:
    """Whether the task's host restarts it after it ended (its restart policy; desired running)."""
    if task.get("desired") != "running" or "retire" in task:
        return False
    restart = task.get("restart") or {}
    policy = restart.get("policy", "no")
    if policy in ("always", "unless-stopped"):
        return True
    if policy == "on-failure":
        observed = task.get("observed", {})
        failed = observed.get("exit_code") != 0 or observed.get("state") == "dead"
        return failed and (restart.get("max") is None or observed.get("restart_count", 0) < restart["max"])
    return False


def is_ready(task: dict, host_up: bool) -> bool:
    return host_up and task.get("observed", {}).get("state") == "running" and health_of(task) in (None, "healthy")


def ready_since(task: dict) -> float:
    observed = task.get("observed", {})
    health = observed.get("health") if task.get("health") else None
    return max(observed.get("started_at") or 0.0, (health or {}).get("since") or 0.0)


def update_failure(task: dict) -> str | None:
    """Why a task made by an update counts as failed, or None."""
    observed = task.get("observed", {})
    state = observed.get("state")
    if state in GONE:
        code = observed.get("exit_code")
        reason = observed.get("reason")
        return (f"{task['name']} {state}" + (f" ({code})" if code is not None else "")
                + (f": {reason}" if reason else ""))
    if observed.get("restart_count", 0) > 0:
        return f"{task['name']} restarted"
    if health_of(task) == "unhealthy":
        output = (observed.get("health") or {}).get("output", "").strip().splitlines()
        return f"{task['name']} unhealthy" + (f": {output[-1][:200]}" if output else "")
    return None


def global_hosts(service: dict, state: dict, now: float, down_after: float, per_host: dict | None = None) -> list[str]:
    """The hosts a global service wants a task on: those that could take a new one now."""
    per_host = loads(state["containers"]) if per_host is None else per_host
    out = []
    for host in sorted(state["nodes"]):
        request = Request.of(f"{service['name']}.{host}", service["spec"], service=service["name"])
        if why_not(host, state["nodes"][host], per_host.get(host, Load()), request, now, down_after) is None:
            out.append(host)
    return out


def _slot_key(task: dict) -> tuple:
    slot = task["slot"]
    return (0, int(slot), "") if slot.isdigit() else (1, 0, slot)


def plan(state: dict, now: float, down_after: float, reschedule_after: float) -> list[Action]:
    containers = state["containers"]
    by_service: dict[str, list[dict]] = {}
    for task in containers.values():
        if task.get("service_id"):
            by_service.setdefault(task["service_id"], []).append(task)
    actions: list[Action] = []
    known = set()
    for name in sorted(state.get("services", {})):
        service = state["services"][name]
        known.add(service["id"])
        actions += _Planner(service, by_service.get(service["id"], []), state, now, down_after,
                            reschedule_after).plan()
    for service_id, tasks in sorted(by_service.items()):
        if service_id not in known:  # its service was removed: every task goes
            actions += _Planner(None, tasks, state, now, down_after, reschedule_after).plan_orphans()
    return actions


class _Planner:
    def __init__(self, service: dict | None, tasks: list[dict], state: dict, now: float, down_after: float,
                 reschedule_after: float) -> None:
        self.service = service
        self.state = state
        self.nodes = state["nodes"]
        self.now, self.down_after = now, down_after
        self.hosts = {task["host"]: host_status(task["host"], self.nodes, now, down_after, reschedule_after)
                      for task in tasks}
        self.current: dict[str, dict] = {}
        self.superseded: list[dict] = []
        self.retired: list[dict] = []
        for task in sorted(tasks, key=lambda t: (t["created_at"], t["name"])):
            if "retire" in task:
                self.retired.append(task)
            elif "superseded_at" in task:
                self.superseded.append(task)
            else:
                self.current[task["slot"]] = task
        self.actions: list[Action] = []

    # -- actions
    def _do(self, command: str, args: dict, why: str, fallback: Action | None = None) -> None:
        self.actions.append(Action(command, args, why, fallback))

    def _retire(self, task: dict, why: str, hold_slot: bool = False) -> None:
        self._do("retire_task", {"name": task["name"], "hold_slot": hold_slot, "reason": why}, why)

    def _remove(self, task: dict, why: str) -> None:
        self._do("remove_container", {"name": task["name"]}, why)

    def _place(self, slot: str, why: str) -> None:
        self._do("place_task", {"service": self.service["name"], "slot": slot, "supersede": False}, why)

    def _replace(self, task: dict, why: str) -> None:
        stop_first = Action("retire_task", {"name": task["name"], "hold_slot": True, "reason": why},
                            f"{why} (stop-first)")
        if self.service["policy"]["order"] == "stop-first":
            self.actions.append(stop_first)
        else:  # refused (no host has room for both, a published port): stop-first after all
            self._do("place_task", {"service": self.service["name"], "slot": task["slot"], "supersede": True},
                     f"{why} (start-first)", fallback=stop_first)

    def _held_by_volumes(self, task: dict) -> bool:
        """Whether *task* mounts a volume on its own host that may not be made again elsewhere (the
        service's volume policy is ``stay``, or the volume was not seen empty)."""
        movable = self.service["policy"].get("volumes", "stay") == "move-empty"
        volumes = self.state.get("volumes", {})
        for mount in task.get("mounts") or ():
            record = volumes.get(mount["source"]) if mount.get("type") == "volume" else None
            if record is not None and record["host"] == task["host"] and not (movable and record.get("empty") is True):
                return True
        return False

    def _up(self, task: dict) -> bool:
        return self.hosts[task["host"]] == "up"

    # -- the passes
    def plan(self) -> list[Action]:
        service = self.service
        replicated = service["mode"] == "replicated"
        for slot, task in list(self.current.items()):
            gone_host = task["host"] not in self.nodes
            if self.hosts[task["host"]] == "lost" and not gone_host and self._held_by_volumes(task):
                continue  # its data is there: it comes back with its host
            if self.hosts[task["host"]] == "lost" and (replicated or gone_host):
                self._remove(task, f"host {task['host']} is gone: rescheduling {task['name']}")
                del self.current[slot]
        for task in list(self.superseded):
            if self.hosts[task["host"]] == "lost":
                self._remove(task, f"host {task['host']} is gone")
                self.superseded.remove(task)
        held = {task["slot"] for task in self.retired
                if task["retire"].get("hold_slot") and self.hosts[task["host"]] != "lost"}
        updating = service["update"]["state"] == "updating"
        paused_on_failure = self._update(held) if updating else False
        if replicated:
            self._scale(held)
        else:
            self._global(held)
        if replicated and not paused_on_failure:
            self._rebalance()
        for task in list(self.current.values()):
            if health_of(task) == "unhealthy" and self._up(task) and "superseded_at" not in task \
                    and not paused_on_failure and task["slot"] not in self._replacing:
                self._replace(task, f"{task['name']} is unhealthy: replacing it")
        self._superseded()
        self._retired()
        return self.actions

    @property
    def _replacing(self) -> set[str]:
        return {a.args["slot"] for a in self.actions if a.command == "place_task"} | {
            self.state["containers"][a.args["name"]]["slot"] for a in self.actions
            if a.command == "retire_task" and a.args["name"] in self.state["containers"]}

    def _scale(self, held: set[str]) -> None:
        replicas = self.service["replicas"]
        if len(self.current) > replicas:
            newest = sorted(self.current.values(), key=lambda t: (t["created_at"], _slot_key(t)), reverse=True)
            for task in newest[:len(self.current) - replicas]:
                self._retire(task, f"scaled to {replicas}: retiring {task['name']}")
                del self.current[task["slot"]]
        live = set(self.current) | held
        number = 0
        for _ in range(replicas - len(live)):
            number += 1
            while str(number) in live:
                number += 1
            self._place(str(number), f"{self.service['name']} has {len(live)} of {replicas} tasks")
            live.add(str(number))

    def _global(self, held: set[str]) -> None:
        spec = self.service["spec"]
        per_host = loads(self.state["containers"])
        constraints = tuple(spec.get("constraints") or ())
        for slot, task in list(self.current.items()):
            labels = (self.nodes.get(task["host"]) or {}).get("labels") or {}
            if task["host"] in self.nodes and not all(constraint_holds(c, task["host"], labels) for c in constraints):
                self._retire(task, f"host {task['host']} no longer matches the constraints")
                del self.current[slot]
        for host in global_hosts(self.service, self.state, self.now, self.down_after, per_host):
            if host not in self.current and host not in held:
                self._place(host, f"global service {self.service['name']} has no task on {host}")

    def _update(self, held: set[str]) -> bool:
        """One step of a rolling update; True when it stopped on a failure (rolled back or paused)."""
        service = self.service
        update, policy = service["update"], service["policy"]
        target, seq = service["version"], update["seq"]
        made = [t for t in self.current.values() if t["version"] == target and t.get("update_seq") == seq]
        failures = [why for why in map(update_failure, made) if why]
        what = f"{'rollback' if update['kind'] == 'rollback' else 'update'} to v{target}"
        if failures:
            if update["kind"] == "update" and policy["failure_action"] == "rollback" and service.get("previous"):
                self._do("rollback_service", {"name": service["name"],
                                              "reason": f"{what} failed: {failures[0]}; rolled back"},
                         f"{what} failed ({failures[0]}): rolling back")
            else:
                self._do("service_update_state", {"name": service["name"], "seq": seq, "state": "paused",
                                                  "message": f"{what} paused: {failures[0]}"},
                         f"{what} failed ({failures[0]}): pausing")
            return True
        outdated = sorted((t for t in self.current.values() if t["version"] != target), key=_slot_key)
        in_flight = [t for t in made if not (is_ready(t, self._up(t))
                                             and self.now - ready_since(t) >= policy["monitor"])]
        parallelism = policy["parallelism"] or max(len(outdated), 1)
        budget = parallelism - len(in_flight) - len(held)
        for task in outdated:
            if budget <= 0:
                break
            if not self._up(task):
                continue  # replaced once its host is back, or rescheduled once it is gone
            self._replace(task, f"{what}: replacing {task['name']} (v{task['version']})")
            budget -= 1
        if not outdated and not in_flight and not held:
            self._do("service_update_state", {"name": service["name"], "seq": seq, "state": "completed"},
                     f"{what} completed")
        return False

    def _rebalance(self) -> None:
        """Swarm never moves a task once placed (moby #24103): a host that comes back stays empty. Here,
        once a replicated service is settled, one task at a time moves from its busiest host to an
        eligible one with at least two fewer of its tasks (start-first, like an update)."""
        service = self.service
        current = list(self.current.values())
        if any(m.get("type") == "volume" for m in service["spec"].get("mounts") or ()):
            return  # its tasks stay with their volumes' data
        if service["update"]["state"] == "updating" or self.superseded or self.retired or not current \
                or not all(is_ready(t, self._up(t)) for t in current) or self.actions:
            return
        per_host = loads(self.state["containers"])
        counts: dict[str, int] = {}
        for host in sorted(self.nodes):
            request = Request.of(f"{service['name']}.x", service["spec"], service=service["name"])
            if why_not(host, self.nodes[host], per_host.get(host, Load()), request, self.now, self.down_after) is None:
                counts[host] = 0
        for task in current:
            counts[task["host"]] = counts.get(task["host"], 0) + 1
        if not counts:
            return
        busiest = max(counts, key=lambda host: (counts[host], host))
        if counts[busiest] - min(counts.values()) < 2:
            return
        task = max((t for t in current if t["host"] == busiest), key=lambda t: (t["created_at"], _slot_key(t)))
        self._do("place_task", {"service": service["name"], "slot": task["slot"], "supersede": True},
                 f"rebalancing {service['name']}: moving {task['name']} off {busiest}")

    def _superseded(self) -> None:
        for task in self.superseded:
            successor = self.current.get(task["slot"])
            if successor is None:
                wanted = (self.service["mode"] == "replicated" and task["slot"].isdigit()
                          and int(task["slot"]) <= self.service["replicas"]) or \
                         (self.service["mode"] == "global" and task["slot"] in self.nodes)
                if not wanted:
                    self._retire(task, f"{task['name']}: its slot is gone")
            elif is_ready(successor, self._up(successor)):
                self._retire(task, f"{successor['name']} is ready: retiring {task['name']}")

    def _retired(self) -> None:
        for task in self.retired:
            state = task.get("observed", {}).get("state")
            if self.hosts[task["host"]] == "lost":
                self._remove(task, f"{task['name']}: its host {task['host']} is gone")
            elif state in GONE or state == "created":
                self._remove(task, f"{task['name']} has stopped: removing it")
            elif self.now >= task["retire"]["stop_at"] and task.get("desired") == "running":
                self._do("set_container_desired", {"name": task["name"], "desired": "stopped"},
                         f"{task['name']} drained: stopping it")

    def plan_orphans(self) -> list[Action]:
        for task in self.current.values():
            self._retire(task, f"{task['name']}: its service was removed")
        for task in self.superseded:
            self._retire(task, f"{task['name']}: its service was removed")
        self._retired()
        return self.actions
