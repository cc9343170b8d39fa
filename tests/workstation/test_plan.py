"""`up`'s decisions from probe fixtures (pyinfra-style: facts in, plan out; no host needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cantainer.inventory import load_inventory
from cantainer.plan import (
    NoFounder,
    choose_bootstrap,
    desired_config,
    founding_voters,
    plan_host,
    secret_digest,
    underlay_addresses,
)
from cantainer.remote import ProbeResult

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "plan_host.json").read_text())
BUNDLE = "a" * 64
SECRET = b"s" * 32
ADDRESSES = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "inventory.toml"
    path.write_text('[cluster]\nname = "lab"\n'
                    + "".join(f'[[hosts]]\nname = "{n}"\naddress = "{a}"\n' for n, a in ADDRESSES.items()))
    return load_inventory(path)


def facts(inventory, overrides: dict) -> ProbeResult:
    """The fixture's facts; symbolic configs stand for the config `up` wants and its variants."""
    host = inventory.hosts[0]
    wanted = desired_config(inventory, host, ADDRESSES, BUNDLE, bootstrap=False)
    configs = {"WANTED": wanted, "OLD_BUNDLE": {**wanted, "bundle": "0" * 64},
               "BOOTSTRAP_FLIPPED": {**wanted, "bootstrap": True}}
    data = {**FIXTURES["base_facts"], **overrides}
    if isinstance(data["config"], str):
        data["config"] = configs[data["config"]]
    if data["secret_sha256"] == "SECRET":
        data["secret_sha256"] = secret_digest(SECRET)
    return ProbeResult.parse(json.dumps(data))


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=[c["name"] for c in FIXTURES["cases"]])
def test_plan_host(inventory, case):
    plan = plan_host(inventory, inventory.hosts[0], facts(inventory, case["facts"]), bundle_digest=BUNDLE,
                     secret_sha256=secret_digest(SECRET), addresses=ADDRESSES, bootstrap_node=None)
    got = {key: getattr(plan, key) for key in case["plan"]}
    assert got == case["plan"]
    assert plan.touches_files == any(case["plan"][k] for k in ("push_bundle", "write_secret", "write_config"))


def test_desired_config_seeds_are_the_other_hosts_join_ports(inventory):
    config = desired_config(inventory, inventory.hosts[1], ADDRESSES, BUNDLE, bootstrap=False)
    assert config["seeds"] == ["10.0.0.1:7481", "10.0.0.3:7481"]
    assert (config["node"], config["address"], config["bundle"]) == ("h2", "10.0.0.2", BUNDLE)


@pytest.mark.parametrize("case", FIXTURES["bootstrap"], ids=[c["name"] for c in FIXTURES["bootstrap"]])
def test_choose_bootstrap(inventory, case):
    probes = {name: facts(inventory, {"has_state": name in case["with_state"]}) for name in case["probed"]}
    if case["founder"] == "refused":
        with pytest.raises(NoFounder, match="unreachable"):
            choose_bootstrap(inventory, probes)
    else:
        assert choose_bootstrap(inventory, probes) == case["founder"]


def inventory_of(tmp_path, hosts: dict[str, dict]):
    path = tmp_path / "dns.toml"
    path.write_text('[cluster]\nname = "lab"\n' + "".join(
        f'[[hosts]]\nname = "{name}"\n' + "".join(f'{key} = "{value}"\n' for key, value in fields.items())
        for name, fields in hosts.items()))
    return load_inventory(path)


@pytest.mark.parametrize("case", FIXTURES["addresses"], ids=[c["name"] for c in FIXTURES["addresses"]])
def test_underlay_addresses(inventory, tmp_path, case):
    hosts = inventory_of(tmp_path, case["hosts"])
    probes = {name: facts(inventory, {"ssh_server_address": seen}) for name, seen in case["answered"].items()}
    addresses = underlay_addresses(hosts, probes, case["registered"])
    assert addresses == case["addresses"]
    assert list(addresses) == list(case["hosts"])  # inventory order: the seeds' order never flips


@pytest.mark.parametrize("case", FIXTURES["seeds"], ids=[c["name"] for c in FIXTURES["seeds"]])
def test_seeds(inventory, tmp_path, case):
    hosts = inventory_of(tmp_path, {name: {"address": f"h{index}.example"}
                                    for index, name in enumerate(case["addresses"], 1)})
    current = None if case["current"] is None else {"seeds": case["current"]}
    config = desired_config(hosts, hosts.hosts[0], case["addresses"], BUNDLE, bootstrap=False, current=current)
    assert config["seeds"] == case["seeds"]


def test_a_host_that_does_not_answer_changes_nothing_for_the_others(inventory):
    """h3 is down: h1 and h2 keep their config and keep running (no restart), as Ansible leaves them."""
    running = {"bundles": ["cantainer_agent-aaaaaaaaaaaaaaaa"], "secret_sha256": "SECRET", "config": "WANTED",
               "agent_pid": 4242, "has_state": True}
    probes = {name: facts(inventory, {**running, "ssh_server_address": ADDRESSES[name]}) for name in ("h1", "h2")}
    addresses = underlay_addresses(inventory, probes, registered={})
    plan = plan_host(inventory, inventory.hosts[0], probes["h1"], bundle_digest=BUNDLE,
                     secret_sha256=secret_digest(SECRET), addresses=addresses, bootstrap_node=None)
    assert (plan.start, plan.write_config, plan.touches_files) == (None, False, False)


FIVE = {f"h{i}": f"10.0.0.{i}" for i in range(1, 6)}


@pytest.fixture
def five(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "five.toml"
    path.write_text('[cluster]\nname = "lab"\nvoters = 3\n'
                    + "".join(f'[[hosts]]\nname = "{n}"\naddress = "{a}"\n' for n, a in FIVE.items()))
    return load_inventory(path)


def fresh(inventory) -> ProbeResult:
    return facts(inventory, {})


def test_a_founding_up_starts_the_first_voters_hosts_together_as_initial_voters_and_the_rest_as_standbys(five):
    plans = {host.name: plan_host(five, host, fresh(five), bundle_digest=BUNDLE, secret_sha256=secret_digest(SECRET),
                                  addresses=FIVE, bootstrap_node="h1") for host in five.hosts}
    voters = ["10.0.0.1:7480", "10.0.0.2:7480", "10.0.0.3:7480"]
    for name in ("h1", "h2", "h3"):
        assert plans[name].config["bootstrap"] is True and plans[name].config["initial_voters"] == voters
    for name in ("h4", "h5"):  # they join the voters through the seeds (as standbys)
        assert plans[name].config["bootstrap"] is False and "initial_voters" not in plans[name].config
        assert len(plans[name].config["seeds"]) == 4
    assert {plan.start for plan in plans.values()} == {"start"}  # every host starts in the same round


def test_founding_voters_are_the_first_voters_hosts_and_none_without_a_founder(five):
    assert founding_voters(five, "h1") == ["h1", "h2", "h3"]
    assert founding_voters(five, None) == []


def test_once_the_cluster_exists_the_founding_keys_change_nothing(five):
    """A later `up` writes bootstrap false and no initial_voters; a running initial voter is not restarted."""
    host = five.hosts[1]
    founded = desired_config(five, host, FIVE, BUNDLE, bootstrap=True, initial_voters=["h1", "h2", "h3"])
    probe = facts(five, {"config": founded, "agent_pid": 42, "has_state": True,
                         "bundles": ["cantainer_agent-aaaaaaaaaaaaaaaa"], "secret_sha256": "SECRET"})
    plan = plan_host(five, host, probe, bundle_digest=BUNDLE, secret_sha256=secret_digest(SECRET), addresses=FIVE,
                     bootstrap_node=None)
    assert "initial_voters" not in plan.config and plan.config["bootstrap"] is False
    assert plan.write_config and plan.start is None


