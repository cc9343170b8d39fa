"""The DNS answer table, built from the replicated state alone (pure).

Per network (by CIDR): its name and ``names`` — label → the addresses it answers (a container's
name → its address; a service's name → the addresses of its tasks that serve, cluster/views.py).
Every entry comes from a *source*, ``fn(networks, containers) -> Iterable[Entry]``, listed in
``SOURCES``: to make a new kind of name resolvable, write a source and append it there.

``lookup(table, cidr, qname)`` decides for a query arriving on network *cidr*'s gateway:
``Answer(addresses)`` (ours: possibly empty = NXDOMAIN) or None (not ours: forward it). Ours are
``NAME`` (one label), ``NAME.NETWORK`` for this network, anything under another network's name
(always NXDOMAIN: a network never learns another's names) and reverse names of overlay addresses.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from ..cluster.views import serving

GONE_STATES = ("exited", "dead")  # no process: its name answers nothing (as the overlay's endpoints)
REVERSE_SUFFIX = ".in-addr.arpa"


@dataclass(frozen=True)
class Entry:
    cidr: str  # the network whose containers see the name
    name: str  # one DNS label (lowercase)
    address: str


Source = Callable[[Mapping[str, dict], Mapping[str, dict]], Iterable[Entry]]


def containers(networks: Mapping[str, dict], records: Mapping[str, dict]) -> Iterable[Entry]:
    """Every container that may run (not exited or dead) answers its name on its network."""
    for container in records.values():
        if container.get("observed", {}).get("state") in GONE_STATES or container["network"] not in networks:
            continue
        yield Entry(container["network"], container["name"].lower(), container["ip"])


def services(networks: Mapping[str, dict], records: Mapping[str, dict]) -> Iterable[Entry]:
    """A service's name answers every task of it that serves (running, healthy if checked, not
    retiring) — as ``service_endpoints``; a task's host being down is not known here (no clock)."""
    for task in records.values():
        if task.get("service") and task["network"] in networks and serving(task, {}):
            yield Entry(task["network"], task["service"].lower(), task["ip"])


SOURCES: list[Source] = [containers, services]


@dataclass(frozen=True)
class NetworkNames:
    name: str
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # label -> sorted addresses
    reverse: Mapping[str, str] = field(default_factory=dict)  # address -> NAME.NETWORK


@dataclass(frozen=True)
class Table:
    revision: int = -1
    networks: Mapping[str, NetworkNames] = field(default_factory=dict)  # cidr -> its names
    network_names: Mapping[str, str] = field(default_factory=dict)  # network name -> cidr

    def cidr_of_address(self, address: str) -> str | None:
        ip = ipaddress.IPv4Address(address)
        for cidr in self.networks:
            if ip in ipaddress.IPv4Network(cidr):
                return cidr
        return None


def build(networks: Mapping[str, dict], records: Mapping[str, dict], revision: int = -1,
          sources: Iterable[Source] = SOURCES) -> Table:
    """The table for a state's ``networks`` and ``containers`` (quick: it runs in raft's tick thread)."""
    names: dict[str, dict[str, set[str]]] = {cidr: {} for cidr in networks}
    for source in sources:
        for entry in source(networks, records):
            if entry.cidr in names:
                names[entry.cidr].setdefault(entry.name, set()).add(entry.address)
    table = {}
    for cidr, record in networks.items():
        net_name = record.get("name") or cidr
        by_name = {label: tuple(sorted(addrs, key=ipaddress.IPv4Address)) for label, addrs in names[cidr].items()}
        reverse = {address: f"{label}.{net_name}" for label, addrs in sorted(by_name.items()) for address in addrs}
        table[cidr] = NetworkNames(net_name, by_name, reverse)
    return Table(revision, table, {record.get("name") or cidr: cidr for cidr, record in networks.items()})


@dataclass(frozen=True)
class Answer:
    """An authoritative answer: ``addresses`` for A queries (empty: NXDOMAIN, unless ``exists``:
    the name is there but has no address of the asked type) or ``ptr`` for a reverse name."""

    addresses: tuple[str, ...] = ()
    ptr: str | None = None

    @property
    def exists(self) -> bool:
        return bool(self.addresses or self.ptr)


NXDOMAIN = Answer()


def normalize(qname: str) -> str:
    return qname.rstrip(".").lower()


def lookup(table: Table, cidr: str, qname: str) -> Answer | None:
    """What network *cidr*'s DNS server answers for *qname*; None: not ours, forward it."""
    own = table.networks.get(cidr)
    if own is None:
        return NXDOMAIN
    name = normalize(qname)
    if name.endswith(REVERSE_SUFFIX):
        return _reverse(table, own, cidr, name)
    labels = name.split(".") if name else []
    if len(labels) == 1:
        return Answer(own.names.get(labels[0], ()))
    suffix = ".".join(labels[1:])
    if suffix == own.name and len(labels) == 2:
        return Answer(own.names.get(labels[0], ()))
    if any(name == other or name.endswith("." + other) for other in table.network_names):
        return NXDOMAIN  # under a network's name: ours to answer, and never another network's names
    return None


def _reverse(table: Table, own: NetworkNames, cidr: str, name: str) -> Answer | None:
    octets = name[: -len(REVERSE_SUFFIX)].split(".")
    if len(octets) != 4:
        return None
    try:
        address = str(ipaddress.IPv4Address(".".join(reversed(octets))))
    except ValueError:
        return None
    where = table.cidr_of_address(address)
    if where is None:
        return None  # not an overlay address: the host's resolvers know it, or nobody does
    return Answer(ptr=own.reverse.get(address)) if where == cidr else NXDOMAIN
