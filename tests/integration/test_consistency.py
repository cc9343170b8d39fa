"""Reads that are never stale, refusals with codes a script can act on — on the lab."""
from __future__ import annotations

import json
import os

import pytest

from cantainer_agent import protocol
from tests.labcli import agent_call, cli, host_exec, ok, one_line_error, wait_for

pytestmark = pytest.mark.lab


def test_error_codes_become_distinct_exit_codes(cluster):
    missing = cli(cluster, "network", "rm", "10.91.0.0/24")
    assert missing.returncode == 3 and "does not exist" in one_line_error(missing)
    assert "already exists" not in ok(cli(cluster, "network", "create", "10.91.0.0/24"))
    assert "(already exists)" in ok(cli(cluster, "network", "create", "10.91.0.0/24"))
    overlap = cli(cluster, "network", "create", "10.91.0.0/23")
    assert overlap.returncode == 5 and "overlaps" in one_line_error(overlap)
    ok(cli(cluster, "network", "rm", "10.91.0.0/24"))


def test_reads_are_linearizable_by_default_and_stale_only_when_asked(cluster):
    import json

    doc = json.loads(ok(cli(cluster, "status", "--json")))
    assert doc["consistency"] == "linearizable"
    assert json.loads(ok(cli(cluster, "status", "--json", "--stale")))["consistency"] == "stale"
    ok(cli(cluster, "network", "create", "10.92.0.0/24"))
    for flags in ([], ["--stale"]):
        listed = json.loads(ok(cli(cluster, "network", "ls", "--json", *flags)))
        assert "10.92.0.0/24" in {n["cidr"] for n in listed}
    ok(cli(cluster, "network", "rm", "10.92.0.0/24"))


def test_a_cut_off_host_refuses_a_read_it_cannot_confirm_instead_of_answering_stale(lab, cluster):
    ok(cli(cluster, "network", "create", "10.93.0.0/24"))
    lab.cut("h3")
    try:
        # h3's replica still lists the network, but h3 cannot confirm it is current: no answer.
        refused = agent_call(lab, "h3", "network.ls", {})
        assert not refused.ok and refused.error.code == protocol.UNAVAILABLE, refused
        assert "stale" in refused.error.message
        stale = agent_call(lab, "h3", "network.ls", {"consistency": "stale"})
        assert stale.ok and "10.93.0.0/24" in {n["cidr"] for n in stale.result}
        ok(cli(cluster, "network", "rm", "10.93.0.0/24"))  # the majority moves on …
        # … and h3's stale answer is now wrong: exactly what a default read must never give.
        stale = agent_call(lab, "h3", "network.ls", {"consistency": "stale"})
        assert "10.93.0.0/24" in {n["cidr"] for n in stale.result}
    finally:
        lab.cut("h3", up=True)
    wait_for(lambda: agent_call(lab, "h3", "network.ls", {}).ok, 30, what="h3 to confirm reads again")
    assert "10.93.0.0/24" not in {n["cidr"] for n in agent_call(lab, "h3", "network.ls", {}).result}


def test_a_retried_rm_answers_as_its_first_attempt_did_and_spares_what_was_made_since(lab, cluster):
    """Exactly once means the same answer too. A retry (same session) of an rm whose first attempt
    removed the object, sent after another request made one of that name, gets the first attempt's
    answer and leaves the new one alone. Found by the linearizability test: a retried `volume.rm`
    answered "it is on another host" after another host had taken the name."""
    client = f"retry-test-{os.getpid()}"
    ok(cli(cluster, "volume", "create", "rv-a", "--host", "h1"))
    first = agent_call(lab, "h1", "volume.rm", {"name": "rv-a"}, session={"client": client, "seq": 1})
    assert first.ok, first
    ok(cli(cluster, "volume", "create", "rv-a", "--host", "h2"))  # another host takes the name
    again = agent_call(lab, "h1", "volume.rm", {"name": "rv-a"}, session={"client": client, "seq": 1})
    assert again.ok and again.result["removed"] == "rv-a", again.error
    volumes = {v["name"]: v["host"] for v in json.loads(ok(cli(cluster, "volume", "ls", "--json")))}
    assert volumes.get("rv-a") == "h2"
    ok(cli(cluster, "volume", "rm", "rv-a"))

    ok(cli(cluster, "run", "--host", "h1", "-n", "10.94.0.0/24", "--name", "rc-a", "-d", "sleep", "600"))
    first = agent_call(lab, "h1", "container.rm", {"name": "rc-a", "force": True}, session={"client": client, "seq": 2})
    assert first.ok, first
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.94.0.0/24", "--name", "rc-a", "-d", "sleep", "600"))
    again = agent_call(lab, "h1", "container.rm", {"name": "rc-a", "force": True}, session={"client": client, "seq": 2})
    assert again.ok, again.error
    listed = {c["name"]: c["state"] for c in json.loads(ok(cli(cluster, "ps", "-a", "--json")))}
    assert listed.get("rc-a") == "running"  # the new container was not this request's to remove
    ok(cli(cluster, "rm", "-f", "rc-a"))
    ok(cli(cluster, "network", "rm", "10.94.0.0/24"))


def test_a_resent_run_whose_first_attempt_failed_to_start_fails_too_and_starts_nothing(lab, cluster):
    """A `run` whose start fails takes its record back (Workload.undo_create). Its resend (same
    session: the answer was lost) used to find the record in its replayed create, start the
    container anyway and answer ok, for a container the cluster no longer had. Found by reading the
    code after a linearizability failure; staged here with a command that exists only for the resend."""
    from cantainer.containers import RunRequest, run_params
    from cantainer.inventory import load_inventory
    from cantainer.run_image import tarball_image
    from cantainer_agent import mounts

    net, name, client = "10.95.0.0/24", f"resent-{os.getpid()}", f"resend-test-{os.getpid()}"
    tool = "/srv/resend-tool"
    assert host_exec(lab, "h1", "sh", "-c", f"rm -rf {tool} && mkdir -p {tool}").returncode == 0
    ok(cli(cluster, "run", "--host", "h1", "-n", net, "--rm", "true"))  # the image's layer is on h1 now
    request = RunRequest(host="h1", network=net, name=name, command=["/tool/run"],
                         mounts=mounts.check_all([mounts.parse(f"{tool}:/tool:ro")]))
    params = run_params(request, tarball_image("alpine", load_inventory(cluster)))
    try:
        first = agent_call(lab, "h1", "container.run", params, session={"client": client, "seq": 1})
        assert not first.ok and first.error.code == protocol.COMMAND_NOT_FOUND, first
        assert host_exec(lab, "h1", "sh", "-c", f"printf '#!/bin/sh\\nexec sleep 600\\n' > {tool}/run "
                                                f"&& chmod +x {tool}/run").returncode == 0
        again = agent_call(lab, "h1", "container.run", params, session={"client": client, "seq": 1})
        assert not again.ok and "first attempt" in again.error.message, again
        assert name not in {c["name"] for c in json.loads(ok(cli(cluster, "ps", "-a", "--json")))}
        fresh = agent_call(lab, "h1", "container.run", params, session={"client": client, "seq": 2})
        assert fresh.ok, fresh.error  # a new request runs it: the command exists now
    finally:
        cli(cluster, "rm", "-f", name)
        cli(cluster, "network", "rm", net)
        host_exec(lab, "h1", "rm", "-rf", tool)
