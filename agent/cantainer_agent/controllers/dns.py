"""The DNS controller: this host's DNS server serves the gateway of every network it has a container of.

``sync(snapshot)`` opens and closes the server's sockets to match (dns/server.py). The answers do not
wait for a pass: ``LiveTable`` rebuilds the table from this replica the first time it is asked after
a commit changed the state (raft's ``on_state_change`` calls ``invalidate``), so a removed container
is NXDOMAIN as soon as this replica has applied its removal.
"""
from __future__ import annotations

import threading
from typing import Callable

from ..dns import DnsServer, Table, build
from .netfilter import GONE_STATES


def local_gateways(state: dict, node: str) -> dict[str, str]:
    """Pure: {gateway: cidr} of the networks with a container on *node* that may run."""
    wanted = {}
    for container in state["containers"].values():
        if container["host"] != node or container.get("observed", {}).get("state") in GONE_STATES:
            continue
        network = state["networks"].get(container["network"])
        if network is not None and network.get("gateway"):
            wanted[network["gateway"]] = container["network"]
    return wanted


class LiveTable:
    """The record table of this replica, rebuilt lazily after every state change."""

    def __init__(self, read: Callable[[Callable], Table]) -> None:
        self._read = read  # runs fn(state) on the replica (RaftNode.read)
        self._lock = threading.Lock()
        self._dirty = True
        self._table = Table()

    def invalidate(self) -> None:
        self._dirty = True

    def __call__(self) -> Table:
        with self._lock:
            if self._dirty:
                self._dirty = False  # before reading: a change during the read marks it again
                try:
                    self._table = self._read(lambda s: build(s.networks, s.containers, s.revision))
                except Exception:
                    self._dirty = True
                    raise
            return self._table


class DnsController:
    name = "dns"

    def __init__(self, node: str, server: DnsServer) -> None:
        self._node = node
        self.server = server

    def sync(self, snapshot: dict) -> None:
        if not snapshot["ready"] and self.server.gateways:
            return  # a replica catching up may not know our containers yet: keep serving
        self.server.serve(local_gateways(snapshot["state"], self._node))
