"""The netfilter controller: keeps this host's nftables tables (``inet``/``bridge cantainer``) as the cluster wants.

Level-triggered like the others (``sync(snapshot)``): each pass builds the tables from the state
(netfilter/ruleset.py, from ``rules_of``), lists the kernel's, and changes only what differs — set
and map elements in place when the structure matches, else both tables re-created in one
transaction (no moment without rules). The structure is compared with the listing our own last
re-creation left (nft normalises what it is given; comparing with what we sent would never match),
so the first pass after a start re-creates the tables once and every later pass finds them equal.
A published port that goes away also takes its connections out of conntrack (a UDP flow would
otherwise keep reaching the old address until it times out). Stopping the agent leaves the tables
in place: the kernel keeps filtering while no agent runs. ``remove`` (teardown) deletes them.
Between full reads (resync.py: every 15 s at least, at most 0.1 % of a CPU on them) a pass lists
nothing: when what the tables are built from (members, networks, ports) is what the last good pass
programmed it does nothing, else it changes the elements that differ from what that pass left (the
structure never depends on the state). A pass due to read lists and compares, so a table changed
behind our back is repaired within that time; a failed pass makes the next one list.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Callable, Hashable, Iterable, Mapping

from ..cluster.ports import ANY, host_ip
from ..netfilter import Nft, ruleset
from ..overlay.model import bridge_name
from ..resync import Resync

log = logging.getLogger(__name__)
GONE_STATES = ("exited", "dead")  # no process, no veth: nothing to forward to (as the overlay controller)


def members_of(state: dict, own_address: str) -> set[str]:
    """Underlay addresses of every node in the state, and ours (before we are registered)."""
    return {node["address"] for node in state["nodes"].values() if node.get("address")} | {own_address}


def rules_of(state: dict, node: str) -> tuple[list[ruleset.NetworkRules], list[ruleset.PortRule],
                                                list[tuple[str, str, int]]]:
    """Pure: every network, this node's published ports, and every host's published (address, protocol, port)."""
    networks = [ruleset.NetworkRules(bridge_name(record["vni"]), cidr, record.get("gateway"),
                                     bool(record.get("internal")))
                for cidr, record in state["networks"].items()]
    ports, published = [], []
    for container in state["containers"].values():
        if not container.get("publish") or container.get("observed", {}).get("state") in GONE_STATES:
            continue
        host = state["nodes"].get(container["host"])
        for port in container["publish"]:
            if container["host"] == node:
                ports.append(ruleset.PortRule(port["protocol"], host_ip(port), port["host_port"], container["ip"],
                                              port["container_port"]))
            address = host_ip(port) if host_ip(port) != ANY else (host or {}).get("address")
            if address:
                published.append((address, port["protocol"], port["host_port"]))
    return networks, ports, published


class NetfilterController:
    name = "netfilter"

    def __init__(self, address: str, vxlan_port: int, nft: Nft | None = None, node: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._address = address
        self._vxlan_port = vxlan_port
        self._node = node
        self._nft = nft or Nft()
        self._baseline: tuple[str, str] | None = None  # (ruleset key, listed structure) after our last re-create
        self._ports: set[ruleset.PortRule] | None = None  # as of the last applied pass
        self.changes = 0  # batches applied (tests read it)
        self.members: frozenset[str] = frozenset()  # as of the last pass (the join port reserves them slots)
        self._synced: tuple | None = None  # (members, networks, ports, published) the last good pass programmed
        self._programmed: ruleset.Ruleset | None = None  # what the kernel held after the last good pass
        self.listings = 0  # observe() calls (tests read it)
        self._resync = Resync(clock=clock)  # when a pass lists the tables again

    def is_member(self, address: str) -> bool:
        return address in self.members

    def observe(self) -> ruleset.Observed | None:
        self.listings += 1
        tables = self._nft.run([{"list": {"tables": None}}])
        have = {(item["table"].get("family"), item["table"].get("name")) for item in tables if "table" in item}
        if not all(table in have for table in ruleset.TABLES):
            return None
        return ruleset.observe([item for batch in ruleset.list_commands() for item in self._nft.run(batch)])

    def sync(self, snapshot: dict) -> None:
        state = snapshot["state"]
        networks, ports, published = rules_of(state, self._node)
        self.members = everyone = frozenset(members_of(state, self._address))
        # The members sets filter VXLAN and what a network may reach; while the cluster has no
        # network there is neither (no VXLAN device, no bridge), so they hold this host alone and a
        # join changes nothing here. Else a cold `up` of N hosts changed the sets on every host
        # at every registration: N² nft calls (100 hosts: ~9000, most of its CPU).
        members = everyone if networks else frozenset({self._address})
        inputs = (members, networks, ports, published)
        # Until a full read is due a pass trusts what the last good pass programmed: listing both
        # tables back (libnftables and its JSON) was most of every host's pass, at rest too.
        trusting = snapshot["ready"] and (snapshot.get("commits_only") or not self._resync.due())
        if trusting and inputs == self._synced:
            return  # nothing these tables depend on changed
        wanted = ruleset.build(members, self._vxlan_port, networks, ports, published)
        self._synced = None
        programmed, self._programmed = self._programmed, None  # unknown until this pass succeeds
        listed = not (trusting and programmed is not None and programmed.structure == wanted.structure)
        if listed:
            self._resync.start()
            observed = self.observe()
            if not snapshot["ready"] and observed is not None:
                return  # a replica still catching up may know too few members: keep the rules we have
            # (no table at all, e.g. after a reboot: what the replica knows beats no rules)
            self.apply(wanted, observed)
        else:
            # Only elements changed since the last good pass (a network, a member, a port): change those.
            self._change_elements(wanted, programmed.elements)
        gone = (self._ports or set()) - set(ports)
        self._ports = set(ports)
        if gone:
            forget_connections(gone)
        if snapshot["ready"]:
            self._synced, self._programmed = inputs, wanted
            if listed:
                self._resync.done()  # trusted until the next read is due

    def apply(self, wanted: ruleset.Ruleset, observed: ruleset.Observed | None) -> None:
        if observed is None or self._baseline != (wanted.key, observed.structure):
            self._nft.run(wanted.replace_commands())
            after = self.observe()
            self._baseline = (wanted.key, after.structure) if after is not None else None
            self.changes += 1
            log.info("netfilter: tables %s %s (%d members)", "created" if observed is None else "re-created",
                     "/".join(f"{family} {name}" for family, name in ruleset.TABLES),
                     len(wanted.elements[ruleset.MEMBERS4] | wanted.elements[ruleset.MEMBERS6]))
            return
        self._change_elements(wanted, observed.elements)

    def _change_elements(self, wanted: ruleset.Ruleset, have: Mapping[str, frozenset[Hashable]]) -> None:
        commands = wanted.element_commands(have)
        if commands:
            self._nft.run(commands)
            self.changes += 1
            log.info("netfilter: %d set(s) changed: %s", len(commands),
                     ", ".join(sorted({c[next(iter(c))]["element"]["name"] for c in commands})))


def forget_connections(gone: Iterable[ruleset.PortRule]) -> int:
    """Delete the conntrack entries of connections DNAT'd to published ports that went away."""
    from pyroute2 import Conntrack  # imported here: only hosts that unpublish a port need the socket
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    deleted = 0
    try:
        with Conntrack() as ct:
            for rule in gone:
                proto = socket.IPPROTO_TCP if rule.protocol == "tcp" else socket.IPPROTO_UDP
                reply = NFCTAttrTuple(saddr=rule.ip, sport=rule.port, proto=proto)
                for entry in list(ct.dump_entries(tuple_reply=reply)):
                    ct.delete(entry)
                    deleted += 1
    except Exception as exc:  # noqa: BLE001 - stale flows time out anyway; never fail the pass for it
        log.warning("netfilter: could not forget connections of removed published ports: %s", exc)
    return deleted


def remove_table(nft: Nft | None = None) -> None:
    """Delete our tables (``cantainer down``, after the agent stopped); nothing if they are absent."""
    (nft or Nft()).run(ruleset.delete_commands())
