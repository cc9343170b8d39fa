"""Placement: which host runs a container the cluster places (pure; called inside replicated commands).

Everything it reads is replicated state or an argument of the command (its time stamp, the
proposer's down window), so every replica picks the same host, and two placements applied one after
the other see each other's reservations: concurrent placements never oversubscribe a host.

A host fits when it is registered and up (a heartbeat within the down window); satisfies every
constraint (``host==``/``!=``, ``label.KEY==``/``!=`` with the labels its agent registered); holds the
image's layers (its agent reports them); has the memory and CPUs asked for free — reservations are
the limits of its *active* containers against the capacity its agent reported; and no active
container on it publishes one of the same host ports. Among the hosts that fit: fewest tasks of the
same service, then fewest active containers, then the name (a replacement's old task counts as
gone). None fits → ``NoHostFits`` naming, for every host, the first reason it was passed over.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Conflict
from .specs import constraint_holds

GONE = ("exited", "dead")
RESTARTING = ("on-failure", "always", "unless-stopped")


class NoHostFits(Conflict):
    """No host can take the container; the message names why, host by host."""


@dataclass(frozen=True)
class Request:
    """What a container asks of its host."""
    name: str
    memory: int = 0
    cpus: float = 0.0
    layers: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    publish: tuple[dict, ...] = ()
    service: str | None = None
    only: tuple[str, ...] = ()  # global mode: this host or none
    leaving: str | None = None  # the host of the task this one replaces: its task counts as gone there

    @classmethod
    def of(cls, name: str, record: dict, **extra) -> "Request":
        limits = record.get("limits") or {}
        fields = {"service": record.get("service"), **extra}
        return cls(name=name, memory=int(limits.get("memory") or 0), cpus=float(limits.get("cpus") or 0.0),
                   layers=tuple(record.get("layers") or ()), constraints=tuple(record.get("constraints") or ()),
                   publish=tuple(record.get("publish") or ()), **fields)


def is_active(container: dict) -> bool:
    """Holds its reservation: wanted running, and running or coming back (a restart policy)."""
    if container.get("desired") != "running":
        return False
    if container.get("observed", {}).get("state") not in GONE:
        return True
    return (container.get("restart") or {}).get("policy") in RESTARTING


@dataclass
class Load:
    containers: int = 0
    memory: int = 0
    cpus: float = 0.0
    tasks: dict = field(default_factory=dict)  # service -> count
    ports: set = field(default_factory=set)    # (host_port, protocol)


def loads(containers: dict) -> dict[str, Load]:
    """Per host: active containers, reserved memory and CPUs, tasks per service, published ports."""
    out: dict[str, Load] = {}
    for container in containers.values():
        if not is_active(container):
            continue
        load = out.setdefault(container["host"], Load())
        limits = container.get("limits") or {}
        load.containers += 1
        load.memory += int(limits.get("memory") or 0)
        load.cpus += float(limits.get("cpus") or 0.0)
        if container.get("service"):
            load.tasks[container["service"]] = load.tasks.get(container["service"], 0) + 1
        for entry in container.get("publish") or ():
            load.ports.add((entry["host_port"], entry["protocol"]))
    return out


def _size(value: float) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{int(value)}B"


def why_not(host: str, node: dict, load: Load, request: Request, now: float, down_after: float) -> str | None:
    """The first reason *host* cannot take *request*, or None if it fits."""
    if request.only and host not in request.only:
        return "not the host asked for"
    if now - node.get("heartbeat", 0.0) >= down_after:
        return "down"
    labels = node.get("labels") or {}
    for constraint in request.constraints:
        if not constraint_holds(constraint, host, labels):
            return f"not {constraint}"
    if request.layers and not set(request.layers) <= set(node.get("layers") or ()):
        return "image not on it"
    capacity = node.get("capacity") or {}
    if request.memory:
        total = capacity.get("memory")
        if not total:
            return "memory capacity unknown"
        free = total - load.memory
        if request.memory > free:
            return f"{_size(max(free, 0))} of {_size(total)} memory free, {_size(request.memory)} asked"
    if request.cpus:
        total = capacity.get("cpus")
        if not total:
            return "CPU capacity unknown"
        free = total - load.cpus
        if request.cpus > free + 1e-9:
            return f"{max(free, 0):.3g} of {total:g} CPUs free, {request.cpus:g} asked"
    for entry in request.publish:
        if (entry["host_port"], entry["protocol"]) in load.ports:
            return f"port {entry['host_port']}/{entry['protocol']} already published there"
    return None


def place(nodes: dict, containers: dict, request: Request, now: float, down_after: float,
          hint: str | None = None) -> str:
    """The host for *request*; raises NoHostFits (naming every host's reason) when none fits.

    *hint*: the host the proposer chose on its replica (this same function); taken when it still
    fits. The choice then travels in the log, so a replica replaying it under a later version of
    this code (other preferences) still lands on the same host: only the hard rules must agree."""
    per_host = loads(containers)
    if hint is not None and hint in nodes and (not request.only or hint in request.only) and \
            why_not(hint, nodes[hint], per_host.get(hint, Load()), request, now, down_after) is None:
        return hint
    fits, reasons = [], {}
    for host in sorted(nodes):
        load = per_host.get(host, Load())
        reason = why_not(host, nodes[host], load, request, now, down_after)
        if reason is None:
            tasks = load.tasks.get(request.service, 0) if request.service else 0
            gone = 1 if host == request.leaving else 0
            fits.append((tasks - gone, load.containers - gone, host))
        elif reason != "not the host asked for":
            reasons.setdefault(reason, []).append(host)
    if fits:
        return min(fits)[2]
    if not nodes:
        raise NoHostFits(f"no host can run {request.name}: the cluster has no registered hosts")
    if not reasons:
        raise NoHostFits(f"no host can run {request.name}: {', '.join(request.only)} is not a member of this cluster")
    said = "; ".join(f"{', '.join(hosts)}: {reason}" for reason, hosts in sorted(reasons.items(),
                                                                                  key=lambda item: item[1]))
    raise NoHostFits(f"no host can run {request.name} — {said}")
