"""Placement, restart policies, health checks and services on the lab, through the real CLI.

One cluster for the module (3 hosts; h1 and h2 labelled zone=a, h3 zone=b; reschedule_after 8 s).
Each case cleans up what it made. Timing is asserted only where the issue names a bound (a crashed
host's tasks run elsewhere within reschedule_after + 10 s); the back-off is checked from the
restart times the agent recorded, not from the wall clock.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.labcli import (
    CANTAINER,
    agent_call,
    cli,
    container_processes,
    host_path,
    kill_agent,
    ok,
    one_line_error,
    ps,
    wait_for,
)

pytestmark = pytest.mark.lab

NET = "10.71.0.0/24"
HOSTS = ("h1", "h2", "h3")
LABELS = {"h1": "a", "h2": "a", "h3": "b"}
RESCHEDULE_AFTER = 8
DOWN_AFTER = 6  # three heartbeats of 2 s (cluster/liveness.py)


@pytest.fixture(scope="module")
def inv(lab, tmp_path_factory) -> Path:
    """The lab's inventory with labels and a short reschedule_after; a cluster up on it, purged after."""
    text = lab.inventory_file.read_text()
    text = text.replace("[cluster]\n", f"[cluster]\nreschedule_after = {RESCHEDULE_AFTER}\n", 1)
    for host, zone in LABELS.items():
        text = text.replace(f'name = "{host}"\n', f'name = "{host}"\nlabels = {{ zone = "{zone}" }}\n', 1)
    path = tmp_path_factory.mktemp("svc") / "inventory.toml"
    path.write_text(text)
    ok(cli(path, "up", str(path)))
    yield path
    for host in HOSTS:
        lab.boot(host)
        lab.cut(host, up=True)
    cli(path, "up", str(path))
    cli(path, "down", "--purge")


@pytest.fixture(scope="module")
def web_images(inv, tmp_path_factory) -> tuple[str, str]:
    """web:v1 and web:v2 (busybox httpd serving "v1"/"v2", with a HEALTHCHECK) in the workstation's store."""
    from tests.images.build import build_web_layout, docker_archive

    work = tmp_path_factory.mktemp("web")
    layout = build_web_layout(work)
    for version in ("v1", "v2"):
        archive = docker_archive(layout, f"web-{version}", work / f"web-{version}.tar", f"web:{version}")
        assert ok(cli(inv, "image", "load", str(archive))).startswith(f"loaded web:{version} ")
    return "web:v1", "web:v2"


@pytest.fixture
def clean(inv):
    """Whatever the case made goes: services first (their tasks), then containers."""
    yield
    services = json.loads(ok(cli(inv, "service", "ls", "--json")))
    if services:
        ok(cli(inv, "service", "rm", *[s["name"] for s in services]))
    wait_for(lambda: not any(c.get("service") for c in ps(inv).values()), 60, what="service tasks to go")
    names = list(ps(inv))
    if names:
        ok(cli(inv, "rm", "-f", *names))


def placed(inv: Path, *args: str) -> tuple[str, str, str]:
    """`run -d` without --host: (name, ip, host) as it prints them."""
    name, ip, host = ok(cli(inv, "run", "-n", NET, "-d", *args)).split()
    return name, ip, host


def times(doc) -> list[dict]:
    return [{key: (datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                   if key in ("at", "exited_at") and value else value) for key, value in entry.items()}
            for entry in doc]


# -- placement ----------------------------------------------------------------------------------
def test_placement_spreads_obeys_constraints_and_counts_reservations(inv, clean):
    hosts = [placed(inv, "--", "sleep", "1000")[2] for _ in range(3)]
    assert sorted(hosts) == list(HOSTS)  # spread by the number of containers
    assert {placed(inv, "--constraint", "label.zone==b", "--", "sleep", "1000")[2] for _ in range(2)} == {"h3"}
    assert {placed(inv, "--constraint", "host!=h3", "--constraint", "label.zone==a", "--", "sleep", "1000")[2]
            for _ in range(2)} == {"h1", "h2"}
    # Each lab host reports the machine's CPUs (2): --cpus reserves against them.
    reserved = [placed(inv, "--cpus", "1.5", "--name", f"big{i}", "--", "sleep", "1000")[2] for i in range(3)]
    assert sorted(reserved) == list(HOSTS)
    before = ps(inv)
    line = one_line_error(cli(inv, "run", "-n", NET, "-d", "--cpus", "1.5", "--name", "big3", "--", "true"),
                          "no host can run big3", "h1, h2, h3: 0.5 of 2 CPUs free, 1.5 asked")
    assert line.startswith("cantainer: error:")
    one_line_error(cli(inv, "run", "-n", NET, "-d", "--constraint", "label.zone==c", "--", "true"),
                   "no host that is up matches label.zone==c")
    assert ps(inv) == before  # nothing was created by the refusals


def test_concurrent_placements_never_oversubscribe_a_host(inv, clean):
    """8 `run --cpus 0.9` at once through all agents: 3 hosts of 2 CPUs take 2 each, 2 are refused."""
    procs = [subprocess.Popen([*CANTAINER, "run", "-n", NET, "-d", "--cpus", "0.9", "--name", f"conc{i}", "--",
                               "sleep", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "CANTAINER_INVENTORY": str(inv)})
             for i in range(8)]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    refused = [err for code, _, err in results if code != 0]
    assert len(refused) == 2 and all("no host can run" in err for err in refused), results
    per_host: dict[str, float] = {}
    for container in ps(inv).values():
        per_host[container["host"]] = per_host.get(container["host"], 0.0) + 0.9
    assert sorted(per_host) == list(HOSTS) and max(per_host.values()) <= 2.0, per_host


# -- restart policies --------------------------------------------------------------------------
def test_restart_policies_and_their_back_off(inv, clean):
    ok(cli(inv, "run", "--host", "h1", "-n", NET, "-d", "--name", "fails", "--restart", "on-failure:4", "--",
           "sh", "-c", "exit 3"))
    ok(cli(inv, "run", "--host", "h2", "-n", NET, "-d", "--name", "never", "--", "sh", "-c", "exit 3"))
    ok(cli(inv, "run", "--host", "h2", "-n", NET, "-d", "--name", "clean-exit", "--restart", "on-failure", "--",
           "true"))
    ok(cli(inv, "run", "--host", "h3", "-n", NET, "-d", "--name", "always", "--restart", "always", "--", "true"))
    ok(cli(inv, "run", "--host", "h3", "-n", NET, "-d", "--name", "kept", "--restart", "unless-stopped", "--",
           "sleep", "1000"))
    doc = wait_for(lambda: (lambda c: c if c["fails"]["restart_count"] == 4 and c["fails"]["state"] == "exited"
                            and c["always"]["restart_count"] >= 5 else None)(ps(inv)), 60,
                   what="on-failure:4 to give up and always to keep going")
    fails = doc["fails"]
    assert fails["exit_code"] == 3 and fails["restart"] == "on-failure:4"
    history = times(fails["restarts"])
    assert [entry["delay"] for entry in history] == [0.1, 0.2, 0.4, 0.8]  # doubling from 0.1 s
    assert all(entry["at"] - entry["exited_at"] >= entry["delay"] for entry in history)  # each waited its delay
    assert all(entry["exit_code"] == 3 for entry in history)
    assert doc["never"]["restart_count"] == 0 and doc["never"]["state"] == "exited"
    assert doc["clean-exit"]["restart_count"] == 0  # on-failure: exit 0 is not a failure
    assert [e["delay"] for e in times(doc["always"]["restarts"])][:5] == [0.1, 0.2, 0.4, 0.8, 1.6]
    table = ok(cli(inv, "ps", "-a"))
    assert "RESTARTS" in table.splitlines()[0]
    assert any(re.match(r"fails\s.*\sexited \(3\)\s+4\s", line) for line in table.splitlines()), table
    # unless-stopped: a stop is respected (and so it is by always, until the agent restarts)
    ok(cli(inv, "stop", "--time", "1", "kept"))
    time.sleep(1.0)
    assert ps(inv)["kept"]["state"] == "exited" and ps(inv)["kept"]["restart_count"] == 0


def test_restarts_go_on_while_raft_has_no_leader(lab, inv, clean):
    """h2's and h3's agents killed: h1 alone has no leader, and still restarts its container."""
    ok(cli(inv, "run", "--host", "h1", "-n", NET, "-d", "--name", "flaky", "--restart", "always", "--",
           "sh", "-c", "sleep 0.5; exit 1"))
    container_id = ps(inv)["flaky"]["id"]
    book = host_path(lab, "h1", f"/var/lib/cantainer/containers/{container_id}/restarts.json")

    def restarts() -> int:
        try:
            return json.loads(book.read_text())["count"]
        except (OSError, ValueError):
            return 0

    try:
        for host in ("h2", "h3"):
            kill_agent(lab, host)
        wait_for(lambda: agent_call(lab, "h1", "status", {"consistency": "stale"}).result["leader"] is None, 30,
                 what="h1 to lose its leader")
        before = restarts()
        wait_for(lambda: restarts() >= before + 2, 30, what="restarts without a leader")
        assert agent_call(lab, "h1", "status", {"consistency": "stale"}).result["leader"] is None
    finally:
        ok(cli(inv, "up", str(inv)))
    wait_for(lambda: ps(inv)["flaky"]["restart_count"] >= before + 2, 30, what="the count to reach the cluster")


# -- health checks ------------------------------------------------------------------------------
def test_health_states_from_the_option_and_from_the_image(inv, web_images, clean):
    ok(cli(inv, "run", "--host", "h2", "-n", NET, "-d", "--name", "probe", "--health-cmd", "test -f /tmp/ok",
           "--health-interval", "0.3s", "--health-retries", "2", "--health-start-period", "3s", "--",
           "sleep", "1000"))
    assert ps(inv)["probe"]["health"]["status"] == "starting"  # failures in the start period do not count
    wait_for(lambda: ps(inv)["probe"]["health"]["status"] == "unhealthy", 30, what="unhealthy")
    ok(cli(inv, "exec", "probe", "touch", "/tmp/ok"))
    wait_for(lambda: ps(inv)["probe"]["health"]["status"] == "healthy", 30, what="healthy")
    assert "running (healthy)" in ok(cli(inv, "ps"))
    ok(cli(inv, "exec", "probe", "rm", "/tmp/ok"))
    health = wait_for(lambda: (lambda h: h if h["status"] == "unhealthy" else None)(ps(inv)["probe"]["health"]), 30,
                      what="unhealthy again")
    assert health["streak"] == 2
    doc = json.loads(ok(cli(inv, "status", "--json")))
    assert next(c for c in doc["containers"] if c["name"] == "probe")["health"]["status"] == "unhealthy"
    ok(cli(inv, "run", "--host", "h3", "-n", NET, "-d", "--name", "imagecheck", "--image", web_images[0]))
    wait_for(lambda: (ps(inv)["imagecheck"]["health"] or {}).get("status") == "healthy", 30,
             what="the image's HEALTHCHECK to pass")
    ok(cli(inv, "run", "--host", "h3", "-n", NET, "-d", "--name", "nocheck", "--no-healthcheck", "--image",
           web_images[0]))
    assert ps(inv)["nocheck"]["health"] is None


# -- services -----------------------------------------------------------------------------------
def service_doc(inv: Path, name: str = "web") -> dict:
    return json.loads(ok(cli(inv, "service", "ps", name, "--json")))


def running_tasks(inv: Path, name: str = "web") -> list[dict]:
    return [t for t in service_doc(inv, name)["tasks"] if t["state"] == "running"]


def test_a_service_keeps_its_replicas_through_a_host_crash(lab, inv, web_images, clean):
    out = ok(cli(inv, "service", "create", "web", "--replicas", "3", "-n", NET, "--image", web_images[0]))
    assert "web: 3/3 tasks ready" in out
    tasks = running_tasks(inv)
    assert sorted(t["host"] for t in tasks) == list(HOSTS)
    stale = next(t for t in tasks if t["host"] == "h3")
    lab.crash("h3")
    crashed = time.monotonic()
    try:
        def three_elsewhere():
            now = running_tasks(inv)
            return now if len(now) == 3 and all(t["host"] != "h3" for t in now) else None

        moved = wait_for(three_elsewhere, DOWN_AFTER + RESCHEDULE_AFTER + 10, what="h3's task to run elsewhere")
        assert time.monotonic() - crashed <= DOWN_AFTER + RESCHEDULE_AFTER + 10
        assert {t["name"] for t in moved} == {"web.1", "web.2", "web.3"}
    finally:
        lab.boot("h3")
        ok(cli(inv, "up", str(inv)))
    # The stale copy on h3 is removed, never started again; after convergence: exactly 3.
    wait_for(lambda: stale["id"] not in container_processes(lab, "h3")
             and not host_path(lab, "h3", f"/var/lib/cantainer/containers/{stale['id']}").exists(), 60,
             what="h3's stale copy to be removed")
    converged = wait_for(lambda: (lambda d: d if len([t for t in d["tasks"] if t["state"] == "running"]) == 3
                                  and not any(t["retiring"] for t in d["tasks"]) else None)(service_doc(inv)), 90,
                         what="3 running tasks")
    assert len(converged["tasks"]) == 3


def test_scale_up_and_down_removes_the_newest_first(inv, web_images, clean):
    ok(cli(inv, "service", "create", "web", "--replicas", "2", "-n", NET, "--image", web_images[0]))
    ok(cli(inv, "service", "scale", "web=4"))
    tasks = running_tasks(inv)
    assert sorted(t["name"] for t in tasks) == ["web.1", "web.2", "web.3", "web.4"]
    newest = sorted(tasks, key=lambda t: (t["created_at"], int(t["slot"])))[-2:]
    ok(cli(inv, "service", "scale", "web=2"))
    left = running_tasks(inv)
    assert len(left) == 2 and not {t["id"] for t in left} & {t["id"] for t in newest}
    listing = ok(cli(inv, "service", "ls"))
    assert "2/2" in listing.splitlines()[1]


def test_a_global_service_runs_one_task_on_each_matching_host(inv, clean):
    ok(cli(inv, "service", "create", "agent", "--mode", "global", "--constraint", "label.zone==a", "-n", NET, "--",
           "sleep", "1000"))
    tasks = running_tasks(inv, "agent")
    assert sorted((t["name"], t["host"]) for t in tasks) == [("agent.h1", "h1"), ("agent.h2", "h2")]
    assert ok(cli(inv, "exec", "agent.h1", "hostname")).strip() == "agent-h1"  # one DNS label inside
    one_line_error(cli(inv, "service", "scale", "agent=3"), "global mode")


class Poller:
    """A container on h1 fetching the service's serving addresses round robin every 50 ms (wget),
    logging `ok ADDRESS BODY` or `FAIL ADDRESS …`. The addresses are what `service ps` lists as
    serving (cluster/views.service_endpoints — what DNS will answer), refreshed by a thread here.
    `timeout`, not wget's -T: Debian's busybox-static 1.35 wget crashes on -T (the fallback image)."""

    SCRIPT = """i=0
while true; do
  set -- $(cat /tmp/targets 2>/dev/null)
  if [ $# -gt 0 ]; then
    i=$(( (i + 1) % $# )); eval t=\\${$((i + 1))}
    if out=$(timeout 2 wget -q -O - "http://$t/" 2>&1); then echo "ok $t $out"; else echo "FAIL $t $out"; fi
  fi
  sleep 0.05
done"""

    def __init__(self, inv: Path) -> None:
        self.inv = inv
        ok(cli(inv, "run", "--host", "h1", "-n", NET, "-d", "--name", "poller", "--", "sh", "-c", self.SCRIPT))
        self.targets: list[str] = []
        self.stop = threading.Event()
        self.refresh()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def refresh(self) -> None:
        result = cli(self.inv, "service", "ps", "web", "--json")
        if result.returncode != 0:
            return
        targets = sorted(e["ip"] for e in json.loads(result.stdout)["endpoints"])
        if targets != self.targets:
            line = " ".join(targets)
            ok(cli(self.inv, "exec", "poller", "sh", "-c", f"echo {line} > /tmp/t.new && mv /tmp/t.new /tmp/targets"))
            self.targets = targets

    def _run(self) -> None:
        while not self.stop.is_set():
            self.refresh()
            self.stop.wait(0.2)

    def finish(self) -> list[str]:
        self.stop.set()
        self.thread.join(30)
        return [line for line in ok(cli(self.inv, "logs", "poller")).splitlines() if line.strip()]


def test_a_rolling_update_fails_no_request(inv, web_images, clean):
    ok(cli(inv, "service", "create", "web", "--replicas", "3", "-n", NET, "--image", web_images[0],
           "--update-monitor", "1s", "--drain", "4s"))
    poller = Poller(inv)
    try:
        wait_for(lambda: len(poller.targets) == 3, 30, what="the poller to know 3 tasks")
        time.sleep(1.0)
        out = ok(cli(inv, "service", "update", "web", "--image", web_images[1]))
        assert "update from v1 completed" in out
        time.sleep(1.0)
    finally:
        lines = poller.finish()
    failed = [line for line in lines if not line.startswith("ok ")]
    bodies = [line.split()[-1] for line in lines if line.startswith("ok ")]
    assert not failed, failed[:5]
    assert len(bodies) > 100 and bodies[0] == "v1" and bodies[-1] == "v2" and set(bodies) == {"v1", "v2"}
    doc = service_doc(inv)
    assert doc["service"]["version"] == 2 and all(t["image"] == web_images[1] for t in doc["tasks"])
    assert "rollback from v2 completed" in ok(cli(inv, "service", "rollback", "web"))  # on demand, rolling
    assert {t["image"] for t in running_tasks(inv)} == {web_images[0]}


def test_an_update_that_fails_its_health_check_rolls_back_by_itself(inv, web_images, clean):
    ok(cli(inv, "service", "create", "web", "--replicas", "2", "-n", NET, "--image", web_images[0],
           "--update-monitor", "1s", "--drain", "0s"))
    before = {t["id"] for t in running_tasks(inv)}
    result = cli(inv, "service", "update", "web", "--image", web_images[1], "--health-cmd", "exit 1",
                 "--health-interval", "0.3s", "--health-retries", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_line_error(result, "service web: update to v2 failed: web.", "unhealthy", "rolled back to v1")
    assert "service ps web" in line
    doc = service_doc(inv)
    assert doc["service"]["version"] == 1 and doc["service"]["update"]["kind"] == "rollback"
    assert all(t["image"] == web_images[0] and t["state"] == "running" for t in doc["tasks"])
    assert len(before & {t["id"] for t in doc["tasks"]}) == 1  # only the first batch was touched


def test_a_partitioned_minority_starts_nothing_and_its_copy_goes_after_heal(lab, inv, web_images, clean):
    ok(cli(inv, "service", "create", "web", "--replicas", "3", "-n", NET, "--image", web_images[0]))
    on_h3 = next(t for t in running_tasks(inv) if t["host"] == "h3")
    before = set(container_processes(lab, "h3"))
    lab.cut("h3")
    try:
        def moved():
            result = cli(inv, "service", "ps", "web", "--json")
            if result.returncode != 0:
                return None
            tasks = [t for t in json.loads(result.stdout)["tasks"] if t["state"] == "running" and t["host"] != "h3"]
            return tasks if len(tasks) == 3 else None

        wait_for(moved, DOWN_AFTER + RESCHEDULE_AFTER + 20, what="the majority to reschedule h3's task")
        # The minority started nothing: the same containers on h3, and its replica places nothing new.
        assert set(container_processes(lab, "h3")) == before
        view = agent_call(lab, "h3", "container.ps", {"consistency": "stale"})
        assert view.ok and {c["id"] for c in view.result if c["host"] == "h3"} <= before | {on_h3["id"]}
        refused = agent_call(lab, "h3", "service.scale", {"name": "web", "replicas": 5})
        assert not refused.ok and refused.error.code == "unavailable"
    finally:
        lab.cut("h3", up=True)
    wait_for(lambda: on_h3["id"] not in {cid for cid, p in container_processes(lab, "h3").items() if p["alive"]},
             60, what="h3's stale copy to stop")
    wait_for(lambda: len(running_tasks(inv)) == 3 and len(service_doc(inv)["tasks"]) == 3, 90,
             what="exactly 3 tasks after the heal")


def test_service_commands_refuse_bad_input_in_one_line(inv, web_images, clean):
    one_line_error(cli(inv, "service", "ps", "nope"), "no service named 'nope'")
    one_line_error(cli(inv, "service", "create", "Web", "-n", NET), "service name 'Web' is invalid")
    one_line_error(cli(inv, "service", "rollback", "nope"), "no service named 'nope'")
    ok(cli(inv, "service", "create", "web", "--replicas", "1", "-n", NET, "--image", web_images[0]))
    one_line_error(cli(inv, "service", "create", "web", "-n", NET, "--image", web_images[0]), "already exists")
    one_line_error(cli(inv, "service", "rollback", "web"), "no previous version")
    one_line_error(cli(inv, "service", "scale", "web=0x"), "is not NAME=N")
    assert len(service_doc(inv)["tasks"]) == 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
