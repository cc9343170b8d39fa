"""The netfilter controller: keeps this host's nftables table ``inet cantainer`` as the cluster wants it.

Level-triggered like the others (``sync(snapshot)``): each pass builds the table from the state
(netfilter/ruleset.py), lists the kernel's, and changes only what differs — set elements in place
when the structure matches, else the whole table re-created in one transaction (no moment without
rules). The structure is compared with the listing our own last re-creation left (nft normalises
what it is given; comparing with what we sent would never match), so the first pass after a start
re-creates the table once and every later pass finds it equal. Stopping the agent leaves the table
in place: the kernel keeps filtering while no agent runs. ``remove`` (teardown) deletes it.
"""
from __future__ import annotations

import logging

from ..netfilter import Nft, ruleset

log = logging.getLogger(__name__)


def members_of(state: dict, own_address: str) -> set[str]:
    """Underlay addresses of every node in the state, and ours (before we are registered)."""
    return {node["address"] for node in state["nodes"].values() if node.get("address")} | {own_address}


class NetfilterController:
    name = "netfilter"

    def __init__(self, address: str, vxlan_port: int, nft: Nft | None = None) -> None:
        self._address = address
        self._vxlan_port = vxlan_port
        self._nft = nft or Nft()
        self._baseline: tuple[str, str] | None = None  # (ruleset key, listed structure) after our last re-create
        self.changes = 0  # batches applied (tests read it)
        self.members: frozenset[str] = frozenset()  # as of the last pass (the join port reserves them slots)

    def is_member(self, address: str) -> bool:
        return address in self.members

    def observe(self) -> ruleset.Observed | None:
        tables = self._nft.run([{"list": {"tables": None}}])
        if not any(item.get("table", {}).get("name") == ruleset.TABLE
                   and item["table"].get("family") == ruleset.FAMILY for item in tables):
            return None
        return ruleset.observe(self._nft.run(ruleset.list_command()))

    def sync(self, snapshot: dict) -> None:
        wanted = ruleset.build(members_of(snapshot["state"], self._address), self._vxlan_port)
        self.members = frozenset().union(*wanted.elements.values())
        observed = self.observe()
        if not snapshot["ready"] and observed is not None:
            return  # a replica still catching up may know too few members: keep the rules we have
        # (no table at all, e.g. after a reboot: what the replica knows beats no rules)
        self.apply(wanted, observed)

    def apply(self, wanted: ruleset.Ruleset, observed: ruleset.Observed | None) -> None:
        if observed is None or self._baseline != (wanted.key, observed.structure):
            self._nft.run(wanted.replace_commands())
            after = self.observe()
            self._baseline = (wanted.key, after.structure) if after is not None else None
            self.changes += 1
            log.info("netfilter: table %s %s %s (%d members)", ruleset.FAMILY, ruleset.TABLE,
                     "created" if observed is None else "re-created",
                     sum(len(v) for v in wanted.elements.values()))
            return
        commands = wanted.element_commands(observed.elements)
        if commands:
            self._nft.run(commands)
            self.changes += 1
            log.info("netfilter: members now %s", ", ".join(sorted(set().union(*wanted.elements.values()))))


def remove_table(nft: Nft | None = None) -> None:
    """Delete our table (``cantainer down``, after the agent stopped); nothing if it is absent."""
    (nft or Nft()).run(ruleset.delete_commands())
