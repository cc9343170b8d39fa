"""A founding `up` on the lab: the first `voters` hosts start together as the initial voters (each with the
others as partners from the start, no membership change), the rest join as standbys; with one voter it
leads at once. Proven from what each agent wrote (members.json, agent.log), not from timing."""
from __future__ import annotations

import ast
import json
import re

import pytest

from cantainer_agent import layout, raftkey
from tests.labcli import cantainer, host_path, ok

pytestmark = pytest.mark.lab

HOSTS = ("h1", "h2", "h3")


def founded(lab, voters: int):
    inventory = lab.dir / f"inventory-voters{voters}.toml"
    text = lab.inventory_file.read_text()
    inventory.write_text(re.sub(r"\[cluster\]\n", f"[cluster]\nvoters = {voters}\n", text, count=1))
    cantainer("down", "--purge", "-i", str(inventory))  # a fresh cluster: nothing of an earlier one
    ok(cantainer("up", str(inventory)))
    return inventory


def agent_log(lab, host: str) -> str:
    return host_path(lab, host, f"{layout.LOG_DIR}/{layout.LOG_NAME}").read_text()


def members(lab, host: str) -> dict:
    return json.loads(host_path(lab, host, f"{layout.DATA_DIR}/{layout.MEMBERS_NAME}").read_text())


@pytest.fixture
def purge(lab):
    made = []
    yield made
    for inventory in made:
        cantainer("down", "--purge", "-i", str(inventory))


def test_three_initial_voters_start_with_each_other_and_no_membership_change(lab, purge):
    purge.append(founded(lab, 3))
    addresses = {h: members(lab, h)["self"] for h in HOSTS}
    for host in HOSTS:
        assert sorted(members(lab, host)["members"]) == sorted(addresses.values())
        others = sorted(a for h, a in addresses.items() if h != host)
        started = re.findall(r"raft started on \S+ as voter with partners (\[.*?\])", agent_log(lab, host))
        assert started and sorted(ast.literal_eval(started[0])) == others, started  # the full group, from its start
        assert "join: " not in agent_log(lab, host)  # nobody was added one membership change at a time


def test_one_voter_leads_at_once_and_the_others_join_as_standbys(lab, purge):
    purge.append(founded(lab, 1))
    assert members(lab, "h1")["members"] == [members(lab, "h1")["self"]] and members(lab, "h1")["role"] == "voter"
    for host in ("h2", "h3"):
        assert members(lab, host)["role"] == "standby"
        assert re.search(r"joined through \S+ as standby", agent_log(lab, host))
    assert "raft role: candidate -> leader" in agent_log(lab, "h1")


def test_a_founded_node_drops_its_founding_keys_so_up_again_writes_nothing(lab, purge):
    purge.append(inventory := founded(lab, 3))
    for host in HOSTS:
        config = json.loads(host_path(lab, host, layout.CONFIG_FILE).read_text())
        assert config["bootstrap"] is False and "initial_voters" not in config, config
    assert "founding keys dropped" in agent_log(lab, "h1")
    secret = (lab.dir / "cluster.secret").read_bytes().strip()
    kept = lab.dir / "cluster.secret.raftkey"  # derived once per secret, kept beside the workstation's copy
    assert kept.read_bytes() == raftkey.record(secret) and kept.stat().st_mode & 0o777 == 0o600
    for host in HOSTS:  # up wrote the raft key beside the secret (derived once, on the workstation)
        key = host_path(lab, host, raftkey.key_file(layout.SECRET_FILE))
        assert key.read_bytes() == raftkey.record(secret) and key.stat().st_mode & 0o777 == 0o600
    written = {host: host_path(lab, host, layout.CONFIG_FILE).stat().st_ino for host in HOSTS}
    again = ok(cantainer("up", str(inventory)))
    assert again.count("unchanged") == len(HOSTS), again
    assert {host: host_path(lab, host, layout.CONFIG_FILE).stat().st_ino for host in HOSTS} == written  # not rewritten

