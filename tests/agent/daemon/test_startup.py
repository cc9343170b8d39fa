"""How a starting agent picks its raft partners and who calls the first election (daemon/startup.py).

No seed answers here (they point at closed loopback ports), as on a founding `up` where every node
starts at once."""
from __future__ import annotations

import json

import pytest

from cantainer_agent.config import parse_config
from cantainer_agent.consensus import load_members, save_members
from cantainer_agent.daemon.startup import Partners, StartupError, decide_partners
from tests.ports import closed_port

SECRET = b"s" * 32


@pytest.fixture
def config(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    seeds = [f"127.0.0.{i}:{closed_port()}" for i in (2, 3, 4)]

    def make(address="127.0.0.1", **extra):
        data = {"cluster": "c", "node": "n1", "address": address, "secret_file": str(secret), "seeds": seeds,
                "data_dir": str(tmp_path / "data"), **extra}
        (tmp_path / "data").mkdir(exist_ok=True)
        return parse_config(json.loads(json.dumps(data)))
    return make


VOTERS = ["127.0.0.1:7480", "127.0.0.2:7480", "127.0.0.3:7480"]


def test_the_first_initial_voter_founds_with_all_of_them_and_calls_the_first_election(config):
    cfg = config(bootstrap=True, initial_voters=VOTERS)
    assert decide_partners(cfg, SECRET) == Partners("bootstrap", VOTERS[1:], elect_early=True)
    assert list(load_members(cfg.data_dir).members) == VOTERS  # on disk before raft starts: a restart keeps them


def test_the_other_initial_voters_found_with_them_and_wait_for_its_call(config):
    cfg = config(address="127.0.0.2", bootstrap=True, initial_voters=VOTERS)
    assert decide_partners(cfg, SECRET) == Partners("bootstrap", [VOTERS[0], VOTERS[2]], elect_early=False)


def test_a_bootstrap_node_without_initial_voters_founds_a_one_voter_cluster_and_leads_at_once(config):
    cfg = config(bootstrap=True)
    assert decide_partners(cfg, SECRET) == Partners("bootstrap", [], elect_early=True)


def test_a_restarted_lone_voter_leads_at_once_and_a_member_of_a_group_does_not(config):
    cfg = config()
    save_members(cfg.data_dir, "c", cfg.raft_addr, [cfg.raft_addr])
    assert decide_partners(cfg, SECRET) == Partners("restart", [], elect_early=True)
    save_members(cfg.data_dir, "c", cfg.raft_addr, VOTERS)
    assert decide_partners(cfg, SECRET) == Partners("restart", VOTERS[1:], elect_early=False)
    save_members(cfg.data_dir, "c", cfg.raft_addr, VOTERS[1:], role="standby")
    assert decide_partners(cfg, SECRET).elect_early is False  # a standby never stands


def test_a_lone_node_restarts_without_seeds_or_founding_keys_once_it_has_state(config):
    """One host: its founding keys are dropped after it founded, and it has no seeds — still valid."""
    cfg = config(bootstrap=True, seeds=[])
    assert decide_partners(cfg, SECRET).mode == "bootstrap"
    member = config(seeds=[])
    assert decide_partners(member, SECRET) == Partners("restart", [], elect_early=True)


def test_a_node_without_state_seeds_or_bootstrap_is_one_clear_error(config):
    cfg = config(seeds=[])
    with pytest.raises(StartupError, match="'seeds' is empty and 'bootstrap' is false, and .* has no raft state"):
        decide_partners(cfg, SECRET)
    assert load_members(cfg.data_dir) is None  # nothing written
