"""`run` costs one raft commit: the record that allocates the name and address also says the container
runs (its pid and start time), exactly as the runtime on its host records them — so the containers
controller finds nothing to report afterwards. Proven from the raft journal and the host's own files.
And the host gets ready for a start while `run` is still asking which image layers it has."""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest

from cantainer_agent import layout
from tests.labcli import agent_call, agent_pid, cli, host_exec, host_path, ok, wait_for

pytestmark = pytest.mark.lab


def test_run_is_one_commit_and_the_record_matches_the_hosts_own(lab, cluster):
    name = f"once-{int(time.time()) % 100000}"
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.66.0.0/24", "--name", name, "-d", "sleep", "3600"))
    try:
        record = {c["name"]: c for c in agent_call(lab, "h1", "container.ps").unwrap()}[name]  # the agent's own times
        assert record["state"] == "running"
        journal = host_path(lab, "h1", f"{layout.DATA_DIR}/{layout.JOURNAL_NAME}").read_bytes()
        assert journal.count(b"create_container") >= 1
        creates = [chunk for chunk in journal.split(b"create_container")[1:] if name.encode() in chunk[:2048]]
        reports = [chunk for chunk in journal.split(b"container_observed")[1:] if name.encode() in chunk[:512]]
        assert len(creates) == 1 and reports == [], (len(creates), len(reports))
        pids = json.loads(host_path(lab, "h1", f"{layout.RUN_DIR}/containers/{record['id']}/pids.json").read_text())
        assert pids["started_at"] == record["started_at"]  # so the controller's comparison finds no change
    finally:
        cli(cluster, "rm", "-f", name)


_ZYGOTES = r"""
import os, sys
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            parent, argv = int(stat.read().rsplit(")", 1)[1].split()[1]), cmdline.read()
    except (OSError, ValueError, IndexError):
        continue
    if parent == int(sys.argv[1]) and b"runtime.zygote" in argv:
        print(pid)
"""


def zygotes(lab, host: str) -> list[int]:
    """Pids of the fork servers (runtime/zygote.py) the host's agent runs."""
    result = host_exec(lab, host, "python3", "-c", _ZYGOTES, str(agent_pid(lab, host)))
    assert result.returncode == 0, result.stderr
    return [int(pid) for pid in result.stdout.split()]


def test_asking_a_host_for_layers_readies_it_for_the_start_that_follows(lab, cluster):
    for pid in zygotes(lab, "h3"):  # as after an agent restart: no fork server yet
        host_exec(lab, "h3", "kill", str(pid))
    wait_for(lambda: not zygotes(lab, "h3"), 10, what="h3's fork server to stop")
    incoming = host_path(lab, "h3", layout.image_incoming_dir())
    shutil.rmtree(incoming, ignore_errors=True)
    absent = "sha256:" + "5" * 64
    assert agent_call(lab, "h3", "image.status", {"layers": [absent]}).unwrap() == {"missing": [absent]}
    assert incoming.is_dir()  # where `run` stages the layer next, without making it over SSH first
    ready = wait_for(lambda: zygotes(lab, "h3"), 10, what="h3's agent to start its fork server")
    name = f"ready-{int(time.time()) % 100000}"
    try:  # the start that follows uses that fork server: it spawns none of its own
        ok(cli(cluster, "run", "--host", "h3", "-n", "10.66.0.0/24", "--name", name, "-d", "sleep", "3600"))
        assert zygotes(lab, "h3") == ready
    finally:
        cli(cluster, "rm", "-f", name)


def test_ssh_connections_send_with_aes_gcm_first(lab, cluster):
    from cantainer import ssh
    from cantainer.inventory import load_inventory

    async def negotiated() -> str:
        connection = await ssh.connect(load_inventory(cluster).host("h1"))
        try:
            return connection.cipher
        finally:
            connection.close()

    assert asyncio.run(negotiated()) == ssh.CIPHERS[0] == "aes128-gcm@openssh.com"
