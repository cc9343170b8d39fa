"""Services in the replicated state and the orchestrator's plans, driven to convergence (pure).

``Sim`` plays the leader's controller (plan → commands) and the hosts (a placed task runs at once,
a stopped one exits), with a clock the test moves: every step the orchestrator takes is a command
the state machine checks.
"""
from __future__ import annotations

import itertools
import pickle

import pytest

from cantainer_agent.cluster import orchestrator
from cantainer_agent.cluster.state import ClusterState
from cantainer_agent.errors import AlreadyExists, NotFound, StateError

LAYER = "sha256:" + "a" * 64
DOWN_AFTER, RESCHEDULE_AFTER = 6.0, 10.0


def template(command=("serve", "v1"), **extra) -> dict:
    return {"image": "app", "image_digest": "sha256:" + "b" * 64, "command": list(command), "network": "10.0.0.0/24",
            "layers": [LAYER], "restart": "always", **extra}


class Sim:
    def __init__(self, hosts=("h1", "h2", "h3"), labels: dict | None = None) -> None:
        self.state = ClusterState()
        self.now = 1000.0
        self.ids = (f"{n:012x}" for n in itertools.count(0xa00000000000))
        for index, name in enumerate(hosts, start=1):
            self.state.apply_register_node(name, f"10.9.0.{index}", f"10.9.0.{index}:7480",
                                           f"10.9.0.{index}:7481", "0.1", "b", self.now,
                                           labels=(labels or {}).get(name, {}), capacity={"memory": 1 << 32,
                                                                                           "cpus": 4.0},
                                           layers=[LAYER])
        self.dead: set[str] = set()  # crashed hosts: no heartbeats, nothing reported
        self.unhealthy: set[str] = set()  # versions whose tasks fail their health check
        self.crashing: set[int] = set()  # versions whose tasks exit at once
        self.log: list[orchestrator.Action] = []

    def create(self, name="web", replicas=3, mode="replicated", policy=None, **extra) -> dict:
        return self.state.apply_create_service({"name": name, "id": f"svc-{name}", "mode": mode, "replicas": replicas,
                                                "spec": template(**extra), "policy": policy or {}}, self.now)

    def tick(self, seconds: float = 0.5) -> list[orchestrator.Action]:
        """Time passes; live hosts heartbeat and run what they were given; the leader plans once."""
        self.now += seconds
        for name in self.state.nodes:
            if name not in self.dead:
                self.state.apply_heartbeat(name, self.now)
        self._hosts()
        actions = orchestrator.plan(self.state.to_dict(), self.now, DOWN_AFTER, RESCHEDULE_AFTER)
        for action in actions:
            self.apply(action)
        self.log += actions
        self._hosts()
        return actions

    def apply(self, action: orchestrator.Action) -> None:
        args = dict(action.args)
        if action.command == "place_task":
            args.update(id=next(self.ids), ts=self.now, down_after=DOWN_AFTER)
        elif action.command in ("retire_task", "rollback_service", "service_update_state"):
            args["ts"] = self.now
        try:
            self.state.apply_command(action.command, args)
        except StateError:
            if action.fallback is None:
                raise
            self.apply(action.fallback)

    def _hosts(self) -> None:
        for task in list(self.state.containers.values()):
            if task["host"] in self.dead:
                continue
            observed = task["observed"]
            if task["desired"] == "stopped" and observed["state"] == "running":
                self.report(task, "exited", exit_code=143)
            elif observed["state"] == "created" and task["desired"] == "running":
                if task["version"] in self.crashing:
                    self.report(task, "exited", exit_code=1, restart_count=1)
                else:
                    health = None
                    if task.get("health"):
                        status = "unhealthy" if task["version"] in self.unhealthy else "healthy"
                        health = {"status": status, "since": self.now, "streak": 0, "output": ""}
                    self.report(task, "running", health=health)

    def report(self, task: dict, state: str, **extra) -> None:
        observed = {"state": state, "exit_code": extra.pop("exit_code", None), "pid": 1, "started_at": self.now,
                    "finished_at": self.now if state == "exited" else None, "reason": None, **extra}
        self.state.apply_container_observed(task["name"], task["host"], observed, self.now)

    def run_until(self, done, limit: int = 200, step: float = 0.5) -> None:
        for _ in range(limit):
            if done():
                return
            self.tick(step)
        raise AssertionError(f"did not converge; last actions: {[a.why for a in self.log[-5:]]}")

    # views
    def tasks(self, service="web", current_only=True) -> dict[str, dict]:
        return {t["name"]: t for t in self.state.containers.values() if t.get("service") == service
                and (not current_only or ("retire" not in t and "superseded_at" not in t))}

    def running(self, service="web") -> dict[str, dict]:
        return {n: t for n, t in self.tasks(service).items() if t["observed"]["state"] == "running"}

    def hosts_of(self, service="web") -> list[str]:
        return sorted(t["host"] for t in self.running(service).values())

    def settled(self, service="web", count=3) -> bool:
        svc = self.state.services[service]
        every = self.tasks(service, current_only=False)
        return (len(self.running(service)) == count and len(every) == count
                and svc["update"]["state"] != "updating")


def test_a_service_gets_its_tasks_spread_over_the_hosts():
    sim = Sim()
    sim.create(replicas=3)
    sim.run_until(lambda: sim.settled())
    assert sorted(sim.tasks()) == ["web.1", "web.2", "web.3"]
    assert sim.hosts_of() == ["h1", "h2", "h3"]
    assert all(t["restart"] == {"policy": "always", "max": None} for t in sim.tasks().values())
    assert sim.tick() == []  # converged: nothing more to do


def test_scale_up_adds_the_lowest_free_slots_and_down_retires_the_newest():
    sim = Sim()
    sim.create(replicas=2)
    sim.run_until(lambda: sim.settled(count=2))
    sim.state.apply_scale_service("web", 4)
    sim.run_until(lambda: sim.settled(count=4))
    assert sorted(sim.tasks()) == ["web.1", "web.2", "web.3", "web.4"]
    newest = max(sim.tasks().values(), key=lambda t: (t["created_at"], int(t["slot"])))["name"]
    sim.state.apply_scale_service("web", 3)
    sim.tick()
    retired = [t for t in sim.tasks(current_only=False).values() if "retire" in t]
    assert [t["slot"] for t in retired] == [newest.split(".")[1]]
    assert retired[0]["name"].startswith(newest + ".")  # renamed: SERVICE.SLOT.ID
    sim.run_until(lambda: sim.settled(count=3))


def test_a_retired_task_leaves_at_once_is_stopped_after_drain_then_removed():
    sim = Sim()
    sim.create(replicas=1, policy={"drain": 2.0})
    sim.run_until(lambda: sim.settled(count=1))
    sim.state.apply_scale_service("web", 0)
    sim.tick(0.1)
    (task,) = sim.tasks(current_only=False).values()
    assert task["retire"]["stop_at"] == task["retire"]["at"] + 2.0 and task["desired"] == "running"
    sim.tick(1.0)
    assert sim.state.containers[task["name"]]["desired"] == "running"  # still draining
    sim.tick(1.5)
    assert task["name"] not in sim.state.containers or sim.state.containers[task["name"]]["desired"] == "stopped"
    sim.run_until(lambda: not sim.tasks(current_only=False))


def test_tasks_of_a_lost_host_are_rescheduled_and_never_while_it_is_only_down():
    sim = Sim()
    sim.create(replicas=3)
    sim.run_until(lambda: sim.settled())
    moved = next(t for t in sim.tasks().values() if t["host"] == "h3")
    sim.dead.add("h3")
    sim.tick(DOWN_AFTER + RESCHEDULE_AFTER - 1.0)
    assert sim.state.containers[moved["name"]]["host"] == "h3"  # down, not yet lost: it stays
    sim.tick(1.5)
    sim.run_until(lambda: len(sim.running()) == 3 and all(t["host"] != "h3" for t in sim.running().values()))
    assert sim.state.containers[moved["name"]]["id"] != moved["id"]  # a new task in the same slot
    # h3 returns: nothing of it is in the state any more (its agent removes the leftover), and the
    # settled service moves one task back to the empty host (Swarm never rebalances).
    sim.dead.discard("h3")
    sim.run_until(lambda: sim.hosts_of() == ["h1", "h2", "h3"] and sim.settled())


def test_a_global_service_runs_one_task_per_matching_host():
    sim = Sim(hosts=("h1", "h2", "h3"), labels={"h1": {"zone": "a"}, "h2": {"zone": "a"}, "h3": {"zone": "b"}})
    sim.create(name="agent", mode="global", replicas=None, constraints=["label.zone==a"])
    sim.run_until(lambda: len(sim.running("agent")) == 2)
    assert sorted(sim.tasks("agent")) == ["agent.h1", "agent.h2"]
    assert [t["host"] for t in sorted(sim.tasks("agent").values(), key=lambda t: t["name"])] == ["h1", "h2"]
    sim.dead.add("h2")
    sim.tick(DOWN_AFTER + RESCHEDULE_AFTER + 1.0)
    assert "agent.h2" in sim.state.containers  # a global task belongs to its host: never moved
    with pytest.raises(StateError, match="global mode"):
        sim.state.apply_scale_service("agent", 3)


def rolling(sim: Sim, **policy) -> None:
    sim.create(replicas=3, policy={"monitor": 2.0, **policy}, health={"test": ["CMD", "check"]})
    sim.run_until(lambda: sim.settled())


def update(sim: Sim, version_command=("serve", "v2")) -> dict:
    return sim.state.apply_update_service("web", sim.now, spec=template(command=version_command,
                                                                        health={"test": ["CMD", "check"]}))


def test_a_start_first_update_replaces_one_task_at_a_time_after_the_monitor_period():
    sim = Sim()
    rolling(sim)
    assert update(sim)["version"] == 2
    serving_counts, new_batches = [], []
    for _ in range(80):
        sim.tick(0.5)
        ready = [t for t in sim.tasks(current_only=False).values()
                 if orchestrator.is_ready(t, True) and "retire" not in t]
        serving_counts.append(len(ready))
        new_batches.append(sum(1 for t in sim.tasks().values() if t["version"] == 2))
        if sim.state.services["web"]["update"]["state"] == "completed" and sim.settled():
            break
    assert sim.state.services["web"]["update"]["state"] == "completed"
    assert all(t["version"] == 2 for t in sim.tasks().values())
    assert min(serving_counts) >= 3  # start-first: never fewer than 3 serving
    steps = [b for a, b in zip([0, *new_batches], new_batches, strict=False) if b != a]
    assert steps == [1, 2, 3]  # one task at a time
    first, second = (next(i for i, n in enumerate(new_batches) if n >= k) for k in (1, 2))
    assert (second - first) * 0.5 >= 2.0  # the next batch waited for the monitor period


def test_a_stop_first_update_holds_the_slot_until_the_old_task_is_gone():
    sim = Sim()
    rolling(sim, order="stop-first", parallelism=2, drain=0.0)
    update(sim)
    sim.tick(0.1)
    retired = [t for t in sim.tasks(current_only=False).values() if "retire" in t]
    assert len(retired) == 2 and all(t["retire"]["hold_slot"] for t in retired)
    assert not [t for t in sim.tasks().values() if t["version"] == 2]  # nothing new before they are gone
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "completed" and sim.settled())
    assert all(t["version"] == 2 for t in sim.tasks().values())


def test_an_unhealthy_update_rolls_back_by_itself_and_keeps_the_old_tasks_serving():
    sim = Sim()
    rolling(sim)
    old = {t["id"] for t in sim.tasks().values()}
    sim.unhealthy.add(2)
    update(sim)
    sim.run_until(lambda: sim.state.services["web"]["update"]["kind"] == "rollback")
    service = sim.state.services["web"]
    assert service["version"] == 1 and "update to v2 failed: web." in service["update"]["message"]
    assert "unhealthy" in service["update"]["message"]
    sim.run_until(lambda: service["update"]["state"] == "completed" and sim.settled())
    assert all(t["version"] == 1 for t in sim.tasks().values())
    assert len(old & {t["id"] for t in sim.tasks().values()}) == 2  # only the first batch was touched
    assert "update to v2 failed" in service["update"]["message"]  # the reason stays after completion


def test_a_crashing_update_pauses_when_asked_to_and_resumes_on_update():
    sim = Sim()
    rolling(sim, failure_action="pause")
    sim.crashing.add(2)
    update(sim)
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "paused")
    assert "web.1 exited (1)" in sim.state.services["web"]["update"]["message"]
    assert sum(1 for t in sim.tasks(current_only=False).values()
               if t["version"] == 1 and t["observed"]["state"] == "running") == 3  # the old ones still serve
    sim.crashing.clear()
    fixed = update(sim, ("serve", "v3"))
    assert fixed["version"] == 3 and fixed["update"]["state"] == "updating"
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "completed" and sim.settled())


def test_rollback_toggles_between_the_last_two_versions():
    sim = Sim()
    rolling(sim)
    with pytest.raises(StateError, match="no previous version"):
        sim.state.apply_rollback_service("web", sim.now)
    update(sim)
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "completed" and sim.settled())
    assert sim.state.apply_rollback_service("web", sim.now)["version"] == 1
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "completed" and sim.settled())
    assert {t["command"][1] for t in sim.tasks().values()} == {"v1"}
    assert sim.state.apply_rollback_service("web", sim.now)["version"] == 2  # docker's: back again


def test_an_unchanged_spec_is_no_new_version_but_force_is():
    sim = Sim()
    rolling(sim)
    same = sim.state.apply_update_service("web", sim.now, spec=template(health={"test": ["CMD", "check"]}))
    assert same["version"] == 1 and same["update"]["state"] == "completed"
    forced = sim.state.apply_update_service("web", sim.now, force=True)
    assert forced["version"] == 2 and forced["update"]["state"] == "updating"


def test_removing_a_service_retires_its_tasks_and_frees_the_name():
    sim = Sim()
    sim.create(replicas=2)
    sim.run_until(lambda: sim.settled(count=2))
    assert sim.state.apply_remove_service("web", sim.now) == {"removed": "web", "tasks": 2}
    assert not sim.tasks()  # renamed at once: web.1 and web.2 are free
    sim.create(replicas=1, command=("other",))
    sim.run_until(lambda: not [t for t in sim.state.containers.values() if t["service_id"] == "svc-web"
                               and t["command"] == ["serve", "v1"]])
    assert [t["command"] for t in sim.tasks().values()] == [["other"]]
    with pytest.raises(NotFound):
        sim.state.apply_remove_service("nope", sim.now)


def test_service_commands_refuse_bad_input_and_change_nothing():
    sim = Sim()
    sim.create(replicas=1)
    before = sim.state.to_dict()
    bad = [
        ("create_service", {"service": {"name": "web", "id": "other", "spec": template()}, "ts": 1.0}, AlreadyExists),
        ("create_service", {"service": {"name": "Web", "id": "x", "spec": template()}, "ts": 1.0}, StateError),
        ("create_service", {"service": {"name": "db", "id": "x", "spec": template(), "replicas": -1}, "ts": 1.0},
         StateError),
        ("create_service", {"service": {"name": "db", "id": "x", "spec": template(restart="sometimes")}, "ts": 1.0},
         StateError),
        ("create_service", {"service": {"name": "db", "id": "x", "spec": {**template(), "network": "nope"}},
                            "ts": 1.0}, StateError),
        ("create_service", {"service": {"name": "db", "id": "x", "spec": template(), "policy": {"order": "x"}},
                            "ts": 1.0}, StateError),
        ("update_service", {"name": "web", "ts": 1.0, "policy": {"monitor": -1}}, StateError),
        ("place_task", {"service": "web", "slot": "h1", "id": "i", "ts": 1.0, "down_after": 6.0}, StateError),
        ("retire_task", {"name": "nope.1", "ts": 1.0}, NotFound),
    ]
    for command, args, error in bad:
        with pytest.raises(error):
            sim.state.apply_command(command, args)
    assert sim.state.to_dict() == before


def test_dots_in_names_are_for_service_tasks_only():
    state = ClusterState()
    state.apply_register_node("h1", "10.9.0.1", "10.9.0.1:7480", "10.9.0.1:7481", "0.1", "b", 1.0)
    with pytest.raises(StateError, match="dots belong to service tasks"):
        state.apply_create_container({"name": "web.1", "id": "x", "host": "h1", "network": "10.0.0.0/24",
                                      "image": "a", "command": ["sh"]}, 2.0)


def test_an_unhealthy_task_is_replaced_start_first_and_the_service_serves_throughout():
    sim = Sim()
    rolling(sim)
    sick = sim.state.containers["web.2"]
    sim.report(sick, "running", health={"status": "unhealthy", "since": sim.now, "streak": 3, "output": "no"})
    sim.tick(0.1)
    assert sim.state.containers["web.2"]["id"] != sick["id"]  # a successor took the name
    old = next(t for t in sim.tasks(current_only=False).values() if t["id"] == sick["id"])
    assert "superseded_at" in old and "retire" not in old  # it retires once the successor is ready
    sim.run_until(lambda: sim.settled())
    assert sick["id"] not in {t["id"] for t in sim.state.containers.values()}


# -- the change feed (controllers/view.py patches its copy of the state from it) -------------------
class FeedSim(Sim):
    """Every change goes through apply_command, as on a replica; a reader patches a copy of the state
    from the feed after every step, as LocalView does, and must see what the state holds."""

    def __init__(self) -> None:
        super().__init__()
        self.copy, self.cursor = self.state.to_dict(), self.state.feed_seq
        self.full_reads = self.delta_reads = 0

    def command(self, command: str, /, **args):
        return self.state.apply_command(command, args)

    def tick(self, seconds: float = 0.5) -> list[orchestrator.Action]:
        self.now += seconds
        for name in self.state.nodes:
            self.command("heartbeat", name=name, ts=self.now)
        self._hosts()
        actions = orchestrator.plan(self.state.to_dict(), self.now, DOWN_AFTER, RESCHEDULE_AFTER)
        for action in actions:
            self.apply(action)
        self.log += actions
        self._hosts()
        self.read()
        return actions

    def report(self, task: dict, state: str, **extra) -> None:
        observed = {"state": state, "exit_code": extra.pop("exit_code", None), "pid": 1, "started_at": self.now,
                    "finished_at": self.now if state == "exited" else None, "reason": None, **extra}
        self.command("container_observed", name=task["name"], host=task["host"], observed=observed, ts=self.now)

    def read(self) -> None:
        changed = self.state.changes_since(self.cursor)
        if changed is None:
            self.copy = self.state.to_dict()
            self.full_reads += 1
        else:
            for (section, key), record in pickle.loads(self.state.records_bytes(changed)).items():
                if record is None:
                    self.copy[section].pop(key, None)
                else:
                    self.copy[section][key] = record
            self.delta_reads += 1
        self.cursor = self.state.feed_seq
        assert self.copy == self.state.to_dict()


def test_a_reader_patched_from_the_feed_sees_every_service_command():
    sim = FeedSim()
    sim.command("create_service", service={"name": "web", "id": "svc-web", "mode": "replicated", "replicas": 3,
                                           "spec": template(health={"test": ["CMD", "check"]}),
                                           "policy": {"monitor": 1.0}}, ts=sim.now)
    sim.run_until(lambda: sim.settled())
    sim.command("update_service", name="web", ts=sim.now,
                spec=template(command=("serve", "v2"), health={"test": ["CMD", "check"]}))  # start-first
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "completed" and sim.settled())
    sim.command("scale_service", name="web", replicas=1)  # retire_task, then remove_container
    sim.run_until(lambda: sim.settled(count=1))
    sim.command("rollback_service", name="web", ts=sim.now)
    sim.command("note_service", name="web", message="no host fits", ts=sim.now)
    sim.run_until(lambda: sim.state.services["web"]["update"]["state"] == "completed" and sim.settled(count=1))
    sim.command("remove_service", name="web", ts=sim.now)
    sim.run_until(lambda: not sim.state.containers)
    sim.read()
    assert not sim.copy["services"] and not sim.copy["containers"]
    # most steps were patches; the commands that rename records they do not return were full reads
    assert sim.delta_reads > 5 * sim.full_reads > 0
