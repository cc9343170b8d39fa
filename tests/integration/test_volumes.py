"""Volumes on the real lab: data that outlives its containers, an agent SIGKILL and a host crash,
stays on its host (and containers go to it), is removed only when unused, and bind mounts that
would reach cantainer's or the kernel's own files are refused with one line and nothing changed."""
from __future__ import annotations

import json

import pytest

from tests.labcli import (
    agent_pid,
    cli,
    cluster_snapshot,
    container_processes,
    host_exec,
    host_path,
    kill_agent,
    ok,
    one_line_error,
    ps,
    wait_for,
)

pytestmark = pytest.mark.lab
NET = "10.60.0.0/24"
VOLUME_DIR = "/var/lib/cantainer/volumes"


def volumes(cluster) -> dict[str, dict]:
    return {v["name"]: v for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}


def read(cluster, name: str, path: str) -> str:
    return ok(cli(cluster, "exec", name, "cat", path))


@pytest.fixture(scope="module")
def db(cluster):
    """`db` on h2 with volume `data` (created by this first use) holding /data/greeting."""
    ok(cli(cluster, "run", "--host", "h2", "-n", NET, "--name", "db", "-v", "data:/data", "-d", "sleep", "1d"))
    ok(cli(cluster, "exec", "db", "sh", "-c", "echo hello > /data/greeting"))
    return "db"


def test_first_use_creates_the_volume_on_the_containers_host(lab, cluster, db):
    listed = volumes(cluster)
    assert listed["data"]["host"] == "h2" and listed["data"]["containers"] == ["db"]
    assert listed["data"]["mountpoint"] == f"{VOLUME_DIR}/data"
    assert host_path(lab, "h2", f"{VOLUME_DIR}/data/greeting").read_text() == "hello\n"
    assert not host_path(lab, "h1", f"{VOLUME_DIR}/data").exists()
    assert ok(cli(cluster, "volume", "ls", "-q")).split() == ["data"]
    table = ok(cli(cluster, "volume", "ls")).splitlines()
    assert table[0].split() == ["NAME", "HOST", "CREATED", "CONTAINERS"] and table[1].split()[:2] == ["data", "h2"]
    inspected = json.loads(ok(cli(cluster, "volume", "inspect", "data", "--json")))
    assert [v["name"] for v in inspected] == ["data"] and inspected[0]["created_at"].endswith("Z")
    assert "mountpoint  /var/lib/cantainer/volumes/data" in ok(cli(cluster, "volume", "inspect", "data"))
    mounts = ok(cli(cluster, "exec", "db", "grep", " /data ", "/proc/self/mounts")).split()
    assert {"nosuid", "nodev", "rw"} <= set(mounts[3].split(","))
    assert ps(cluster)["db"]["mounts"] == [{"type": "volume", "source": "data", "target": "/data", "readonly": False}]
    # its host tells the cluster it holds something (what lets an empty one be made again elsewhere)
    wait_for(lambda: volumes(cluster)["data"]["empty"] is False, 30, what="the volume to be seen not empty")
    assert "data        not empty" in ok(cli(cluster, "volume", "inspect", "data"))


def test_data_outlives_the_container_and_a_new_one_goes_to_its_host(cluster, db):
    ok(cli(cluster, "rm", "-f", "db"))
    assert volumes(cluster)["data"]["containers"] == []
    # no --host: the volume decides where it runs
    result = ok(cli(cluster, "run", "-n", NET, "--name", "db", "-v", "data:/data", "-d", "sleep", "1d"))
    assert result.split()[0] == "db" and ps(cluster)["db"]["host"] == "h2"
    assert read(cluster, "db", "/data/greeting") == "hello\n"
    ro = cli(cluster, "run", "-n", NET, "--name", "reader", "-v", "data:/in:ro", "sh", "-c",
             "cat /in/greeting; echo x > /in/other")
    assert ro.stdout == "hello\n" and "Read-only file system" in ro.stderr and ro.returncode != 0
    ok(cli(cluster, "rm", "reader"))


def test_a_container_on_another_host_than_its_volume_is_refused(lab, cluster, db):
    before = cluster_snapshot(lab, cluster)
    result = cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "wrong", "-v", "data:/data", "true")
    assert result.returncode == 125
    one_line_error(result, "volume data lives on h2, not h1", "--host h2")
    assert cluster_snapshot(lab, cluster) == before
    assert not host_path(lab, "h1", f"{VOLUME_DIR}/data").exists()  # refused before a directory was made


def test_volume_rm_is_refused_while_in_use_then_deletes_the_data(lab, cluster, db):
    ok(cli(cluster, "run", "--host", "h3", "-n", NET, "--name", "scratch", "-v", "scratch:/s", "sh", "-c",
           "echo x > /s/f"))
    assert host_path(lab, "h3", f"{VOLUME_DIR}/scratch/f").exists()
    refused = cli(cluster, "volume", "rm", "scratch")
    assert refused.returncode == 5
    one_line_error(refused, "volume scratch is in use by scratch", "remove it first")
    ok(cli(cluster, "rm", "scratch"))
    assert ok(cli(cluster, "volume", "rm", "scratch")) == "removed scratch\n"
    assert "scratch" not in volumes(cluster)
    assert not host_path(lab, "h3", f"{VOLUME_DIR}/scratch").exists()
    assert [p.name for p in host_path(lab, "h3", VOLUME_DIR).iterdir()] == []  # no leftover of the rename
    missing = cli(cluster, "volume", "rm", "scratch")
    assert missing.returncode == 3
    one_line_error(missing, "no volume named 'scratch'")


def test_volume_create_pins_a_volume_to_a_host(cluster):
    assert ok(cli(cluster, "volume", "create", "pinned", "--host", "h3")) == "pinned on h3\n"
    wait_for(lambda: volumes(cluster)["pinned"]["empty"] is True, 30, what="h3 to see the new volume empty")
    assert ok(cli(cluster, "volume", "create", "pinned", "--host", "h3")) == "pinned on h3 (already exists)\n"
    other = cli(cluster, "volume", "create", "pinned", "--host", "h1")
    assert other.returncode == 4
    one_line_error(other, "already exists on h3")
    ok(cli(cluster, "run", "-n", NET, "--name", "onpinned", "-v", "pinned:/p", "true"))
    assert ps(cluster)["onpinned"]["host"] == "h3"
    ok(cli(cluster, "rm", "onpinned"))
    ok(cli(cluster, "volume", "rm", "pinned"))


def test_data_survives_an_agent_sigkill(lab, cluster, db):
    old = agent_pid(lab, "h2")
    db_id = ps(cluster)["db"]["id"]
    kill_agent(lab, "h2")
    assert container_processes(lab, "h2")[db_id]["alive"]  # the container keeps running, and writing
    assert host_exec(lab, "h2", "sh", "-c", f"echo during >> {VOLUME_DIR}/data/greeting").returncode == 0
    ok(cli(cluster, "up", str(cluster)))
    assert agent_pid(lab, "h2") != old
    assert read(cluster, "db", "/data/greeting") == "hello\nduring\n"
    assert volumes(cluster)["data"]["host"] == "h2"


def test_data_survives_a_host_crash_and_boot(lab, cluster, db):
    ok(cli(cluster, "exec", "db", "sh", "-c", "echo before-crash >> /data/greeting && sync"))
    try:
        lab.crash("h2")
        wait_for(lambda: volumes(cluster)["data"]["host_down"], 60, what="h2 to count as down")
        assert "(down)" in ok(cli(cluster, "volume", "ls"))
        refused = cli(cluster, "volume", "rm", "data")  # its data is where nobody can delete it now
        assert refused.returncode == 69
        one_line_error(refused, "volume data is on host h2, which is down", "bring h2 back")
        lab.boot("h2")
        ok(cli(cluster, "up", str(cluster)))
        wait_for(lambda: ps(cluster)["db"]["state"] == "dead", 60, what="db to be reported dead")
    finally:
        lab.boot("h2")
    ok(cli(cluster, "rm", "-f", "db"))
    ok(cli(cluster, "run", "-n", NET, "--name", "db", "-v", "data:/data", "-d", "sleep", "1d"))
    assert read(cluster, "db", "/data/greeting") == "hello\nduring\nbefore-crash\n"


def test_bind_mounts_of_host_directories(lab, cluster):
    assert host_exec(lab, "h1", "sh", "-c", "mkdir -p /srv/site && echo page > /srv/site/index").returncode == 0
    out = ok(cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "site", "-v", "/srv/site:/www:ro",
                 "sh", "-c", "cat /www/index; grep ' /www ' /proc/self/mounts"))
    first, mount = out.splitlines()
    assert first == "page" and {"ro", "nosuid", "nodev"} <= set(mount.split()[3].split(","))
    ok(cli(cluster, "rm", "site"))
    assert "bind" not in volumes(cluster)  # a bind is no volume


@pytest.mark.parametrize("spec, needles", [
    ("/var/lib/cantainer:/x", ["bind mount source /var/lib/cantainer is refused: it is /var/lib/cantainer"]),
    ("/var/lib/cantainer/volumes/data:/x", ["inside /var/lib/cantainer"]),
    ("/var/lib:/x", ["it contains /var/lib/cantainer"]),
    ("/:/host", ["it contains"]),
    ("/etc/cantainer:/x", ["it is /etc/cantainer"]),
    ("/run/cantainer:/x", ["it is /run/cantainer"]),
    ("/proc:/x", ["it is /proc"]),
    ("/sys/fs/cgroup:/x", ["inside /sys"]),
    ("/dev:/x", ["it is /dev"]),
    ("/srv/../var/lib/cantainer:/x", ["is refused: it is /var/lib/cantainer"]),
    ("/srv/cantainer-link:/x", ["resolves to /var/lib/cantainer", "is refused"]),
    ("/srv/no-such-dir:/x", ["does not exist on h1", "create it there first"]),
    ("./data:/x", ["not an absolute path"]),
    ("data:relative", ["mount target 'relative' is not an absolute path"]),
    ("data:/proc/x", ["inside /proc"]),
    ("data:/", ["would hide the image"]),
    ("data:/x:rx", ["unknown option 'rx'", "ro or rw"]),
    ("data", ["is not NAME:/path[:ro]"]),
    ("_bad:/x", ["volume name '_bad' is invalid"]),
])
def test_refused_mounts_are_one_line_and_change_nothing(lab, cluster, spec, needles):
    assert host_exec(lab, "h1", "sh", "-c", "ln -sfn /var/lib/cantainer /srv/cantainer-link").returncode == 0
    before = cluster_snapshot(lab, cluster)
    volumes_before = volumes(cluster)
    result = cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "refused", "-v", spec, "true")
    assert result.returncode == 125
    one_line_error(result, *needles)
    assert cluster_snapshot(lab, cluster) == before and volumes(cluster) == volumes_before


def test_down_purge_names_the_volumes_it_deletes(lab, cluster, db):
    ok(cli(cluster, "run", "--host", "h3", "-n", NET, "--name", "keep3", "-v", "logs:/l", "true"))
    out = ok(cli(cluster, "down", "--purge"))
    lines = {line.split(":")[0].lstrip("✓ "): line for line in out.splitlines()}
    assert "volume data deleted" in lines["h2"] and "volume logs deleted" in lines["h3"], out
    assert "volume" not in lines["h1"], out
    assert not host_path(lab, "h2", VOLUME_DIR).exists()
    ok(cli(cluster, "up", str(cluster)))  # the module's fixture purges again at its end
