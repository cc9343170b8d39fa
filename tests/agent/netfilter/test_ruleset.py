"""The tables as data: what `build` asks for (from fixtures), how a listing compares, element diffs (pure)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cantainer_agent.controllers.netfilter import members_of, rules_of
from cantainer_agent.netfilter import ruleset

FIXTURES = Path(__file__).with_name("fixtures")


def rules(rs: ruleset.Ruleset, family: str = "inet", chain: str | None = None) -> list[dict]:
    return [c["add"]["rule"] for c in rs.structure if "rule" in c.get("add", {})
            and c["add"]["rule"]["family"] == family and (chain is None or c["add"]["rule"]["chain"] == chain)]


def comments(rs: ruleset.Ruleset, chain: str, family: str = "inet") -> list[str]:
    return [r["comment"] for r in rules(rs, family, chain)]


def fixture_ruleset(node: str = "h1") -> ruleset.Ruleset:
    state = json.loads((FIXTURES / "cluster_state.json").read_text())
    networks, ports, published = rules_of(state, node)
    return ruleset.build(members_of(state, state["nodes"][node]["address"]), 4789, networks, ports, published)


def as_json(elements) -> dict:
    """Canonical elements as the fixture writes them (tuples become lists), sorted."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, tuple) else value
    return {name: sorted((plain(e) for e in values), key=json.dumps) for name, values in elements.items()}


def test_elements_of_a_cluster_fixture():
    expected = json.loads((FIXTURES / "h1_elements.json").read_text())
    expected.pop("_comment")
    assert as_json(fixture_ruleset("h1").elements) == {k: sorted(v, key=json.dumps) for k, v in expected.items()}


def test_dnat_maps_hold_only_this_hosts_running_containers():
    h2 = fixture_ruleset("h2").elements
    assert h2["dnat_any_addr"] == {(("tcp", 5432), "10.50.0.3")} and h2["dnat_ip_addr"] == frozenset()
    # the published set (for containers reaching cluster hosts) is the same on every host; exited ones are out
    assert h2["published4"] == fixture_ruleset("h1").elements["published4"]
    assert ("198.18.0.2", "tcp", 9000) not in h2["published4"]


def test_structure_does_not_change_with_containers_or_networks():
    empty = ruleset.build(["198.18.0.2"], 4789)
    assert fixture_ruleset("h1").key == fixture_ruleset("h2").key == empty.key
    assert empty.key != ruleset.build(["198.18.0.2"], 8472).key


def test_members_split_by_family_and_canonical():
    rs = ruleset.build(["198.18.0.2", "198.18.0.3", "FD00:0:0::1"], 4789)
    assert rs.elements["members4"] == {"198.18.0.2", "198.18.0.3"} and rs.elements["members6"] == {"fd00::1"}


def test_invalid_addresses_are_refused():
    with pytest.raises(ValueError):
        ruleset.build(["not-an-address"], 4789)
    with pytest.raises(ValueError):
        ruleset.build(["198.18.0.2"], 4789, [ruleset.NetworkRules("cbr-1", "10.0.0.0/24", "10.0.0.300")])


def test_input_chain_order_dns_first_then_drops():
    rs = ruleset.build(["198.18.0.2"], 8472)
    assert comments(rs, "input") == [
        "DNS on the network's own gateway", "replies to the host's own connections into a network",
        "tenant bridges never reach the host", "VXLAN devices never reach the host",
        "VXLAN from cluster members only", "VXLAN from cluster members only"]
    body = [json.dumps(r["expr"]) for r in rules(rs, chain="input")]
    assert '"right": "@dns4"' in body[0] and '"right": 53' in body[0] and '"accept"' in body[0]
    assert '"right": "cbr-*"' in body[2] and '"drop"' in body[2]
    assert '"right": "cvx-*"' in body[3] and '"drop"' in body[3]
    for text, family, members in ((body[4], "ip", "@members4"), (body[5], "ip6", "@members6")):
        assert '"field": "dport"}}, "right": 8472' in text
        assert f'"protocol": "{family}", "field": "saddr"}}}}, "right": "{members}"' in text
        assert '"op": "!="' in text and '"drop"' in text


def test_forward_chain_order_isolates_networks():
    """The order is the policy: within a network first, then the cross-network drop before any
    accept that could let a packet from one network into another, members last."""
    rs = ruleset.build(["198.18.0.2"], 4789)
    assert comments(rs, "forward") == [
        "within one network (bridged, or routed back to its bridge)", "internal networks have no egress",
        "a published port, from another network", "never from one network to another",
        "replies to a network's egress", "published ports", "nothing else enters a network through the host",
        "replies from published ports", "no IPv6 out of a network",
        "never to another network's addresses, here or elsewhere",
        "cluster hosts: only their published ports", "cluster hosts: only their published ports"]
    verdicts = [next(k for e in r["expr"] for k in e if k in ("accept", "drop")) for r in rules(rs, chain="forward")]
    assert verdicts == ["accept", "drop", "accept", "drop", "accept", "accept", "drop", "accept", "drop", "drop",
                        "accept", "drop"]
    text = [json.dumps(r["expr"]) for r in rules(rs, chain="forward")]
    # a DNAT'd connection may cross networks only through a published port: ct status dnat, as a bit test
    assert '{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}' in text[2]


def test_nat_chains():
    rs = ruleset.build(["198.18.0.2"], 4789)
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in rs.structure if "chain" in c.get("add", {})
              and c["add"]["chain"]["family"] == "inet"}
    assert (chains["dnat"]["hook"], chains["dnat_local"]["hook"], chains["snat"]["hook"]) == (
        "prerouting", "output", "postrouting")
    assert chains["prerouting"]["prio"] < chains["dnat"]["prio"]  # loopback filter before DNAT
    every = json.dumps(rules(rs, chain="dnat")[1]["expr"])
    assert '"right": "local"' in every
    assert '"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@overlay4"' in every
    assert rules(rs, chain="dnat")[0]["expr"] == rules(rs, chain="dnat_local")[0]["expr"]
    egress = json.dumps(rules(rs, chain="snat")[2]["expr"])
    assert '"right": "@egress4"' in egress and '"masquerade"' in egress


def test_bridge_table_keeps_the_gateway_off_vxlan():
    rs = ruleset.build(["198.18.0.2"], 4789)
    assert comments(rs, "output", "bridge") == ["nothing the host sends crosses VXLAN"]
    assert comments(rs, "input", "bridge") == ["nothing from VXLAN is for the host"]
    assert comments(rs, "forward", "bridge") == ["only the host sends as a gateway"]


def test_replace_is_one_atomic_idempotent_batch():
    rs = ruleset.build(["198.18.0.2"], 4789)
    commands = rs.replace_commands()
    inet, bridge = {"family": "inet", "name": "cantainer"}, {"family": "bridge", "name": "cantainer"}
    assert commands[:4] == [{"add": {"table": inet}}, {"delete": {"table": inet}},
                            {"add": {"table": bridge}}, {"delete": {"table": bridge}}]  # whether or not they exist
    assert commands[4:4 + len(rs.structure)] == list(rs.structure)
    assert commands[4 + len(rs.structure):] == [{"add": {"element": {"family": "inet", "table": "cantainer",
                                                                     "name": "members4", "elem": ["198.18.0.2"]}}}]


def test_element_diff_deletes_then_adds_only_the_difference():
    rs = ruleset.build(["198.18.0.2", "198.18.0.4"], 4789)
    have = {**rs.elements, "members4": frozenset({"198.18.0.2", "198.18.0.3"})}
    assert rs.element_commands(have) == [
        {"delete": {"element": {"family": "inet", "table": "cantainer", "name": "members4", "elem": ["198.18.0.3"]}}},
        {"add": {"element": {"family": "inet", "table": "cantainer", "name": "members4", "elem": ["198.18.0.4"]}}},
    ]
    assert rs.element_commands(rs.elements) == []


def test_element_json_for_prefixes_concatenations_maps_and_the_bridge_family():
    rs = fixture_ruleset("h1")
    commands = {c["add"]["element"]["name"]: c["add"]["element"] for c in rs.element_commands({})}
    assert commands["overlay4"]["elem"][0] == {"prefix": {"addr": "10.50.0.0", "len": 24}}
    assert commands["dns4"]["elem"][0] == {"concat": ["cbr-4096", "10.50.0.1"]}
    assert commands["dnat_any_port"]["elem"] == [[{"concat": ["tcp", 8080]}, 80]]
    assert commands["gateway_macs"]["family"] == "bridge"


LISTING = [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "cantainer", "handle": 7}},
    {"set": {"family": "inet", "name": "members4", "table": "cantainer", "type": "ipv4_addr", "handle": 1,
             "elem": ["198.18.0.2", {"elem": {"val": "198.18.0.3", "comment": "x"}}]}},
    {"set": {"family": "inet", "name": "members6", "table": "cantainer", "type": "ipv6_addr", "handle": 2}},
    {"set": {"family": "inet", "name": "overlay4", "table": "cantainer", "type": "ipv4_addr", "flags": ["interval"],
             "handle": 3, "elem": [{"prefix": {"addr": "10.50.0.0", "len": 24}}]}},
    {"set": {"family": "inet", "name": "dns4", "table": "cantainer", "type": ["ifname", "ipv4_addr"], "handle": 4,
             "elem": [{"concat": ["cbr-4096", "10.50.0.1"]}]}},
    {"map": {"family": "inet", "name": "dnat_any_port", "table": "cantainer", "type": ["inet_proto", "inet_service"],
             "map": "inet_service", "handle": 5, "elem": [[{"concat": ["tcp", 8080]}, 80]]}},
    {"rule": {"family": "inet", "table": "cantainer", "chain": "input", "handle": 4,
              "expr": [{"counter": {"packets": 12, "bytes": 900}}, {"drop": None}]}},
    {"table": {"family": "bridge", "name": "cantainer", "handle": 8}},
    {"set": {"family": "bridge", "name": "gateway_macs", "table": "cantainer", "type": "ether_addr", "handle": 1,
             "elem": ["02:42:0A:32:00:01"]}},
]


def test_observe_reads_elements_canonically_and_ignores_handles_and_counters():
    observed = ruleset.observe(LISTING)
    assert observed.elements == {"members4": {"198.18.0.2", "198.18.0.3"}, "members6": frozenset(),
                                 "overlay4": {"10.50.0.0/24"}, "dns4": {("cbr-4096", "10.50.0.1")},
                                 "dnat_any_port": {(("tcp", 8080), 80)}, "gateway_macs": {"02:42:0a:32:00:01"}}
    later = json.loads(json.dumps(LISTING))
    later[1]["table"]["handle"] = 99
    later[2]["set"]["elem"] = []
    later[7]["rule"]["expr"][0]["counter"] = {"packets": 13, "bytes": 1000}
    assert ruleset.observe(later).structure == observed.structure
    later[7]["rule"]["expr"][1] = {"accept": None}  # a rule changed: the structure differs
    assert ruleset.observe(later).structure != observed.structure


def test_observe_what_build_wants_matches_after_a_listing():
    """Elements read back from a listing compare equal to what build made (no spurious changes)."""
    rs = fixture_ruleset("h1")
    listing = [{"table": {"family": f, "name": "cantainer"}} for f in ("inet", "bridge")]
    for command in rs.element_commands({}):
        element = command["add"]["element"]
        kind = "map" if element["name"] in ruleset.MAPS else "set"
        listing.append({kind: {"family": element["family"], "name": element["name"], "table": "cantainer",
                               "elem": element["elem"]}})
    observed = ruleset.observe(listing)
    assert rs.element_commands({**{n: frozenset() for n in rs.elements}, **observed.elements}) == []


def test_observe_absent_table():
    assert ruleset.observe([{"metainfo": {"version": "1.0.6"}}]) is None
    assert ruleset.observe(LISTING[:8]) is None  # the bridge table is missing: re-create


def test_members_are_every_node_and_ourselves():
    state = {"nodes": {"h1": {"address": "198.18.0.2"}, "h2": {"address": "198.18.0.3"}}}
    assert members_of(state, "198.18.0.4") == {"198.18.0.2", "198.18.0.3", "198.18.0.4"}
    assert members_of({"nodes": {}}, "198.18.0.4") == {"198.18.0.4"}
