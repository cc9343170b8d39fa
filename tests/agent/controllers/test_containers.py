"""The containers controller's choice of passes: a pass woken only by commits that touched no
container of this host leaves the runtime alone; one that touched a local container, and every full
pass, compare the records with the runtime. (Its effects on real containers: tests/integration.)"""
from __future__ import annotations

from cantainer_agent.controllers.containers import ContainersController


class Runtime:
    def __init__(self) -> None:
        self.lists = 0

    def list(self) -> list:
        self.lists += 1
        return []


class Workload:
    def __init__(self) -> None:
        self.runtime = Runtime()
        self.reports: list[str] = []

    def in_flight_ids(self) -> set[str]:
        return set()

    def report(self, _raft, record, _info, _session, observed=None) -> None:
        self.reports.append(record["name"])


def record(name: str, host: str) -> dict:
    return {"name": name, "id": f"id-{name}", "host": host, "desired": "running",
            "observed": {"state": "running"}}


def snapshot(containers: dict, changes=None, commits_only=False) -> dict:
    return {"ready": True, "leader": "h1:7000", "state": {"containers": containers, "networks": {}},
            "changes": changes, "commits_only": commits_only}


def test_commits_about_other_hosts_leave_the_runtime_alone():
    workload = Workload()
    controller = ContainersController("h1", workload, lambda: object())
    containers = {"mine": record("mine", "h1"), "theirs": record("theirs", "h2")}
    controller.sync(snapshot(containers))  # full: lists the runtime, reports "mine" (its process is gone: dead)
    assert workload.runtime.lists == 1 and workload.reports == ["mine"]

    containers["other"] = record("other", "h3")
    controller.sync(snapshot(containers, {("containers", "other"), ("networks", "10.0.0.0/24")}, True))
    assert workload.runtime.lists == 1  # nothing of this host changed

    controller.sync(snapshot(containers, {("containers", "mine")}, True))  # ours changed: compare
    assert workload.runtime.lists == 2
    del containers["mine"]  # removed from the state: it was ours, so look (an orphan to remove)
    controller.sync(snapshot(containers, {("containers", "mine")}, True))
    assert workload.runtime.lists == 3

    controller.sync(snapshot(containers, {("containers", "other")}, False))  # a full pass looks anyway
    assert workload.runtime.lists == 4
    controller.close()
