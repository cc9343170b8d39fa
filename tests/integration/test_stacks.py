"""Stacks on the real lab: `apply` brings a file up, a second apply touches nothing (same ids and PIDs),
a change replaces only what changed, `--check`/`plan` change nothing and say so by exit code, `--prune`
and `rm-stack` remove what the stack made (volumes only when asked), two stacks live side by side, and
every stack-file mistake is one file:line error with nothing changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.labcli import cli, cluster_snapshot, container_processes, host_exec, ok, one_line_error, ps, wait_for
from tests.pingout import all_answered
from tests.workstation.test_stack_file import MISTAKES

pytestmark = pytest.mark.lab

STACK = """\
name = "{name}"

[networks.front]
subnet = "{subnet}"

[volumes.db]

[containers.db]
host = "h2"
volumes = ["db:/data"]
command = ["sh", "-c", "echo started >> /data/log; exec sleep 1d"]

[containers.web]
host = "h1"
command = "{web}"
"""


def write(tmp_path: Path, name: str = "shop", subnet: str = "10.80.0.0/24", web: str = "sleep 1d",
          extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(STACK.format(name=name, subnet=subnet, web=web) + extra)
    return path


def plan_json(cluster, path: Path, *flags: str) -> tuple[int, dict]:
    result = cli(cluster, "plan", str(path), "--json", *flags)
    assert result.returncode in (0, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def ops(document: dict) -> dict[str, str]:
    return {f"{c['kind']}:{c['name']}": f"{c['symbol']}{c['op']}" for c in document["changes"]}


def identities(lab, cluster) -> dict[str, tuple]:
    """Every container's id and its init's pid and start time on its host."""
    listed = ps(cluster)
    processes = {}
    for host in ("h1", "h2", "h3"):
        processes.update(container_processes(lab, host))
    return {name: (c["id"], processes.get(c["id"], {}).get("pid"), processes.get(c["id"], {}).get("pid_start"))
            for name, c in listed.items()}


@pytest.fixture(scope="module")
def applied(cluster, tmp_path_factory):
    path = write(tmp_path_factory.mktemp("stack"))
    code, before = plan_json(cluster, path)
    assert code == 2 and ops(before) == {"network:front": "+create", "volume:db": "+create",
                                         "container:db": "+create", "container:web": "+create"}
    out = ok(cli(cluster, "apply", str(path)))
    assert out.splitlines()[-1] == "stack shop: 4 created", out
    return path


def test_apply_brings_the_stack_up_named_after_it(lab, cluster, applied):
    listed = ps(cluster)
    assert listed["shop-db"]["state"] == listed["shop-web"]["state"] == "running"
    assert (listed["shop-db"]["host"], listed["shop-web"]["host"]) == ("h2", "h1")
    assert listed["shop-db"]["network"] == "10.80.0.0/24"
    networks = {n["cidr"]: n for n in json.loads(ok(cli(cluster, "network", "ls", "--json")))}
    assert networks["10.80.0.0/24"]["name"] == "shop-front" and networks["10.80.0.0/24"]["internal"] is False
    assert all_answered(ok(cli(cluster, "exec", "shop-web", "ping", "-c", "1", "-W", "5", "shop-db")), 1)
    volumes = {v["name"]: v for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    assert volumes["shop_db"]["host"] == "h2" and volumes["shop_db"]["labels"] == {"stack": "shop"}
    assert ok(cli(cluster, "exec", "shop-db", "cat", "/data/log")) == "started\n"
    stacks = json.loads(ok(cli(cluster, "stack", "ls", "--json")))
    assert [s["name"] for s in stacks] == ["shop"] and len(stacks[0]["objects"]) == 4
    assert ok(cli(cluster, "stack", "ls", "-q")) == "shop\n"


def test_a_second_apply_touches_nothing(lab, cluster, applied):
    before, snapshot = identities(lab, cluster), json.loads(ok(cli(cluster, "stack", "ls", "--json")))
    out = ok(cli(cluster, "apply", str(applied)))
    assert out.splitlines()[-1] == "stack shop: no changes"
    assert identities(lab, cluster) == before  # same container ids, same processes
    assert json.loads(ok(cli(cluster, "stack", "ls", "--json"))) == snapshot  # not even the record was written
    code, document = plan_json(cluster, applied)
    assert code == 0 and document["pending"] is False and set(ops(document).values()) == {"=none"}


def test_check_shows_the_change_and_changes_nothing(lab, cluster, applied, tmp_path):
    changed = write(tmp_path, web="sleep 2d")
    before = identities(lab, cluster)
    for argv in (["apply", "--check", str(changed)], ["plan", str(changed)]):
        result = cli(cluster, *argv)
        assert result.returncode == 2, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["KIND", "NAME", "IN", "THE", "CLUSTER", "CHANGE"]
        assert any(line.split()[:4] == ["~", "container", "web", "shop-web"] and "replace (command)" in line
                   for line in lines), lines
        assert lines[-1] == "stack shop: 1 to update"
    assert identities(lab, cluster) == before


def test_a_changed_container_is_replaced_and_nothing_else_is_touched(lab, cluster, applied, tmp_path):
    changed = write(tmp_path, web="sleep 2d")
    before = identities(lab, cluster)
    ok(cli(cluster, "apply", str(changed)))
    after = identities(lab, cluster)
    assert after["shop-db"] == before["shop-db"] and after["shop-web"][0] != before["shop-web"][0]
    assert ps(cluster)["shop-web"]["command"] == ["sleep", "2d"]
    ok(cli(cluster, "apply", str(applied)))  # back to the module's file


def test_two_stacks_live_side_by_side(lab, cluster, applied, tmp_path):
    other = write(tmp_path, name="shop2", subnet="10.81.0.0/24")
    ok(cli(cluster, "apply", str(other)))
    listed = ps(cluster)
    assert {"shop-db", "shop-web", "shop2-db", "shop2-web"} <= set(listed)
    volumes = {v["name"] for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    assert {"shop_db", "shop2_db"} <= volumes
    assert plan_json(cluster, applied)[0] == 0  # one stack's apply does not see the other's objects as its own
    ok(cli(cluster, "rm-stack", "shop2", "--volumes"))
    assert not [name for name in ps(cluster) if name.startswith("shop2-")]
    assert "shop2_db" not in {v["name"] for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    assert "10.81.0.0/24" not in {n["cidr"] for n in json.loads(ok(cli(cluster, "network", "ls", "--json")))}
    assert "shop" in ok(cli(cluster, "stack", "ls", "-q")).split()


def test_prune_removes_what_the_file_dropped_but_volumes_only_when_asked(lab, cluster, applied, tmp_path):
    extra = ('\n[containers.extra]\nhost = "h3"\ncommand = "sleep 1d"\nvolumes = ["logs:/l"]\n'
             'ports = ["127.0.0.1:8091:80"]\n\n[volumes.logs]\n')
    grown = write(tmp_path, extra=extra)
    ok(cli(cluster, "apply", str(grown)))
    assert ps(cluster)["shop-extra"]["publish"] == [
        {"host_ip": "127.0.0.1", "host_port": 8091, "container_port": 80, "protocol": "tcp"}]
    kept = ok(cli(cluster, "apply", str(applied)))  # no --prune: kept, and said so
    assert "shop-extra" in ps(cluster) and "2 kept (not in the file)" in kept.splitlines()[-1]
    code, document = plan_json(cluster, applied, "--prune")
    assert code == 2 and ops(document)["container:extra"] == "-remove" and "volume:logs" not in ops(document)
    ok(cli(cluster, "apply", "--prune", str(applied)))
    assert "shop-extra" not in ps(cluster)
    assert "shop_logs" in {v["name"] for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    ok(cli(cluster, "apply", "--prune", "--volumes", str(applied)))
    assert "shop_logs" not in {v["name"] for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    assert plan_json(cluster, applied, "--prune", "--volumes")[0] == 0


@pytest.mark.parametrize("what, text, line, needles", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_stack_file_mistakes_are_one_line_and_change_nothing(lab, cluster, applied, tmp_path, what, text, line,
                                                            needles):
    path = tmp_path / "stack.toml"
    path.write_text(text)
    before = cluster_snapshot(lab, cluster)
    for verb in ("apply", "plan"):
        result = cli(cluster, verb, str(path))
        assert result.returncode == 1, (verb, result.stdout, result.stderr)
        message = one_line_error(result, *needles)
        assert f"{path}:{line}: " in message if line else f"{path}: " in message
    assert cluster_snapshot(lab, cluster) == before


def test_plans_the_cluster_refuses_are_one_line_and_change_nothing(lab, cluster, applied, tmp_path):
    ok(cli(cluster, "run", "--host", "h3", "-n", "10.80.0.0/24", "--name", "shop-intruder", "-d", "sleep", "1d"))
    intruder = write(tmp_path, extra='\n[containers.intruder]\nhost = "h3"\n')
    before = cluster_snapshot(lab, cluster)
    one_line_error(cli(cluster, "apply", str(intruder)), "container shop-intruder exists and is not part of stack shop")
    moved = write(tmp_path, extra="").read_text().replace("[volumes.db]", '[volumes.db]\nhost = "h3"')
    moved_path = tmp_path / "moved.toml"
    moved_path.write_text(moved.replace('host = "h2"\nvolumes', 'volumes'))
    one_line_error(cli(cluster, "apply", str(moved_path)), "volume shop_db lives on h2, but the file pins it to h3")
    assert cluster_snapshot(lab, cluster) == before
    ok(cli(cluster, "rm", "-f", "shop-intruder"))


def test_rm_stack_removes_the_stack_and_keeps_its_volume_data(lab, cluster, applied):
    ok(cli(cluster, "exec", "shop-db", "sh", "-c", "echo precious > /data/keep"))
    code = cli(cluster, "rm-stack", "shop", "--check")
    assert code.returncode == 2 and "- container db" not in code.stdout and "shop-db" in code.stdout
    ok(cli(cluster, "rm-stack", "shop"))
    assert not [name for name in ps(cluster) if name.startswith("shop-")]
    assert host_exec(lab, "h2", "cat", "/var/lib/cantainer/volumes/shop_db/keep").stdout == "precious\n"
    missing = cli(cluster, "rm-stack", "nosuch")
    assert missing.returncode == 1
    one_line_error(missing, "no stack named 'nosuch'")
    ok(cli(cluster, "apply", str(applied)))  # the stack comes back with its data
    assert ok(cli(cluster, "exec", "shop-db", "cat", "/data/keep")) == "precious\n"
    ok(cli(cluster, "rm-stack", "shop", "--volumes"))
    assert ok(cli(cluster, "stack", "ls", "-q")) == ""


def test_the_example_stack_file_runs_as_documented(cluster, tmp_path):
    """stack.example.toml on the lab: every object up, the web tasks answer, a second apply changes nothing.
    (Before the services below: its web publishes 8080 on every host, as theirs does.)"""
    example = Path(__file__).resolve().parents[2] / "stack.example.toml"
    try:  # a failed apply leaves a half-made stack: its 8080 on every host would block the tests below
        ok(cli(cluster, "apply", str(example), timeout=250))
        web = tasks(cluster, "shop-web")
        assert sorted(web) == ["shop-web.1", "shop-web.2", "shop-web.3"]
        assert all(t["state"] == "running" and (t["health"] or {}).get("status") == "healthy" for t in web.values())
        answer = ok(cli(cluster, "exec", "shop-web.1", "wget", "-qO-", "http://127.0.0.1:80/"))
        assert answer == "hello from shop-web-1\n"
        assert ok(cli(cluster, "exec", "shop-db.1", "cat", "/data/state")) == "ready\n"
        assert ok(cli(cluster, "logs", "shop-migrate")) == "migrated\n"
        assert ok(cli(cluster, "apply", str(example))).splitlines()[-1] == "stack shop: no changes"
    finally:
        ok(cli(cluster, "rm-stack", "shop", "--volumes", timeout=300))


# -- services in a stack ---------------------------------------------------------------------------------
APP = """\
name = "app"

[networks.front]
subnet = "10.82.0.0/24"

[volumes.db]

[services.web]
image = "{image}"
replicas = {replicas}
ports = ["8080:80"]
update = {{ monitor = "1s" }}

[services.db]
command = ["sh", "-c", "echo up >> /data/log; exec sleep 1d"]
volumes = ["db:/data"]
"""


@pytest.fixture(scope="module")
def web_images(cluster, tmp_path_factory) -> tuple[str, str]:
    """web:v1 and web:v2 (busybox httpd with a HEALTHCHECK) in the workstation's store."""
    from tests.images.build import build_web_layout, docker_archive

    work = tmp_path_factory.mktemp("web")
    layout = build_web_layout(work)
    for version in ("v1", "v2"):
        archive = docker_archive(layout, f"web-{version}", work / f"web-{version}.tar", f"web:{version}")
        ok(cli(cluster, "image", "load", str(archive)))
    return "web:v1", "web:v2"


def app(tmp_path: Path, image: str, replicas: int) -> Path:
    path = tmp_path / f"app-{image.replace(':', '-')}-{replicas}.toml"
    path.write_text(APP.format(image=image, replicas=replicas))
    return path


def service_ps(cluster, name: str) -> dict:
    return json.loads(ok(cli(cluster, "service", "ps", name, "--json")))


def tasks(cluster, name: str) -> dict[str, dict]:
    return {t["name"]: t for t in service_ps(cluster, name)["tasks"] if not t["retiring"]}


@pytest.fixture(scope="module")
def app_stack(cluster, web_images, tmp_path_factory):
    path = app(tmp_path_factory.mktemp("app"), web_images[0], 3)
    code, document = plan_json(cluster, path)
    assert code == 2 and ops(document) == {"network:front": "+create", "volume:db": "+first-use",
                                           "service:web": "+create", "service:db": "+create"}
    ok(cli(cluster, "apply", str(path), timeout=400))
    yield path
    cli(cluster, "rm-stack", "app", "--volumes", timeout=300)


def test_a_two_service_stack_runs_web_with_its_port_and_db_with_its_volume(lab, cluster, app_stack):
    web = tasks(cluster, "app-web")
    assert sorted(web) == ["app-web.1", "app-web.2", "app-web.3"]
    assert all(t["state"] == "running" and t["image"] == "web:v1" for t in web.values())
    assert sorted(t["host"] for t in web.values()) == ["h1", "h2", "h3"]  # one 8080 per host
    assert service_ps(cluster, "app-web")["service"]["publish"] == [
        {"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80, "protocol": "tcp"}]
    (db,) = tasks(cluster, "app-db").values()
    volumes = {v["name"]: v for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    assert volumes["app_db.1"]["host"] == db["host"] and volumes["app_db.1"]["containers"] == ["app-db.1"]
    assert ok(cli(cluster, "exec", "app-db.1", "cat", "/data/log")) == "up\n"


def test_re_applying_the_stack_touches_nothing(lab, cluster, app_stack):
    before = identities(lab, cluster)
    assert ok(cli(cluster, "apply", str(app_stack))).splitlines()[-1] == "stack app: no changes"
    assert identities(lab, cluster) == before


def test_a_changed_replica_count_is_only_a_scale(lab, cluster, app_stack, web_images, tmp_path):
    smaller = app(tmp_path, web_images[0], 2)  # (4 could not run: one 8080 per host, 3 hosts)
    code, document = plan_json(cluster, smaller)
    assert code == 2 and ops(document) == {"network:front": "=none", "volume:db": "=none",
                                           "service:web": "~scale", "service:db": "=none"}
    assert [c["fields"] for c in document["changes"] if c["kind"] == "service" and c["op"] == "scale"] == [["replicas"]]
    before = identities(lab, cluster)
    ok(cli(cluster, "apply", str(smaller), timeout=300))
    wait_for(lambda: sorted(tasks(cluster, "app-web")) == ["app-web.1", "app-web.2"], 60, what="the scale to 2")
    after = identities(lab, cluster)
    kept = [name for name in before if name != "app-web.3" and not name.startswith("app-web.3.")]
    assert {n: after[n] for n in kept} == {n: before[n] for n in kept}  # the others untouched
    ok(cli(cluster, "apply", str(app_stack), timeout=300))  # back to 3
    assert sorted(tasks(cluster, "app-web")) == ["app-web.1", "app-web.2", "app-web.3"]


def test_a_new_image_is_a_rolling_update_and_the_other_service_is_untouched(lab, cluster, app_stack, web_images,
                                                                            tmp_path):
    newer = app(tmp_path, web_images[1], 3)
    code, document = plan_json(cluster, newer)
    assert code == 2 and ops(document)["service:web"] == "~update"
    web_change = next(c for c in document["changes"] if c["name"] == "web")
    assert web_change["fields"] == ["image"] and web_change["detail"] == "rolling update"
    db_before = tasks(cluster, "app-db")["app-db.1"]["id"]
    ok(cli(cluster, "apply", str(newer), timeout=400))
    doc = service_ps(cluster, "app-web")
    assert doc["service"]["version"] == 2 and doc["service"]["update"]["state"] == "completed"
    assert {t["image"] for t in tasks(cluster, "app-web").values()} == {"web:v2"}
    assert tasks(cluster, "app-db")["app-db.1"]["id"] == db_before
    assert plan_json(cluster, newer)[0] == 0
    ok(cli(cluster, "apply", str(app_stack), timeout=400))  # and back


def test_the_db_volume_keeps_its_data_through_a_restart_of_its_task(lab, cluster, app_stack):
    (db,) = tasks(cluster, "app-db").values()
    pid = container_processes(lab, db["host"])[db["id"]]["pid"]
    assert host_exec(lab, db["host"], "kill", "-9", str(pid)).returncode == 0  # its restart policy: always
    wait_for(lambda: tasks(cluster, "app-db")["app-db.1"]["restart_count"] >= 1
             and tasks(cluster, "app-db")["app-db.1"]["state"] == "running", 60, what="db to be restarted")
    assert ok(cli(cluster, "exec", "app-db.1", "cat", "/data/log")) == "up\nup\n"


# -- a service that never comes up ------------------------------------------------------------------------
LOOP = """\
name = "loop"

[networks.back]
subnet = "10.83.0.0/24"

[services.bad]
command = {command}
"""


def test_a_crash_looping_service_fails_the_apply_early_and_stays_the_stacks(cluster, tmp_path):
    """Its tasks keep exiting: apply says so in one line once every task has restarted CRASH_LOOP times
    (not after its 300 s wait), the service is recorded, so the next plan knows it, and a fixed file
    updates it."""
    path = tmp_path / "loop.toml"
    path.write_text(LOOP.format(command='["sh", "-c", "echo broken >&2; exit 3"]'))
    try:
        result = cli(cluster, "apply", str(path), timeout=200)
        one_line_error(result, "service loop-bad does not come up: its tasks keep failing (loop-bad.1 exited with "
                               "code 3, restarted", "cantainer logs loop-bad.1")
        assert "broken" in cli(cluster, "logs", "loop-bad.1").stderr
        code, document = plan_json(cluster, path)
        assert code == 0 and ops(document) == {"network:back": "=none", "service:bad": "=none"}, document
        path.write_text(LOOP.format(command='"sleep 1d"'))
        out = ok(cli(cluster, "apply", str(path), timeout=200))
        assert "updated to version 2; 1/1 ready" in out and out.splitlines()[-1] == "stack loop: 1 updated", out
    finally:
        ok(cli(cluster, "rm-stack", "loop", timeout=200))
