"""The table as data: what `build` asks for, how a listing compares, element diffs (pure)."""
from __future__ import annotations

import json

import pytest

from cantainer_agent.controllers.netfilter import members_of
from cantainer_agent.netfilter import ruleset


def rules(rs: ruleset.Ruleset) -> list[dict]:
    return [c["add"]["rule"] for c in rs.structure if "rule" in c.get("add", {})]


def test_members_split_by_family_and_canonical():
    rs = ruleset.build(["198.18.0.2", "198.18.0.3", "FD00:0:0::1"], 4789)
    assert rs.elements == {"members4": frozenset({"198.18.0.2", "198.18.0.3"}), "members6": frozenset({"fd00::1"})}


def test_invalid_member_address_is_refused():
    with pytest.raises(ValueError):
        ruleset.build(["not-an-address"], 4789)


def test_input_chain_drops_tenant_devices_and_foreign_vxlan():
    rs = ruleset.build(["198.18.0.2"], 8472)
    chains = [c["add"]["chain"] for c in rs.structure if "chain" in c.get("add", {})]
    assert chains == [{"family": "inet", "table": "cantainer", "name": "input", "type": "filter", "hook": "input",
                       "prio": 0, "policy": "accept"}]
    body = [json.dumps(r["expr"]) for r in rules(rs)]
    assert '"right": "cbr-*"' in body[0] and '"drop"' in body[0]
    assert '"right": "cvx-*"' in body[1] and '"drop"' in body[1]
    for text, family, members in ((body[2], "ip", "@members4"), (body[3], "ip6", "@members6")):
        assert '"field": "dport"}}, "right": 8472' in text
        assert f'"protocol": "{family}", "field": "saddr"}}}}, "right": "{members}"' in text
        assert '"op": "!="' in text and '"drop"' in text
    # device rules come before the VXLAN rules: a container's datagram with a member's source
    # address must meet the device rule first
    assert [r["comment"] for r in rules(rs)][:2] == ["tenant bridges never reach the host",
                                                     "VXLAN devices never reach the host"]


def test_replace_is_one_atomic_idempotent_batch():
    rs = ruleset.build(["198.18.0.2"], 4789)
    commands = rs.replace_commands()
    table = {"family": "inet", "name": "cantainer"}
    assert commands[:2] == [{"add": {"table": table}}, {"delete": {"table": table}}]  # works whether or not it exists
    assert commands[2:2 + len(rs.structure)] == list(rs.structure)
    assert commands[-1] == {"add": {"element": {"family": "inet", "table": "cantainer", "name": "members4",
                                                "elem": ["198.18.0.2"]}}}


def test_element_diff_deletes_then_adds_only_the_difference():
    rs = ruleset.build(["198.18.0.2", "198.18.0.4"], 4789)
    have = {"members4": frozenset({"198.18.0.2", "198.18.0.3"}), "members6": frozenset()}
    assert rs.element_commands(have) == [
        {"delete": {"element": {"family": "inet", "table": "cantainer", "name": "members4", "elem": ["198.18.0.3"]}}},
        {"add": {"element": {"family": "inet", "table": "cantainer", "name": "members4", "elem": ["198.18.0.4"]}}},
    ]
    assert rs.element_commands(rs.elements) == []


def test_key_changes_with_structure_not_with_members():
    assert ruleset.build(["198.18.0.2"], 4789).key == ruleset.build(["198.18.0.9"], 4789).key
    assert ruleset.build(["198.18.0.2"], 4789).key != ruleset.build(["198.18.0.2"], 8472).key


LISTING = [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "cantainer", "handle": 7}},
    {"set": {"family": "inet", "name": "members4", "table": "cantainer", "type": "ipv4_addr", "handle": 1,
             "elem": ["198.18.0.2", {"elem": {"val": "198.18.0.3", "comment": "x"}}]}},
    {"set": {"family": "inet", "name": "members6", "table": "cantainer", "type": "ipv6_addr", "handle": 2}},
    {"rule": {"family": "inet", "table": "cantainer", "chain": "input", "handle": 4,
              "expr": [{"counter": {"packets": 12, "bytes": 900}}, {"drop": None}]}},
]


def test_observe_ignores_handles_counter_values_and_elements():
    observed = ruleset.observe(LISTING)
    assert observed.elements == {"members4": frozenset({"198.18.0.2", "198.18.0.3"}), "members6": frozenset()}
    later = json.loads(json.dumps(LISTING))
    later[1]["table"]["handle"] = 99
    later[2]["set"]["elem"] = []
    later[4]["rule"]["expr"][0]["counter"] = {"packets": 13, "bytes": 1000}
    assert ruleset.observe(later).structure == observed.structure
    later[4]["rule"]["expr"][1] = {"accept": None}  # a rule changed: the structure differs
    assert ruleset.observe(later).structure != observed.structure


def test_observe_absent_table():
    assert ruleset.observe([{"metainfo": {"version": "1.0.6"}}]) is None


def test_members_are_every_node_and_ourselves():
    state = {"nodes": {"h1": {"address": "198.18.0.2"}, "h2": {"address": "198.18.0.3"}}}
    assert members_of(state, "198.18.0.4") == {"198.18.0.2", "198.18.0.3", "198.18.0.4"}
    assert members_of({"nodes": {}}, "198.18.0.4") == {"198.18.0.4"}
