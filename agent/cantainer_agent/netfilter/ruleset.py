"""The agent's nftables table ``inet cantainer`` as data: built from the cluster state, pure.

One table, one chain per purpose (today: ``input``), rules and named sets in libnftables JSON.
``build`` returns a ``Ruleset``: its *structure* (table, sets, chains, rules) and the *elements*
of its sets. ``replace_commands`` re-creates the whole table in one transaction (add, delete, add:
atomic, no moment without rules, idempotent); ``element_commands`` turns the elements a listing
shows into the wanted ones. ``observe`` reads a listing into a comparable form: the structure
without handles and counter values, and each set's elements. Rules (docs/security.md):

* nothing enters the host from a tenant network: packets arriving on our bridges or VXLAN devices
  (``cbr-*``, ``cvx-*``: prefixes the overlay reserves; a container's veth is a bridge port, so
  its packets arrive on the bridge) are dropped in ``input`` — containers talk within their
  subnet only, so this also stops a container's forged VXLAN datagram for the host's VXLAN socket;
* VXLAN (UDP ``vxlan_port``) is accepted only from cluster members' underlay addresses.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..overlay.model import BRIDGE_PREFIX, VXLAN_PREFIX

FAMILY = "inet"
TABLE = "cantainer"
MEMBERS4 = "members4"
MEMBERS6 = "members6"
INPUT_PRIORITY = 0  # "filter"; a drop in any base chain is final whatever the other chains accept


def _table() -> dict:
    return {"family": FAMILY, "name": TABLE}


def _in_table(**fields: Any) -> dict:
    return {"family": FAMILY, "table": TABLE, **fields}


def _rule(chain: str, comment: str, *expr: dict) -> dict:
    return {"add": {"rule": _in_table(chain=chain, expr=list(expr), comment=comment)}}


def _match(left: dict, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _iifname() -> dict:
    return {"meta": {"key": "iifname"}}


def _payload(protocol: str, field_name: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field_name}}


DROP = ({"counter": None}, {"drop": None})


@dataclass(frozen=True)
class Ruleset:
    structure: tuple[dict, ...]
    elements: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the structure (not the elements): a changed key means re-create the table."""
        return json.dumps(self.structure, sort_keys=True)

    def replace_commands(self) -> list[dict]:
        commands = [{"add": {"table": _table()}}, {"delete": {"table": _table()}}, *self.structure]
        return commands + element_commands(self.elements, {})

    def element_commands(self, observed: Mapping[str, frozenset[str]]) -> list[dict]:
        return element_commands(self.elements, observed)


def element_commands(wanted: Mapping[str, frozenset[str]], observed: Mapping[str, frozenset[str]]) -> list[dict]:
    """Deletes of unwanted set elements, then adds of missing ones (one batch)."""
    deletes, adds = [], []
    for name in sorted(wanted):
        have = observed.get(name, frozenset())
        gone, missing = sorted(have - wanted[name]), sorted(wanted[name] - have)
        if gone:
            deletes.append({"delete": {"element": _in_table(name=name, elem=gone)}})
        if missing:
            adds.append({"add": {"element": _in_table(name=name, elem=missing)}})
    return deletes + adds


def delete_commands() -> list[dict]:
    """Remove the table whether or not it exists (teardown)."""
    return [{"add": {"table": _table()}}, {"delete": {"table": _table()}}]


def build(members: Iterable[str], vxlan_port: int) -> Ruleset:
    """Our table for a cluster whose members' underlay addresses are *members*."""
    v4: set[str] = set()
    v6: set[str] = set()
    for address in members:
        ip = ipaddress.ip_address(address)
        (v4 if ip.version == 4 else v6).add(str(ip))
    structure = (
        {"add": {"table": _table()}},
        {"add": {"set": _in_table(name=MEMBERS4, type="ipv4_addr")}},
        {"add": {"set": _in_table(name=MEMBERS6, type="ipv6_addr")}},
        {"add": {"chain": _in_table(name="input", type="filter", hook="input", prio=INPUT_PRIORITY,
                                    policy="accept")}},
        _rule("input", "tenant bridges never reach the host", _match(_iifname(), f"{BRIDGE_PREFIX}*"), *DROP),
        _rule("input", "VXLAN devices never reach the host", _match(_iifname(), f"{VXLAN_PREFIX}*"), *DROP),
        _rule("input", "VXLAN from cluster members only", _match(_payload("udp", "dport"), vxlan_port),
              _match(_payload("ip", "saddr"), f"@{MEMBERS4}", "!="), *DROP),
        _rule("input", "VXLAN from cluster members only", _match(_payload("udp", "dport"), vxlan_port),
              _match(_payload("ip6", "saddr"), f"@{MEMBERS6}", "!="), *DROP),
    )
    return Ruleset(structure, {MEMBERS4: frozenset(v4), MEMBERS6: frozenset(v6)})


@dataclass(frozen=True)
class Observed:
    """A listing of our table: ``structure`` (comparable text) and each set's elements."""

    structure: str
    elements: Mapping[str, frozenset[str]]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "handle":
                continue
            if key == "counter" and isinstance(item, dict):
                item = {}  # packets and bytes change; the counter's presence is structure
            out[key] = _strip(item)
        return out
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _element(value: Any) -> str:
    if isinstance(value, dict) and "elem" in value:  # an element with options (timeout, comment)
        value = value["elem"].get("val")
    return str(ipaddress.ip_address(str(value)))


def observe(listing: list[dict]) -> Observed | None:
    """The comparable form of ``list table inet cantainer``'s output; None if the table is absent."""
    items = [item for item in listing if "metainfo" not in item]
    if not any("table" in item for item in items):
        return None
    elements: dict[str, frozenset[str]] = {}
    structure = []
    for item in items:
        if "set" in item:
            body = dict(item["set"])
            elements[body["name"]] = frozenset(_element(e) for e in body.pop("elem", []))
            item = {"set": body}
        structure.append(_strip(item))
    return Observed(json.dumps(structure, sort_keys=True), elements)


def list_command() -> list[dict]:
    return [{"list": {"table": _table()}}]
