"""Reads that are never stale, refusals with codes a script can act on — on the lab."""
from __future__ import annotations

import pytest

from cantainer_agent import protocol
from tests.labcli import agent_call, cli, ok, one_line_error, wait_for

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
