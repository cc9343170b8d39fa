"""The DNS controller: this host's DNS server serves the gateway of every network it has a container of.

``sync(snapshot)`` opens and closes the server's sockets to match (dns/server.py). A container that
`run` starts does not wait for a pass: its start calls :meth:`DnsController.serve_now` before its
command runs (a program that resolves a name first thing must find the server), and that pin holds
the gateway open against passes whose snapshot predates the container's record. The answers do not
wait for a pass: ``LiveTable`` rebuilds the table from this replica the first time it is asked after
a commit changed the state (raft's ``on_state_change`` calls ``invalidate``), so a removed container
is NXDOMAIN as soon as this replica has applied its removal.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from ..dns import DnsServer, Table, build
from .netfilter import GONE_STATES

PIN_TTL = 30.0  # seconds a start's pin outlives a snapshot that still lacks its container's record


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
        # container id -> (name, gateway, cidr, deadline); the lock also makes a pass's computing
        # and applying its set one step, so a pin made meanwhile is never closed by a stale set
        self._pins: dict[str, tuple[str, str, str, float]] = {}
        self._lock = threading.Lock()

    def serve_now(self, record: dict, net: dict) -> None:
        """Serve the DNS of *record*'s network (*net*) before the container's command runs; raises
        DnsError (the caller logs it: the next pass retries and reports)."""
        if not net.get("gateway"):
            return
        with self._lock:
            self._pins[record["id"]] = (record["name"], net["gateway"], record["network"],
                                        time.monotonic() + PIN_TTL)
            self.server.add(net["gateway"], record["network"])

    def sync(self, snapshot: dict) -> None:
        if not snapshot["ready"] and self.server.gateways:
            return  # a replica catching up may not know our containers yet: keep serving
        with self._lock:
            wanted = local_gateways(snapshot["state"], self._node)
            wanted.update(self._pinned(snapshot["state"]["containers"]))
            self.server.serve(wanted)

    def _pinned(self, containers: dict) -> dict[str, str]:
        """{gateway: cidr} of the pins the snapshot does not know yet; drops the others."""
        now, held = time.monotonic(), {}
        for container_id, (name, gateway, cidr, deadline) in list(self._pins.items()):
            known = containers.get(name)
            if (known is not None and known["id"] == container_id) or now > deadline:
                del self._pins[container_id]  # the snapshot decides from now on
            else:
                held[gateway] = cidr
        return held
