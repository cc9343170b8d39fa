"""`run` costs one raft commit: the record that allocates the name and address also says the container
runs (its pid and start time), exactly as the runtime on its host records them — so the containers
controller finds nothing to report afterwards. Proven from the raft journal and the host's own files."""
from __future__ import annotations

import json
import time

import pytest

from cantainer_agent import layout
from tests.labcli import agent_call, cli, host_path, ok

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
