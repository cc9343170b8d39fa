"""Services with volumes (pure, with the services tests' simulator): each task gets its slot's own
volume NAME.SLOT on the host it first runs on, and stays with it — a rolling update replaces it on
that host, a dead host's task waits for its host rather than moving (its data is there), unless the
``move-empty`` policy lets a volume its host reported empty be made again elsewhere."""
from __future__ import annotations

import pytest

from cantainer_agent.cluster.scheduler import NoHostFits

from .test_services import DOWN_AFTER, RESCHEDULE_AFTER, Sim, template

DATA = [{"type": "volume", "source": "data", "target": "/var/lib/db", "readonly": False}]


def homes(sim: Sim) -> dict[str, str]:
    return {name: record["host"] for name, record in sim.state.volumes.items()}


def test_each_task_gets_its_slots_own_volume_on_its_host():
    sim = Sim()
    sim.create(name="db", replicas=3, mounts=DATA)
    sim.run_until(lambda: sim.settled("db"))
    tasks = sim.tasks("db")
    assert homes(sim) == {f"data.{t['slot']}": t["host"] for t in tasks.values()}
    for task in tasks.values():
        assert task["mounts"] == [{**DATA[0], "source": f"data.{task['slot']}"}]
    assert len(set(homes(sim).values())) == 3  # spread like any service


def test_a_rolling_update_replaces_each_task_on_its_volumes_host():
    sim = Sim()
    sim.create(name="db", replicas=3, mounts=DATA, policy={"monitor": 0.0, "order": "stop-first"})
    sim.run_until(lambda: sim.settled("db"))
    before = homes(sim)
    sim.state.apply_update_service("db", sim.now, spec=template(command=("serve", "v2"), mounts=DATA))
    sim.run_until(lambda: sim.settled("db") and all(t["version"] == 2 for t in sim.tasks("db").values()))
    assert homes(sim) == before
    assert {t["slot"]: t["host"] for t in sim.tasks("db").values()} == {n.split(".")[1]: h for n, h in before.items()}


def test_a_dead_hosts_volume_task_waits_for_its_host_and_is_not_moved():
    sim = Sim()
    sim.create(name="db", replicas=3, mounts=DATA)
    sim.run_until(lambda: sim.settled("db"))
    on_h3 = next(t for t in sim.tasks("db").values() if t["host"] == "h3")
    sim.dead.add("h3")
    sim.tick(DOWN_AFTER + RESCHEDULE_AFTER + 5.0)
    for _ in range(10):
        sim.tick()
    current = sim.state.containers[on_h3["name"]]
    assert current["id"] == on_h3["id"] and current["host"] == "h3"  # kept, not rescheduled
    assert homes(sim)[f"data.{on_h3['slot']}"] == "h3"
    with pytest.raises(NoHostFits, match="its volumes' data lives on h3"):  # and nothing may place it elsewhere
        sim.state.apply_command("place_task", {"service": "db", "slot": on_h3["slot"], "id": "f" * 12,
                                               "ts": sim.now, "down_after": DOWN_AFTER, "supersede": True})
    sim.dead.discard("h3")
    sim.run_until(lambda: sim.settled("db"))
    assert sim.state.containers[on_h3["name"]]["host"] == "h3"


def test_move_empty_lets_an_empty_volume_be_made_again_where_the_task_moves():
    sim = Sim()
    sim.create(name="db", replicas=3, mounts=DATA, policy={"volumes": "move-empty"})
    sim.run_until(lambda: sim.settled("db"))
    slot_of = {t["host"]: t["slot"] for t in sim.tasks("db").values()}
    # h2's volume holds data, h3's is empty (as their hosts reported)
    sim.state.apply_command("volume_observed", {"name": f"data.{slot_of['h2']}", "host": "h2", "empty": False})
    sim.state.apply_command("volume_observed", {"name": f"data.{slot_of['h3']}", "host": "h3", "empty": True})
    sim.dead.update({"h2", "h3"})
    sim.tick(DOWN_AFTER + RESCHEDULE_AFTER + 5.0)
    sim.run_until(lambda: sim.state.containers[f"db.{slot_of['h3']}"]["host"] == "h1"
                  and sim.state.containers[f"db.{slot_of['h3']}"]["observed"]["state"] == "running")
    assert homes(sim)[f"data.{slot_of['h3']}"] == "h1"  # made again, empty, with its task
    assert "empty" not in sim.state.volumes[f"data.{slot_of['h3']}"]  # not seen yet on its new host
    assert homes(sim)[f"data.{slot_of['h2']}"] == "h2"  # data: it stays with its dead host
    assert sim.state.containers[f"db.{slot_of['h2']}"]["host"] == "h2"


def test_bad_volume_policies_and_mounts_are_refused():
    sim = Sim()
    with pytest.raises(Exception, match="volume policy 'later' must be stay or move-empty"):
        sim.create(name="db", replicas=1, mounts=DATA, policy={"volumes": "later"})
    with pytest.raises(Exception, match="inside /proc"):
        sim.create(name="db", replicas=1, mounts=[{**DATA[0], "target": "/proc/x"}])
    assert sim.state.services == {} and sim.state.volumes == {}


def test_a_service_with_volumes_is_not_rebalanced_onto_a_returning_host():
    """Without volumes, a settled service moves a task to a host that came back (4 tasks: 2, 2, 0 ->
    one moves); with them, every task stays with its data."""
    for mounts, moves in (([], True), (DATA, False)):
        sim = Sim()
        sim.dead.add("h3")
        sim.tick(DOWN_AFTER + 1.0)
        sim.create(name="db", replicas=4, mounts=mounts)
        sim.run_until(lambda sim=sim: sim.settled("db", count=4))
        assert sorted(sim.hosts_of("db")) == ["h1", "h1", "h2", "h2"]
        sim.dead.discard("h3")
        for _ in range(30):
            sim.tick()
        assert ("h3" in sim.hosts_of("db")) is moves
