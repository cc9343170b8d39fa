"""`cantainer up / status / down` against the real lab: real sshd, real agents, real raft."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cantainer import remote
from cantainer_agent import layout
from tests.labcli import (
    CANTAINER,
    agent_call,
    agent_pid,
    cantainer,
    cli,
    container_processes,
    host_exec,
    host_path,
    ok,
    ps,
    status,
    wait_for,
)
from tests.pingout import replies

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cluster(lab):
    result = cantainer("up", str(lab.inventory_file))
    assert result.returncode == 0, result.stdout + result.stderr
    yield lab.inventory_file
    cantainer("down", "--purge", "-i", str(lab.inventory_file))


def test_up_forms_a_cluster_of_three_up_nodes_with_one_leader(cluster):
    doc = status(cluster)
    assert sorted(n["name"] for n in doc["nodes"]) == ["h1", "h2", "h3"]
    assert all(n["state"] == "up" for n in doc["nodes"])
    leaders = [n["name"] for n in doc["nodes"] if n["role"] == "leader"]
    assert leaders == [doc["leader"]]
    assert doc["networks"] == [] and doc["containers"] == []


def test_status_works_from_any_host_and_renders(cluster):
    result = cantainer("status", "-i", str(cluster))
    assert result.returncode == 0, result.stderr
    assert "leader" in result.stdout and all(h in result.stdout for h in ("h1", "h2", "h3"))


def test_piped_status_is_not_cut_at_80_columns(lab, cluster):
    result = cantainer("status", "-i", str(cluster), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    for node in status(cluster)["nodes"]:
        assert node["address"] in result.stdout, result.stdout


def test_status_watch_json_streams_one_document_per_line(cluster):
    import json
    import signal

    process = subprocess.Popen([*CANTAINER, "status", "--watch", "--json", "-i", str(cluster)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        documents = [json.loads(process.stdout.readline()) for _ in range(2)]
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    assert all(sorted(n["name"] for n in doc["nodes"]) == ["h1", "h2", "h3"] for doc in documents)
    assert process.returncode == 0 and "Traceback" not in err, err


def test_rerun_of_up_changes_nothing(lab, cluster):
    before = {h: agent_pid(lab, h) for h in ("h1", "h2", "h3")}
    result = cantainer("up", str(cluster))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("unchanged") == 3
    assert "pushed" not in result.stdout
    assert {h: agent_pid(lab, h) for h in ("h1", "h2", "h3")} == before


def test_a_running_agent_reports_the_facts_its_hosts_probe_reads(lab, cluster):
    """`up` asks a running agent instead of probing: the same document the probe prints on that host
    (the same code, `cantainer_agent.facts`), but the SSH server's address, which only the probe sees."""
    for host in ("h1", "h3"):
        answer = agent_call(lab, host, "facts")
        assert answer.ok, answer.error
        probe = host_exec(lab, host, "/usr/bin/python3", "-c", remote.PROBE, layout.PID_FILE, layout.CONFIG_FILE,
                          layout.BUNDLES_DIR, layout.MEMBERS_FILE, layout.SECRET_FILE)
        assert probe.returncode == 0, probe.stderr
        expected = json.loads(probe.stdout)
        assert answer.result == {**expected, "ssh_server_address": None}
        assert answer.result["agent_pid"] == agent_pid(lab, host) and answer.result["config"]["node"] == host
        assert answer.result["interpreter"] == "/usr/bin/python3"  # as `up` started it: the inventory's `python`
        assert remote.ProbeResult.from_document(answer.result).bundles  # what `up` makes of it


def test_a_second_up_while_one_runs_says_so_and_touches_nothing(lab, cluster):
    import fcntl

    from cantainer.inventory import load_inventory
    from cantainer.lock import lock_path

    before = {h: agent_pid(lab, h) for h in ("h1", "h2", "h3")}
    with open(lock_path(load_inventory(cluster)), "a+") as held:  # what a running `up` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write(f"{os.getpid()} up\n")
        held.flush()
        result = cantainer("up", str(cluster))
        down = cantainer("down", "-i", str(cluster))
    assert result.returncode == 1 and down.returncode == 1
    assert result.stderr.strip() == (f"cantainer: error: another `up` of cluster lab-{lab.name} is in progress on "
                                     f"this workstation (pid {os.getpid()}) — wait for it to finish, then run this "
                                     "again"), result.stderr
    assert "another `up`" in down.stderr
    assert {h: agent_pid(lab, h) for h in ("h1", "h2", "h3")} == before
    assert cantainer("up", str(cluster)).returncode == 0  # released: up works again


def test_an_agent_started_meanwhile_by_someone_else_is_named_as_such(lab, cluster):
    """Two `up`s from two workstations: the second to start h3's agent finds it taken, and says why."""
    from tests.labcli import LAB, kill_agent

    kill_agent(lab, "h3")
    holder = subprocess.Popen([*LAB, "exec", "--name", lab.name, "h3", "--", "python3", "-c",
                               "import fcntl, os, time; f = open('/var/lib/cantainer/agent.lock', 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print(os.getpid(), flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    inner = holder.stdout.readline().strip()  # its pid on h3
    try:
        assert inner.isdigit(), inner
        result = cantainer("up", str(cluster))
    finally:
        host_exec(lab, "h3", "kill", inner)
        holder.wait(timeout=30)
    assert result.returncode == 1
    assert re.search(r"h3: an agent was started on this host meanwhile — another `up` .* is in progress",
                     result.stdout), result.stdout
    assert cantainer("up", str(cluster)).returncode == 0


def test_an_agent_an_interrupted_up_started_late_is_taken_as_started(lab, cluster):
    """The probe saw no agent (an interrupted `up`'s launcher had not started it yet), then the launcher
    found the lock taken by that agent: same bundle and config, so `up` takes it as started instead of
    failing with "started meanwhile". Staged by hiding a running agent's pid file from the probe."""
    pid = agent_pid(lab, "h3")
    pid_file = host_path(lab, "h3", layout.PID_FILE)
    saved = pid_file.read_text()
    pid_file.unlink()
    try:
        result = cantainer("up", str(cluster))
    finally:
        pid_file.write_text(saved)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"h3 .*started", result.stdout) and result.stdout.count("unchanged") == 2, result.stdout
    assert "meanwhile" not in result.stdout
    assert host_exec(lab, "h3", "test", "-e", f"/proc/{pid}").returncode == 0  # the same agent runs on
    assert {n["name"]: n["state"] for n in status(cluster)["nodes"]} == {"h1": "up", "h2": "up", "h3": "up"}


def test_agent_runs_under_the_hosts_python_and_names_itself(lab, cluster):
    pid = agent_pid(lab, "h2")
    exe = host_exec(lab, "h2", "readlink", f"/proc/{pid}/exe").stdout.strip()
    assert exe.startswith("/usr/bin/python3")
    cmdline = host_exec(lab, "h2", "cat", f"/proc/{pid}/cmdline").stdout.split("\0")
    assert any("cantainer_agent" in part for part in cmdline)
    assert ".venv" not in " ".join(cmdline)


def test_killed_agent_is_restarted_and_rejoins_on_up(lab, cluster):
    pid = agent_pid(lab, "h3")
    assert host_exec(lab, "h3", "kill", "-9", str(pid)).returncode == 0
    result = cantainer("up", str(cluster))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"h3 .*started", result.stdout)
    assert agent_pid(lab, "h3") != pid
    doc = status(cluster)
    assert {n["name"]: n["state"] for n in doc["nodes"]} == {"h1": "up", "h2": "up", "h3": "up"}


def test_systemd_unit_verifies(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / layout.UNIT_NAME
    unit.write_text(remote.systemd_unit("/usr/bin/python3", "ab" * 32, "prod"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if layout.UNIT_NAME in line and "ExecStart" not in line]
    assert problems == [], result.stderr
    assert "Restart=always" in unit.read_text() and "KillMode=process" in unit.read_text()


def test_config_change_restarts_agents_one_at_a_time_keeping_quorum(lab, cluster, tmp_path):
    changed = variant(lab, tmp_path, append="")
    text = changed.read_text().replace("[cluster]\n", "[cluster]\nvoters = 5\n", 1)
    changed.write_text(text)
    before = {h: agent_pid(lab, h) for h in ("h1", "h2", "h3")}
    result = cantainer("up", str(changed))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("restarted") == 3
    after = {h: agent_pid(lab, h) for h in ("h1", "h2", "h3")}
    assert all(after[h] != before[h] for h in after)
    assert status(changed)["leader"] in ("h1", "h2", "h3")
    assert cantainer("up", str(cluster)).returncode == 0  # back to the original config


def test_status_shows_a_crashed_host_as_down_and_up_brings_it_back(lab, cluster):
    import time

    lab.crash("h3")
    try:
        deadline = time.monotonic() + 20  # a node is "down" once its heartbeats stop arriving
        while True:
            doc = status(cluster)
            states = {n["name"]: n["state"] for n in doc["nodes"]}
            if states["h3"] == "down" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert states["h3"] == "down" and states["h1"] == states["h2"] == "up"
    finally:
        lab.boot("h3")
    result = cantainer("up", str(cluster))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {n["name"]: n["state"] for n in status(cluster)["nodes"]} == {"h1": "up", "h2": "up", "h3": "up"}


def test_up_with_a_host_down_restarts_nobody_and_fails(lab, cluster, tmp_path):
    """Like Ansible: the reachable hosts are left alone (same agents, same leader), the unreachable
    one is reported and `up` exits non-zero; once it is back, `up` starts it and touches nobody else."""
    quick = variant(lab, tmp_path, {"[defaults]\n": "[defaults]\nconnect_timeout = 3\n"})
    doc = status(cluster)
    victim = next(n["name"] for n in doc["nodes"] if n["name"] != doc["leader"])
    others = [h for h in ("h1", "h2", "h3") if h != victim]
    before = {h: agent_pid(lab, h) for h in others}
    lab.crash(victim)
    try:
        result = cantainer("up", str(quick))
        assert result.returncode == 1, result.stdout + result.stderr
        assert re.search(rf"{victim}: unreachable", result.stdout), result.stdout
        for host in others:
            assert re.search(rf"{host} .*unchanged", result.stdout), result.stdout
        assert {h: agent_pid(lab, h) for h in others} == before
    finally:
        lab.boot(victim)
    result = cantainer("up", str(quick))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"{victim} .*started", result.stdout) and result.stdout.count("unchanged") == 2, result.stdout
    assert {h: agent_pid(lab, h) for h in others} == before
    assert status(cluster)["leader"] == doc["leader"]


def test_up_after_an_interrupted_first_up_finishes_the_job(lab, cluster):
    """Ctrl-C during a first `up` leaves hosts half-started; `status` still renders, the next `up` finishes."""
    import signal
    import time

    assert cantainer("down", "--purge", "-i", str(cluster)).returncode == 0
    process = subprocess.Popen([*CANTAINER, "up", str(cluster)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        # Interrupt as soon as a joining host's agent exists: it is still joining the founder.
        deadline = time.monotonic() + 60
        while not any(host_path(lab, h, layout.PID_FILE).exists() for h in ("h2", "h3")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "Traceback" not in out + err
    shown = cantainer("status", "-i", str(cluster))
    assert "Traceback" not in shown.stdout + shown.stderr and "internal error" not in shown.stderr, shown.stderr
    # The interrupted `up`'s remote launcher may still be starting an agent (on a loaded machine it
    # outlives the Ctrl-C): the new `up` takes that agent as started (same bundle and config).
    result = cantainer("up", str(cluster))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3/3 hosts ready" in result.stdout
    assert {n["name"]: n["state"] for n in status(cluster)["nodes"]} == {"h1": "up", "h2": "up", "h3": "up"}


def test_status_watch_refreshes_until_interrupted(cluster):
    import signal
    import time

    process = subprocess.Popen([*CANTAINER, "status", "--watch", "-i", str(cluster)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "h1" in out


def test_accept_new_records_unknown_host_keys(lab, cluster, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inventory = variant(lab, tmp_path, {str(lab.dir / "known_hosts"): str(empty)},)
    strict = cantainer("up", str(inventory))
    assert strict.returncode == 1 and "is unknown" in strict.stdout
    inventory.write_text(
        inventory.read_text().replace("[defaults]\n", '[defaults]\nhost_key_checking = "accept-new"\n', 1)
    )
    assert cantainer("up", str(inventory)).returncode == 0
    assert len(empty.read_text().splitlines()) == 3


def test_missing_or_old_python_is_a_clear_per_host_error(lab, cluster, tmp_path):
    missing = variant(lab, tmp_path, append="")
    missing.write_text(missing.read_text().replace("[defaults]\n", '[defaults]\npython = "/usr/bin/python9"\n', 1))
    result = cantainer("up", str(missing))
    assert result.returncode == 1 and re.search(r"h1: /usr/bin/python9 not found on the host", result.stdout)
    fake = lab.dir / "oldpython"  # the lab directory is visible inside hosts
    fake.write_text('#!/bin/sh\necho \'{"python": [3, 8, 10], "machine": "x86_64", "kernel": "", "hostname": "", '
                    '"systemd": false, "bundles": [], "secret_sha256": null, "config": null, "has_state": false, '
                    '"agent_pid": null, "ssh_server_address": null}\'\n')
    fake.chmod(0o755)
    missing.write_text(missing.read_text().replace("/usr/bin/python9", str(fake)))
    result = cantainer("up", str(missing))
    assert result.returncode == 1 and re.search(r"h2: python 3\.8\.10 .* is too old", result.stdout)


# -- per-host failures: one clear line per host, the others carry on ----------------------------------
def variant(lab, tmp_path: Path, replace: dict[str, str] | None = None, append: str = "") -> Path:
    text = lab.inventory_file.read_text()
    for old, new in (replace or {}).items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "inventory.toml"
    path.write_text(text + append)
    return path


def test_wrong_key_is_an_authentication_error_naming_each_host(lab, cluster, tmp_path):
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    inventory = variant(lab, tmp_path, {str(lab.dir / "id_ed25519"): str(other_key)})
    result = cantainer("up", str(inventory), env={"SSH_AUTH_SOCK": ""})
    assert result.returncode == 1
    for host in ("h1", "h2", "h3"):
        assert re.search(rf"{host}: authentication failed", result.stdout)
    assert "Traceback" not in result.stdout + result.stderr


def test_host_key_mismatch_is_refused(lab, cluster, tmp_path):
    bad_known_hosts = tmp_path / "known_hosts"
    lines = (lab.dir / "known_hosts").read_text().splitlines()
    foreign = (lab.dir / "hosts" / "h2" / "ssh_host_ed25519_key.pub").read_text().split()
    lines[0] = f"{lines[0].split()[0]} {foreign[0]} {foreign[1]}"  # h1's address with h2's key
    bad_known_hosts.write_text("\n".join(lines) + "\n")
    inventory = variant(lab, tmp_path, {str(lab.dir / "known_hosts"): str(bad_known_hosts)})
    result = cantainer("up", str(inventory))
    assert result.returncode == 1
    assert re.search(r"h1: host key of \S+ does not match", result.stdout)
    assert "2/3 hosts ready" in result.stdout


def test_unreachable_host_fails_alone(lab, cluster, tmp_path):
    network = lab.load().network
    ghost = f'\n[[hosts]]\nname = "ghost"\naddress = "{network[200]}"\nconnect_timeout = 2\n'
    result = cantainer("up", str(variant(lab, tmp_path, append=ghost)))
    assert result.returncode == 1
    assert re.search(r"ghost: unreachable", result.stdout)
    assert "3/4 hosts ready" in result.stdout


def test_down_stops_containers_gracefully_says_so_and_up_shows_why(lab, cluster):
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.5.0.0/24", "--name", "polite", "-d", "sh", "-c",
           "trap 'echo bye; exit 3' TERM; echo ready; while :; do sleep 0.1; done"))
    ok(cli(cluster, "run", "--host", "h2", "-n", "10.5.0.0/24", "--name", "deaf", "-d", "sleep", "100000"))
    wait_for(lambda: "ready" in ok(cli(cluster, "logs", "polite")), 10, what="the trap to be set")
    result = cantainer("down", "--time", "2", "-i", str(cluster))
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("h1: agent stopped, 1 container stopped", "h2: agent stopped, 1 container stopped",
                 "h3: agent stopped, no container running"):
        assert line in result.stdout, result.stdout
    again = cantainer("down", "-i", str(cluster))
    assert again.returncode == 0 and "h1: agent was not running, no container running" in again.stdout, again.stdout
    ok(cli(cluster, "up", str(cluster)))
    wait_for(lambda: ps(cluster)["deaf"]["reason"] == "stopped by down", 20, what="h2 to report deaf")
    wait_for(lambda: ps(cluster)["polite"]["reason"] == "stopped by down", 20, what="h1 to report polite")
    polite, deaf = ps(cluster)["polite"], ps(cluster)["deaf"]
    assert (polite["state"], polite["exit_code"]) == ("exited", 3)  # SIGTERM: its trap ran
    assert (deaf["state"], deaf["exit_code"]) == ("exited", 137)  # PID 1 ignores SIGTERM: SIGKILL after --time
    assert "bye" in ok(cli(cluster, "logs", "polite"))
    assert re.search(r"polite .* exited \(3\), stopped by down", ok(cli(cluster, "ps", "-a")))
    ok(cli(cluster, "rm", "polite", "deaf"))


def test_down_keep_containers_leaves_them_and_the_overlay_working(lab, cluster):
    _, ip = ok(cli(cluster, "run", "--host", "h1", "-n", "10.5.0.0/24", "--name", "kept", "-d",
                   "sleep", "100000")).split()
    ok(cli(cluster, "run", "--host", "h2", "-n", "10.5.0.0/24", "--name", "pinger", "-d",
           "ping", "-i", "0.2", "-w", "120", ip))
    # from its first reply on (before it, h2 may still be programming kept's address), none may be lost
    first = min(wait_for(lambda: replies(cli(cluster, "logs", "pinger").stdout, ip), 30, what="a first reply"))
    before = container_processes(lab, "h1")
    result = cantainer("down", "--keep-containers", "-i", str(cluster))
    assert result.returncode == 0 and "h1: agent stopped, 1 container left running" in result.stdout, result.stdout
    assert all(agent_pid(lab, h) is None for h in ("h1", "h2", "h3"))
    assert container_processes(lab, "h1") == before and all(p["alive"] for p in before.values())
    time.sleep(3.5)  # pings cross hosts while no agent runs anywhere
    ok(cli(cluster, "up", str(cluster)))
    assert ps(cluster)["kept"]["state"] == "running"
    # not ok(): when ping (PID 1) exits, the kernel kills the rest of its PID namespace, this `kill`
    # too, which may not have exited yet (137); the state below says whether the signal arrived
    cli(cluster, "exec", "pinger", "--", "kill", "-INT", "1")
    wait_for(lambda: ps(cluster)["pinger"]["state"] == "exited", 20, what="the pings to end")
    log = ok(cli(cluster, "logs", "pinger"))
    seqs = replies(log, ip)
    assert max(seqs) >= first + 17, log  # the pings went on through the 3.5 s without agents
    assert set(range(first, max(seqs) + 1)) <= seqs, (sorted(set(range(first, max(seqs) + 1)) - seqs), log)
    ok(cli(cluster, "rm", "-f", "kept", "pinger"))


def test_a_host_without_libnftables_is_refused_before_anything_is_pushed(lab, cluster, tmp_path):
    """The agent would refuse to start (VXLAN would be open to the underlay): `up` says so per host. The
    running agents have the library loaded and answer `facts` with no complaint, but a change (here a
    config change: every agent would restart) makes `up` probe the host itself before touching it."""
    import ctypes

    ctypes.CDLL("libnftables.so.1")  # the machine has it (make setup); hide it in each host's mount namespace
    with open("/proc/self/maps") as maps:
        library = next(line.split()[-1] for line in maps if "libnftables" in line)
    hidden = []
    try:
        for host in ("h1", "h2", "h3"):
            assert host_exec(lab, host, "mount", "--bind", "/dev/null", library).returncode == 0
            hidden.append(host)
        before = {host: agent_pid(lab, host) for host in hidden}
        assert "0/3" not in ok(cantainer("up", str(cluster)))  # nothing to do: the agents' facts suffice
        changed = variant(lab, tmp_path, {"[cluster]\n": "[cluster]\nreschedule_after = 12\n"})
        result = cantainer("up", str(changed))
        assert result.returncode == 1 and "0/3 hosts ready" in result.stdout, result.stdout + result.stderr
        for host in hidden:
            assert (f"{host}: libnftables.so.1 is missing (the agent needs nftables to protect the overlay) — "
                    "install the package libnftables1 there (apt-get install libnftables1)") in result.stdout
        assert {host: agent_pid(lab, host) for host in hidden} == before  # nothing restarted
    finally:
        for host in hidden:
            host_exec(lab, host, "umount", library)
    assert cantainer("up", str(cluster)).returncode == 0


NFT_TABLES = ("import json, sys; sys.path.insert(0, sys.argv[1]); from cantainer_agent.netfilter import Nft;"
              "print(json.dumps([t['table']['family'] + ' ' + t['table']['name']"
              " for t in Nft().run([{'list': {'tables': None}}]) if 'table' in t]))")


def nft_tables(lab, host: str) -> list[str]:
    """The nftables tables in `host`'s network namespace (read with this checkout's binding)."""
    result = host_exec(lab, host, sys.executable, "-c", NFT_TABLES, str(Path(__file__).resolve().parents[2] / "agent"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_down_stops_agents_and_purge_removes_state(lab, cluster):
    assert all(nft_tables(lab, host) == ["inet cantainer", "bridge cantainer"] for host in ("h1", "h2", "h3"))
    result = cantainer("down", "-i", str(cluster))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ("h1", "h2", "h3"):
        assert agent_pid(lab, host) is None
        assert host_exec(lab, host, "test", "-e", layout.MEMBERS_FILE).returncode == 0  # state kept
        assert nft_tables(lab, host) == []  # the tables go with the overlay they guarded
    # up resumes the same cluster from its state
    assert cantainer("up", str(cluster)).returncode == 0
    assert len([n for n in status(cluster)["nodes"] if n["state"] == "up"]) == 3
    assert cantainer("down", "--purge", "-i", str(cluster)).returncode == 0
    for host in ("h1", "h2", "h3"):
        assert host_exec(lab, host, "test", "-e", layout.MEMBERS_FILE).returncode != 0
        assert host_exec(lab, host, "test", "-e", layout.CONFIG_FILE).returncode != 0


def test_a_connection_opened_before_asyncssh_is_the_one_ssh_runs_over(cluster):
    """`up` opens each host's TCP connection before it imports asyncssh (cantainer/preconnect.py):
    the SSH connection must run over that very socket, not a second one."""
    import asyncio

    from cantainer.inventory import load_inventory
    from cantainer.preconnect import open_early
    from cantainer.ssh import connect

    host = load_inventory(cluster).hosts[0]
    early = open_early([host], limit=1)
    fileno = early[host.name].fileno()

    async def scenario() -> tuple[int, str]:
        connection = await connect(host, early=early)
        try:
            used = connection._conn.get_extra_info("socket").fileno()
            return used, (await connection.run(["hostname"])).stdout.strip()
        finally:
            connection.close()

    time.sleep(0.2)  # the handshake completes long before asyncssh would be imported
    used, name = asyncio.run(scenario())
    assert early == {} and used == fileno and name == host.name
