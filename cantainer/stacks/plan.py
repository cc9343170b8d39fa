"""The plan of a stack: what `apply` would change, as a pure function of the file and the facts.

``plan(stack, facts, prune, volumes)`` compares the desired stack (file.py) with *facts* — what the
cluster has, read once (facts.py)::

    {networks: {CIDR: {containers}}, volumes: {NAME: {host, containers}},
     services: {NAME: {replicas, image}} | None (the agents know no services),
     containers: {NAME: {state, host}}, stacks: {STACK: {KIND:NAME: {kind, name, spec, owned}}}}

and returns ``{stack, changes: [Change…], kept: [Change…]}``. Objects are named after the stack —
service and container ``STACK-NAME``, volume ``STACK_NAME`` (a service's: ``STACK_NAME.SLOT``, one per
slot), a network by its subnet — so two stacks live side by side. A change's *spec* is what the
file asks, its network resolved to the subnet; it is compared with the spec the stack record says
was applied, and a service's replicas and image also with what the cluster runs. Creates and
updates come first (networks, volumes, services, containers), removals last and in reverse; an
object of the stack no longer in the file is removed only with *prune* (a volume also only with
*volumes*), else it is *kept*. No I/O: tested from data (tests/workstation/fixtures/stacks/).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from cantainer.errors import CantainerError
from cantainer_agent import mounts as M
from cantainer_agent.cluster.state import check_network_name
from cantainer_agent.errors import StateError

KINDS = ("network", "volume", "service", "container")
SYMBOLS = {"create": "+", "update": "~", "remove": "-", "unchanged": "="}


class PlanError(CantainerError):
    """The file cannot be applied to this cluster as it is (a name taken, a volume on another host)."""

    exit_code = 1


class StackNotFound(CantainerError):
    exit_code = 3


@dataclass
class Change:
    action: str  # create | update | remove | unchanged
    kind: str  # network | volume | service | container
    name: str  # as the file names it
    target: str  # as the cluster names it
    op: str = "none"  # create, adopt, record, scale, update, replace, remove, forget, first-use, none
    fields: list[str] = field(default_factory=list)  # what differs (update)
    spec: dict = field(default_factory=dict)  # what the file asks (resolved), recorded once applied
    owned: bool = True  # made by this stack (prune removes only those)
    detail: str = ""
    host: str | None = None  # where a volume is made (its pin, or its container's host)
    previous: dict | None = None  # the spec recorded when it was last applied (an update)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]

    def to_dict(self) -> dict:
        return {**asdict(self), "symbol": self.symbol}


def scoped(stack: str, kind: str, name: str) -> str:
    """The cluster's name for a stack object (a network is named by its subnet instead)."""
    return f"{stack}_{name}" if kind == "volume" else f"{stack}-{name}"


def network_name(stack: str, name: str) -> str | None:
    """The name a network the stack makes gets (``STACK-NAME``, what containers resolve it by), or
    None where that is no valid network name (a stack name starting with a digit): the default then."""
    try:
        return check_network_name(f"{stack}-{name}")
    except StateError:
        return None


def plan(stack: dict, facts: dict, prune: bool = False, volumes: bool = False) -> dict:
    name = stack["name"]
    records = facts.get("stacks", {})
    mine = records.get(name, {})
    others = {key_target: other for other, objects in records.items() if other != name
              for key_target in ((entry["kind"], entry["name"]) for entry in objects.values())}
    networks = {n: spec["subnet"] for n, spec in stack["networks"].items()}
    service_volumes = {m["source"] for spec in stack["services"].values() for m in spec["mounts"] or []
                       if m["type"] == M.VOLUME}
    changes: list[Change] = []

    def taken(kind: str, target: str) -> None:
        owner = others.get((kind, target))
        if owner is not None:
            raise PlanError(f"{kind} {target} belongs to stack {owner}", f"rename the {kind} in this file, or "
                                                                         f"remove it from stack {owner} first")

    # -- networks -------------------------------------------------------------------------------------------
    for net, spec in stack["networks"].items():
        target = spec["subnet"]
        recorded = mine.get(f"network:{net}")
        existing = facts["networks"].get(target) or {}
        if spec.get("internal") is not None and existing.get("internal") not in (None, spec["internal"]):
            raise PlanError(f"network {net}: {target} exists and is {'' if existing['internal'] else 'not '}internal, "
                            f"but the file says internal = {str(spec['internal']).lower()}",
                            "a network's internal flag cannot change in place: give the network another subnet "
                            "(its services and containers move to it), or remove it first")
        replaced = recorded is not None and recorded["name"] != target
        if replaced and recorded["owned"] and recorded["name"] in facts["networks"]:
            # the old subnet goes once its services and containers have moved (removals come last)
            changes.append(Change("remove", "network", net, recorded["name"], "retire", spec=recorded["spec"],
                                  detail=f"replaced by {target}"))
        if target not in facts["networks"]:
            detail = "" if recorded is None else f"replaces {recorded['name']}" if replaced \
                else "was removed outside the stack"
            changes.append(Change("create", "network", net, target, "create", spec=dict(spec), detail=detail))
        elif recorded is None or recorded["name"] != target:
            # a network that exists already (another stack's, or made by hand) is used, not owned
            changes.append(Change("unchanged", "network", net, target, "adopt", spec=dict(spec), owned=False,
                                  detail="exists already: used, not owned"))
        elif recorded["spec"] != spec:
            changes.append(Change("update", "network", net, target, "record", _diff(recorded["spec"], spec),
                                  spec=dict(spec), owned=recorded["owned"]))
        else:
            changes.append(Change("unchanged", "network", net, target, spec=dict(spec), owned=recorded["owned"]))

    # -- volumes ----------------------------------------------------------------------------------------------
    for vol, spec in stack["volumes"].items():
        target = scoped(name, "volume", vol)
        recorded = mine.get(f"volume:{vol}")
        per_slot = vol in service_volumes
        shown = f"{target}.SLOT" if per_slot else target
        taken("volume", target)
        existing = facts["volumes"].get(target)
        if per_slot:
            slots = sorted(v for v in facts["volumes"] if v.startswith(target + "."))
            hosts = {facts["volumes"][v]["host"] for v in slots}
            if spec["host"] and hosts - {spec["host"]}:
                raise PlanError(f"volumes {', '.join(slots)} live on {', '.join(sorted(hosts))}, but the file pins "
                                f"volume {vol} to {spec['host']}", "a volume's data stays on its host: "
                                "remove host, or the volumes first")
            if recorded is None:
                changes.append(Change("create", "volume", vol, shown, "first-use", spec=dict(spec),
                                      detail="one per service slot, made by its task"))
            else:
                changes.append(_compare("volume", vol, shown, recorded, spec))
            continue
        if existing is not None and spec["host"] and existing["host"] != spec["host"]:
            raise PlanError(f"volume {target} lives on {existing['host']}, but the file pins it to {spec['host']}",
                            f"a volume's data stays on its host: set host = \"{existing['host']}\", or remove the "
                            f"volume first (cantainer volume rm {target})")
        if existing is None:
            host = spec["host"] or _container_host(stack, vol)
            changes.append(Change("create", "volume", vol, target, "create" if host else "first-use",
                                  spec=dict(spec), detail=f"on {host}" if host else "made by its first container",
                                  host=host))
        elif recorded is None:
            changes.append(Change("unchanged", "volume", vol, target, "adopt", spec=dict(spec),
                                  detail=f"exists on {existing['host']}"))
        else:
            changes.append(_compare("volume", vol, target, recorded, spec))

    # -- services and containers ----------------------------------------------------------------------------
    if stack["services"] and facts.get("services") is None:
        raise PlanError("the cluster's agents do not know services", "update them with `cantainer up`")
    for obj, spec in stack["services"].items():
        if any(m["type"] == M.VOLUME for m in spec["mounts"] or []) and not facts.get("service_volumes"):
            raise PlanError(f"service {obj} mounts a volume, which this cluster's services cannot do yet",
                            "mount it in a [containers.NAME] instead, or bind a host path")
    for obj, spec in stack["containers"].items():
        pinned = [stack["volumes"][m["source"]]["host"] for m in spec["mounts"] or [] if m["type"] == M.VOLUME]
        existing = [facts["volumes"].get(scoped(name, "volume", m["source"]), {}).get("host")
                    for m in spec["mounts"] or [] if m["type"] == M.VOLUME]
        if not (spec["host"] or any(pinned) or any(existing) or facts.get("placement")):
            raise PlanError(f"container {obj} has no host, and this cluster does not place containers",
                            'give it host = "h1" (or pin one of its volumes to a host)')
    for kind, table in (("service", stack["services"]), ("container", stack["containers"])):
        existing_table = facts["services"] if kind == "service" else facts["containers"]
        for obj, spec in table.items():
            target = scoped(name, kind, obj)
            wanted = _resolved(spec, networks)
            recorded = mine.get(f"{kind}:{obj}")
            taken(kind, target)
            existing = existing_table.get(target)
            if existing is None:
                changes.append(Change("create", kind, obj, target, "create", spec=wanted,
                                      detail="" if recorded is None else "was removed outside the stack"))
                continue
            if recorded is None:
                raise PlanError(f"{kind} {target} exists and is not part of stack {name}",
                                f"remove it (cantainer {'service ' if kind == 'service' else ''}rm {target}) or give "
                                f"the {kind} another name in the file")
            applied, compared = _defaults(recorded["spec"]), _defaults(wanted)
            if kind == "service":  # what runs now, where the cluster can say (a hand-made `service scale`)
                for key in ("image", *(("replicas",) if compared.get("mode") != "global" else ())):
                    if existing.get(key) is not None:
                        applied[key] = existing[key]
            fields = _diff(applied, compared)
            if not fields:
                changes.append(Change("unchanged", kind, obj, target, spec=wanted))
            elif kind == "container":
                changes.append(Change("update", kind, obj, target, "replace", fields, spec=wanted))
            else:
                op = "scale" if fields == ["replicas"] else "update"
                detail = "rolling update" if op == "update" and set(fields) - {"replicas", "update"} else ""
                changes.append(Change("update", kind, obj, target, op, fields, spec=wanted, detail=detail,
                                      previous=recorded["spec"]))

    # -- what the stack has that the file no longer names ----------------------------------------------------
    in_file = {c.key for c in changes if c.op != "retire"}
    kept: list[Change] = []
    for key, entry in sorted(mine.items(), key=lambda item: (-KINDS.index(item[1]["kind"]), item[0])):
        if key in in_file:
            continue
        kind, _, obj = key.partition(":")
        target = entry["name"]
        exists = _exists(facts, kind, target)
        removal = Change("remove", kind, obj, target, "remove" if entry["owned"] and exists else "forget",
                         spec=entry["spec"], owned=entry["owned"],
                         detail="" if exists else "already gone" if entry["owned"] else "not made by this stack")
        if prune and (kind != "volume" or volumes):
            changes.append(removal)
        else:
            removal.action, removal.op = "unchanged", "none"
            removal.detail = ("not in the file: kept (--prune --volumes removes it)" if kind == "volume" else
                              "not in the file: kept (--prune removes it)")
            kept.append(removal)
    order = {kind: index for index, kind in enumerate(KINDS)}
    changes.sort(key=lambda c: (c.action == "remove", order[c.kind] if c.action != "remove" else -order[c.kind]))
    return {"stack": name, "changes": changes, "kept": kept}


def pending(result: dict) -> bool:
    """Whether applying would change anything (`apply --check` exits 2 then)."""
    return any(change.action != "unchanged" for change in result["changes"])


def _compare(kind: str, name: str, target: str, recorded: dict, spec: dict) -> Change:
    fields = _diff(recorded["spec"], spec)
    if fields:
        return Change("update", kind, name, target, "record", fields, spec=dict(spec), owned=recorded["owned"])
    return Change("unchanged", kind, name, target, spec=dict(spec), owned=recorded["owned"])


def _diff(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _defaults(spec: dict) -> dict:
    """A spec as compared: the defaults the cluster applies filled in (image alpine, one replica)."""
    out = dict(spec)
    out["image"] = out.get("image") or "alpine"
    if "mode" in out:  # a service
        out["mode"] = out.get("mode") or "replicated"
        if out["mode"] == "replicated" and out.get("replicas") is None:
            out["replicas"] = 1
    return out


def _resolved(spec: dict, networks: dict[str, str]) -> dict:
    """A service's or container's spec as compared and recorded: its network as the subnet too."""
    out = copy.deepcopy(spec)
    out["subnet"] = networks.get(spec.get("network"))
    return out


def _container_host(stack: dict, volume: str) -> str | None:
    """The host of the first container with a host that mounts *volume* (the volume goes there)."""
    for spec in stack["containers"].values():
        if spec["host"] and any(m["type"] == M.VOLUME and m["source"] == volume for m in spec["mounts"] or []):
            return spec["host"]
    return None


def _exists(facts: dict, kind: str, target: str) -> bool:
    if kind == "network":
        return target in facts["networks"]
    if kind == "volume":
        base = target.removesuffix(".SLOT")
        return base in facts["volumes"] or any(v.startswith(base + ".") for v in facts["volumes"])
    table = facts.get("services") if kind == "service" else facts["containers"]
    return target in (table or {})
