"""`up`'s decisions from probe fixtures (pyinfra-style: facts in, plan out; no host needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cantainer.inventory import load_inventory
from cantainer.plan import NoFounder, choose_bootstrap, desired_config, plan_host, secret_digest
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
    data["config"] = configs.get(data["config"], data["config"])
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
