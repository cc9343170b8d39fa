"""Models of the cluster API for the linearizability checker: the networks map and container addresses.

Results are recorded as tuples: ``("ok", value)`` or ``("error", code)`` (protocol error codes);
reads record what they saw. Every model is pure and its states hashable (frozensets).
"""
from __future__ import annotations

import ipaddress
from typing import Hashable, Iterable

from .checker import Op


def family(cidr: str) -> str:
    """Networks that can overlap are checked together: the /16 around them."""
    return str(ipaddress.ip_network(cidr).supernet(new_prefix=16))


class Networks:
    """``create(cidr)`` -> ("ok", created?) | ("error", "conflict"); ``delete(cidr)`` -> ("ok", None) |
    ("error", "not_found"); ``ls()`` -> the set of CIDRs it listed. One partition per /16."""

    def init(self) -> Hashable:
        return frozenset()

    def partition(self, op: Op) -> Iterable[Hashable]:
        if op.kind == "ls":
            return op.arg  # the families the test uses: a read is checked in each
        return [family(op.arg)]

    def step_in(self, key: str, state: frozenset, op: Op) -> tuple[bool, Hashable]:
        if op.kind == "ls":
            return (op.pending or frozenset(c for c in op.result if family(c) == key) == state), state
        cidr = ipaddress.ip_network(op.arg)
        if op.kind == "create":
            if op.arg in state:
                return (op.pending or op.result == ("ok", False)), state
            if any(cidr.overlaps(ipaddress.ip_network(other)) for other in state):
                return (op.pending or op.result == ("error", "conflict")), state
            return (op.pending or op.result == ("ok", True)), state | {op.arg}
        if op.kind == "delete":
            if op.arg in state:
                return (op.pending or op.result == ("ok", None)), state - {op.arg}
            return (op.pending or op.result == ("error", "not_found")), state
        raise ValueError(op.kind)

    def step(self, state: frozenset, op: Op) -> tuple[bool, Hashable]:
        return self.step_in(family(op.arg) if op.kind != "ls" else op.arg[0], state, op)


class Containers:
    """Containers on one network that only the test uses: ``run(name)`` -> ("ok", ip) |
    ("error", "already_exists"); ``rm(name)`` -> ("ok", None) | ("error", "not_found"); ``ps()`` -> the
    {(name, ip)} it listed of the test's containers. An address must be the lowest free one (IPAM is
    deterministic), so a duplicate or skipped allocation is a violation too; the network's first
    address is its gateway (*gateway*, as every network `run -n CIDR` creates has one)."""

    def __init__(self, cidr: str, names: Iterable[str], gateway: bool = True) -> None:
        self.network = ipaddress.ip_network(cidr)
        self.names = frozenset(names)
        self.reserved = {str(self.network.network_address + 1)} if gateway else set()

    def init(self) -> Hashable:
        return frozenset()

    def partition(self, op: Op) -> Iterable[Hashable]:
        return [str(self.network)]

    def _lowest_free(self, state: frozenset) -> str:
        used = {ip for _, ip in state} | self.reserved
        return next(str(ip) for ip in self.network.hosts() if str(ip) not in used)

    def step(self, state: frozenset, op: Op) -> tuple[bool, Hashable]:
        present = {name for name, _ in state}
        if op.kind == "ps":
            seen = frozenset((n, ip) for n, ip in op.result if n in self.names) if not op.pending else None
            return (op.pending or seen == state), state
        if op.kind == "run":
            if op.arg in present:
                return (op.pending or op.result == ("error", "already_exists")), state
            ip = self._lowest_free(state)
            return (op.pending or op.result == ("ok", ip)), state | {(op.arg, ip)}
        if op.kind == "rm":
            if op.arg in present:
                return (op.pending or op.result == ("ok", None)), frozenset(e for e in state if e[0] != op.arg)
            return (op.pending or op.result == ("error", "not_found")), state
        raise ValueError(op.kind)


class Volumes:
    """Named volumes the test alone uses: ``create((name, host))`` -> ("ok", created?) | ("error",
    "already_exists") (it lives on another host); ``rm((name, host))`` -> ("ok", None) | ("error",
    "not_found") | ("error", "conflict") (it lives on another host: only its own host deletes it);
    ``vls()`` -> the {(name, host)} it listed of the test's volumes."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def init(self) -> Hashable:
        return frozenset()

    def partition(self, op: Op) -> Iterable[Hashable]:
        return ["volumes"]

    def step(self, state: frozenset, op: Op) -> tuple[bool, Hashable]:
        hosts = dict(state)
        if op.kind == "vls":
            seen = frozenset((n, h) for n, h in op.result if n in self.names) if not op.pending else None
            return (op.pending or seen == state), state
        name, host = op.arg
        if op.kind == "vcreate":
            if name not in hosts:
                return (op.pending or op.result == ("ok", True)), state | {(name, host)}
            expected = ("ok", False) if hosts[name] == host else ("error", "already_exists")
            return (op.pending or op.result == expected), state
        if op.kind == "vrm":
            if name not in hosts:
                return (op.pending or op.result == ("error", "not_found")), state
            if hosts[name] != host:
                return (op.pending or op.result == ("error", "conflict")), state
            return (op.pending or op.result == ("ok", None)), state - {(name, host)}
        raise ValueError(op.kind)
