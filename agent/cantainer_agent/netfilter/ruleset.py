"""The agent's nftables tables as data: built from the cluster state, pure.

Two tables, ``inet cantainer`` and ``bridge cantainer``; chains per hook, rules, and named sets and
maps in libnftables JSON. ``build`` returns a ``Ruleset``: its *structure* (tables, sets, chains,
rules — fixed for a cluster, so a container or network changes only *elements*) and the elements
of its sets. ``replace_commands`` re-creates both tables in one transaction (add, delete, add:
atomic, no moment without rules, idempotent); ``element_commands`` turns the elements a listing
shows into the wanted ones. ``observe`` reads a listing into a comparable form. What the rules
enforce, in order, is in ``build``'s comments and docs/security.md; in short: nothing crosses from
one network to another or reaches the host but DNS on its own gateway; egress from non-internal
networks is masqueraded behind the host's address, never to an overlay address or to a cluster
host (but its published ports); published ports are DNAT'd (and hairpin / localhost masqueraded);
VXLAN only from members; the gateway's MAC never crosses VXLAN.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping

from ..overlay.model import BRIDGE_PREFIX, VXLAN_PREFIX, mac_for_ip

FAMILY = "inet"
BRIDGE_FAMILY = "bridge"
TABLE = "cantainer"
TABLES = ((FAMILY, TABLE), (BRIDGE_FAMILY, TABLE))
MEMBERS4 = "members4"
MEMBERS6 = "members6"
INPUT_PRIORITY = 0  # "filter"; a drop in any base chain is final whatever the other chains accept
DNS_PORT = 53
LOOPBACK4 = {"prefix": {"addr": "127.0.0.0", "len": 8}}

# Sets and maps: name -> (family, kind, declaration). Elements are canonical Python values
# (``_canon``): an address or name as a str, a prefix as "a.b.c.d/len", a concatenation as a tuple,
# a map element as (key, value).
SETS: dict[str, tuple[str, dict]] = {
    MEMBERS4: (FAMILY, {"type": "ipv4_addr"}),
    MEMBERS6: (FAMILY, {"type": "ipv6_addr"}),
    "overlay4": (FAMILY, {"type": "ipv4_addr", "flags": ["interval"]}),  # every network's CIDR
    "egress4": (FAMILY, {"type": "ipv4_addr", "flags": ["interval"]}),  # CIDRs of networks with egress
    "same_network": (FAMILY, {"type": ["ifname", "ifname"]}),  # (bridge, bridge) of every network
    "internal": (FAMILY, {"type": "ifname"}),  # bridges of internal networks
    "dns4": (FAMILY, {"type": ["ifname", "ipv4_addr"]}),  # (bridge, its gateway)
    "published4": (FAMILY, {"type": ["ipv4_addr", "inet_proto", "inet_service"]}),  # every host's published ports
    "gateway_macs": (BRIDGE_FAMILY, {"type": "ether_addr"}),
}
# DNAT maps: (protocol, port) on every local address, or (address, protocol, port), to the container's
# address and port. Two maps each (address, port): libnftables 1.0.6's JSON parser cannot declare a
# map whose data is a concatenation (it crashed on the rule using one).
MAPS: dict[str, tuple[str, dict]] = {
    "dnat_any_addr": (FAMILY, {"type": ["inet_proto", "inet_service"], "map": "ipv4_addr"}),
    "dnat_any_port": (FAMILY, {"type": ["inet_proto", "inet_service"], "map": "inet_service"}),
    "dnat_ip_addr": (FAMILY, {"type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr"}),
    "dnat_ip_port": (FAMILY, {"type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "inet_service"}),
}
ANY = "0.0.0.0"


@dataclass(frozen=True, order=True)
class NetworkRules:
    """What the tables need of one network: its bridge, CIDR, gateway (None: a network from before
    gateways, which the host never routes) and whether it is internal (no egress)."""

    bridge: str
    cidr: str
    gateway: str | None = None
    internal: bool = False


@dataclass(frozen=True, order=True)
class PortRule:
    """A published port of a container on this host: host_ip:host_port/protocol → ip:port."""

    protocol: str
    host_ip: str
    host_port: int
    ip: str
    port: int


def _in(family: str = FAMILY, **fields: Any) -> dict:
    return {"family": family, "table": TABLE, **fields}


def _table(family: str = FAMILY) -> dict:
    return {"family": family, "name": TABLE}


def _chain(name: str, kind: str, hook: str, prio: int, family: str = FAMILY) -> dict:
    return {"add": {"chain": _in(family, name=name, type=kind, hook=hook, prio=prio, policy="accept")}}


def _rule(chain: str, comment: str, *expr: dict, family: str = FAMILY) -> dict:
    return {"add": {"rule": _in(family, chain=chain, expr=list(expr), comment=comment)}}


def _match(left: dict, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _payload(protocol: str, field_name: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field_name}}


def _concat(*items: dict) -> dict:
    return {"concat": list(items)}


IIF, OIF = _meta("iifname"), _meta("oifname")
L4 = _meta("l4proto")
DPORT = _payload("th", "dport")
SADDR4, DADDR4 = _payload("ip", "saddr"), _payload("ip", "daddr")
FROM_NET = _match(IIF, f"{BRIDGE_PREFIX}*")
TO_NET = _match(OIF, f"{BRIDGE_PREFIX}*")
TCP_UDP = _match(L4, {"set": ["tcp", "udp"]})
DNATTED = _match({"ct": {"key": "status"}}, "dnat", "in")
REPLY = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
DROP = ({"counter": None}, {"drop": None})
ACCEPT = ({"accept": None},)


def _dnat(key: dict, addr_map: str, port_map: str) -> dict:
    return {"dnat": {"family": "ip", "addr": {"map": {"key": key, "data": f"@{addr_map}"}},
                     "port": {"map": {"key": key, "data": f"@{port_map}"}}}}


def _structure(vxlan_port: int) -> tuple[dict, ...]:
    declarations = [{"add": {"table": _table(family)}} for family, _ in TABLES]
    for name, (family, spec) in SETS.items():
        declarations.append({"add": {"set": _in(family, name=name, **spec)}})
    for name, (family, spec) in MAPS.items():
        declarations.append({"add": {"map": _in(family, name=name, **spec)}})
    any_key = _concat(L4, DPORT)
    ip_key = _concat(DADDR4, L4, DPORT)
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    local_not_overlay = (local, _match(DADDR4, "@overlay4", "!="))
    return (
        *declarations,
        # -- filter, before anything: loopback addresses never travel on a tenant bridge (the bridges
        #    have route_localnet for localhost's published ports: CVE-2020-8558's lesson)
        _chain("prerouting", "filter", "prerouting", -300),
        _rule("prerouting", "no loopback address from a tenant network", FROM_NET, _match(DADDR4, LOOPBACK4), *DROP),
        _rule("prerouting", "no loopback address from a tenant network", FROM_NET, _match(SADDR4, LOOPBACK4), *DROP),
        # -- input: nothing from a network reaches the host but DNS on its own gateway
        _chain("input", "filter", "input", INPUT_PRIORITY),
        _rule("input", "DNS on the network's own gateway", _match(_concat(IIF, DADDR4), "@dns4"), TCP_UDP,
              _match(DPORT, DNS_PORT), *ACCEPT),
        _rule("input", "replies to the host's own connections into a network", FROM_NET, REPLY, *ACCEPT),
        _rule("input", "tenant bridges never reach the host", FROM_NET, *DROP),
        _rule("input", "VXLAN devices never reach the host", _match(IIF, f"{VXLAN_PREFIX}*"), *DROP),
        _rule("input", "VXLAN from cluster members only", _match(_payload("udp", "dport"), vxlan_port),
              _match(SADDR4, f"@{MEMBERS4}", "!="), *DROP),
        _rule("input", "VXLAN from cluster members only", _match(_payload("udp", "dport"), vxlan_port),
              _match(_payload("ip6", "saddr"), f"@{MEMBERS6}", "!="), *DROP),
        # -- forward: what the host routes for networks
        _chain("forward", "filter", "forward", INPUT_PRIORITY),
        _rule("forward", "within one network (bridged, or routed back to its bridge)",
              _match(_concat(IIF, OIF), "@same_network"), *ACCEPT),
        _rule("forward", "internal networks have no egress", _match(IIF, "@internal"), *DROP),
        _rule("forward", "a published port, from another network", FROM_NET, TO_NET, DNATTED, *ACCEPT),
        _rule("forward", "never from one network to another", FROM_NET, TO_NET, *DROP),
        _rule("forward", "replies to a network's egress", TO_NET, REPLY, *ACCEPT),
        _rule("forward", "published ports", TO_NET, DNATTED, *ACCEPT),
        _rule("forward", "nothing else enters a network through the host", TO_NET, *DROP),
        _rule("forward", "replies from published ports", FROM_NET, DNATTED, *ACCEPT),
        _rule("forward", "no IPv6 out of a network", FROM_NET, _match(_meta("nfproto"), "ipv6"), *DROP),
        _rule("forward", "never to another network's addresses, here or elsewhere", FROM_NET,
              _match(DADDR4, "@overlay4"), *DROP),
        _rule("forward", "cluster hosts: only their published ports", FROM_NET, _match(DADDR4, f"@{MEMBERS4}"),
              TCP_UDP, _match(_concat(DADDR4, L4, DPORT), "@published4"), *ACCEPT),
        _rule("forward", "cluster hosts: only their published ports", FROM_NET, _match(DADDR4, f"@{MEMBERS4}"),
              *DROP),
        # -- NAT: published ports (from outside and from the host itself), then source NAT
        _chain("dnat", "nat", "prerouting", -100),
        _rule("dnat", "published on one address", local, TCP_UDP, _dnat(ip_key, "dnat_ip_addr", "dnat_ip_port")),
        _rule("dnat", "published on every address", *local_not_overlay, TCP_UDP,
              _dnat(any_key, "dnat_any_addr", "dnat_any_port")),
        _chain("dnat_local", "nat", "output", -100),
        _rule("dnat_local", "published on one address", local, TCP_UDP,
              _dnat(ip_key, "dnat_ip_addr", "dnat_ip_port")),
        _rule("dnat_local", "published on every address", *local_not_overlay, TCP_UDP,
              _dnat(any_key, "dnat_any_addr", "dnat_any_port")),
        _chain("snat", "nat", "postrouting", 100),
        _rule("snat", "hairpin: a container reaching a published port sees its gateway", TO_NET, DNATTED,
              _match(SADDR4, "@overlay4"), {"masquerade": None}),
        _rule("snat", "the host's localhost reaching a published port", TO_NET, DNATTED,
              _match(SADDR4, LOOPBACK4), {"masquerade": None}),
        _rule("snat", "egress behind the host's address", _match(SADDR4, "@egress4"),
              _match(DADDR4, "@overlay4", "!="), {"masquerade": None}),
        # -- bridge: the gateway (same address and MAC on every host) is answered locally, never over VXLAN
        _chain("output", "filter", "output", 0, family=BRIDGE_FAMILY),
        _rule("output", "nothing the host sends crosses VXLAN", _match(OIF, f"{VXLAN_PREFIX}*"), *DROP,
              family=BRIDGE_FAMILY),
        _chain("input", "filter", "input", 0, family=BRIDGE_FAMILY),
        _rule("input", "nothing from VXLAN is for the host", _match(IIF, f"{VXLAN_PREFIX}*"), *DROP,
              family=BRIDGE_FAMILY),
        _chain("forward", "filter", "forward", 0, family=BRIDGE_FAMILY),
        _rule("forward", "only the host sends as a gateway", _match(_payload("ether", "saddr"), "@gateway_macs"),
              *DROP, family=BRIDGE_FAMILY),
    )


@dataclass(frozen=True)
class Ruleset:
    structure: tuple[dict, ...]
    elements: Mapping[str, frozenset[Hashable]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the structure (not the elements): a changed key means re-create the tables."""
        return json.dumps(self.structure, sort_keys=True)

    def replace_commands(self) -> list[dict]:
        commands = [*delete_commands(), *self.structure]
        return commands + element_commands(self.elements, {})

    def element_commands(self, observed: Mapping[str, frozenset[Hashable]]) -> list[dict]:
        return element_commands(self.elements, observed)


def _family_of(name: str) -> str:
    return (SETS.get(name) or MAPS.get(name) or (FAMILY, {}))[0]


def _to_json(value: Hashable, is_map: bool = False) -> Any:
    if is_map:
        key, data = value  # type: ignore[misc]
        return [_to_json(key), _to_json(data)]
    if isinstance(value, tuple):
        return {"concat": [_to_json(item) for item in value]}
    if isinstance(value, str) and "/" in value:
        network = ipaddress.ip_network(value)
        return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
    return value


def element_commands(wanted: Mapping[str, frozenset[Hashable]],
                     observed: Mapping[str, frozenset[Hashable]]) -> list[dict]:
    """Deletes of unwanted set elements, then adds of missing ones (one batch)."""
    deletes, adds = [], []
    for name in sorted(wanted):
        have = observed.get(name, frozenset())
        is_map = name in MAPS
        gone = sorted((_to_json(e, is_map) for e in have - wanted[name]), key=json.dumps)
        missing = sorted((_to_json(e, is_map) for e in wanted[name] - have), key=json.dumps)
        if gone:
            deletes.append({"delete": {"element": _in(_family_of(name), name=name, elem=gone)}})
        if missing:
            adds.append({"add": {"element": _in(_family_of(name), name=name, elem=missing)}})
    return deletes + adds


def delete_commands() -> list[dict]:
    """Remove the tables whether or not they exist (teardown; the start of a re-creation)."""
    commands = []
    for family, _ in TABLES:
        commands += [{"add": {"table": _table(family)}}, {"delete": {"table": _table(family)}}]
    return commands


def _prefix(cidr: str) -> str:
    return str(ipaddress.IPv4Network(cidr))


def build(members: Iterable[str], vxlan_port: int, networks: Iterable[NetworkRules] = (),
          ports: Iterable[PortRule] = (), published: Iterable[tuple[str, str, int]] = ()) -> Ruleset:
    """Our tables for a cluster whose members' underlay addresses are *members*.

    *networks*: every network of the cluster (a bridge that is not on this host matches nothing);
    *ports*: the published ports of this host's containers; *published*: (address, protocol, port)
    of every host's published ports — the only way a container reaches a cluster host."""
    v4: set[str] = set()
    v6: set[str] = set()
    for address in members:
        ip = ipaddress.ip_address(address)
        (v4 if ip.version == 4 else v6).add(str(ip))
    elements: dict[str, set[Hashable]] = {name: set() for name in (*SETS, *MAPS)}
    elements[MEMBERS4], elements[MEMBERS6] = v4, v6
    for net in networks:
        elements["overlay4"].add(_prefix(net.cidr))
        elements["same_network"].add((net.bridge, net.bridge))
        if net.internal:
            elements["internal"].add(net.bridge)
        if net.gateway is not None:
            gateway = str(ipaddress.IPv4Address(net.gateway))
            elements["dns4"].add((net.bridge, gateway))
            elements["gateway_macs"].add(mac_for_ip(gateway))
            if not net.internal:
                elements["egress4"].add(_prefix(net.cidr))
    for port in ports:
        ip, host_ip = str(ipaddress.IPv4Address(port.ip)), str(ipaddress.IPv4Address(port.host_ip))
        if host_ip == ANY:
            key: tuple = (port.protocol, port.host_port)
            elements["dnat_any_addr"].add((key, ip))
            elements["dnat_any_port"].add((key, port.port))
        else:
            key = (host_ip, port.protocol, port.host_port)
            elements["dnat_ip_addr"].add((key, ip))
            elements["dnat_ip_port"].add((key, port.port))
    for address, protocol, host_port in published:
        elements["published4"].add((str(ipaddress.IPv4Address(address)), protocol, host_port))
    return Ruleset(_structure(vxlan_port), {name: frozenset(values) for name, values in elements.items()})


@dataclass(frozen=True)
class Observed:
    """A listing of our tables: ``structure`` (comparable text) and each set's elements."""

    structure: str
    elements: Mapping[str, frozenset[Hashable]]


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


def _canon(value: Any) -> Hashable:
    """A listed element (or one side of a map element) as the canonical value ``build`` makes."""
    if isinstance(value, dict) and "elem" in value:  # an element with options (timeout, comment)
        value = value["elem"].get("val")
    if isinstance(value, dict) and "concat" in value:
        return tuple(_canon(item) for item in value["concat"])
    if isinstance(value, dict) and "prefix" in value:
        return str(ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}"))
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value.lower() if _is_mac(value) else value
    return value


def _is_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 for p in parts) and all(c in "0123456789abcdefABCDEF"
                                                                       for p in parts for c in p)


def observe(listing: list[dict]) -> Observed | None:
    """The comparable form of our tables' listings (``list_commands``); None if a table is absent."""
    items = [item for item in listing if "metainfo" not in item]
    tables = {(item["table"]["family"], item["table"]["name"]) for item in items if "table" in item}
    if not all(table in tables for table in TABLES):
        return None
    elements: dict[str, frozenset[Hashable]] = {}
    structure = []
    for item in items:
        for kind in ("set", "map"):
            if kind in item:
                body = dict(item[kind])
                listed = body.pop("elem", [])
                if kind == "map":
                    elements[body["name"]] = frozenset((_canon(k), _canon(v)) for k, v in listed)
                else:
                    elements[body["name"]] = frozenset(_canon(e) for e in listed)
                item = {kind: body}
        structure.append(_strip(item))
    return Observed(json.dumps(structure, sort_keys=True), elements)


def list_command(family: str = FAMILY) -> list[dict]:
    """List one of our tables (libnftables 1.0.6 mixes up two list commands in one batch)."""
    return [{"list": {"table": _table(family)}}]


def list_commands() -> list[list[dict]]:
    """One batch per table: what ``observe`` reads."""
    return [list_command(family) for family, _ in TABLES]
