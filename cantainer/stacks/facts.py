"""The facts a plan needs, read from the cluster in one go (linearizable, through any agent).

``read(client)`` asks one agent for ``status`` (networks, containers, volumes), ``stack.ls`` (what
each stack applied) and ``service.ls``; it shapes them as plan.py documents. Agents that answer
``unknown_method`` to ``service.ls`` know no services (``services`` is None: a file with services is
refused by the plan); to ``stack.ls``, they cannot keep stacks at all (an error: update them).
"""
from __future__ import annotations

from cantainer.client import AgentClient, AgentError
from cantainer.errors import CantainerError
from cantainer_agent import protocol

LINEARIZABLE = {"consistency": "linearizable"}


class OldAgents(CantainerError):
    exit_code = 1


async def read(client: AgentClient) -> dict:
    status = await client.call("status", LINEARIZABLE, timeout=30)
    try:
        stacks = await client.call("stack.ls", LINEARIZABLE, timeout=30)
    except AgentError as error:
        if error.code == protocol.UNKNOWN_METHOD:
            raise OldAgents("the cluster's agents cannot keep stacks", "update them with `cantainer up`") from None
        raise
    try:
        services = await client.call("service.ls", LINEARIZABLE, timeout=30)
    except AgentError as error:
        if error.code != protocol.UNKNOWN_METHOD:
            raise
        services = None
    return shape(status, stacks, services)


def shape(status: dict, stacks: list[dict], services: list[dict] | None) -> dict:
    """The plan's facts from the agent API's answers (pure)."""
    return {
        "networks": {n["cidr"]: {"containers": n["containers"], "name": n.get("name"), "internal": n.get("internal")}
                     for n in status.get("networks", [])},
        "volumes": {v["name"]: {"host": v["host"], "containers": v["containers"]} for v in status.get("volumes", [])},
        "containers": {c["name"]: {"state": c["state"], "host": c["host"], "id": c["id"]}
                       for c in status.get("containers", [])},
        "services": None if services is None else {
            s["name"]: {"replicas": s.get("replicas"), "image": s.get("image")} for s in services},
        "stacks": {s["name"]: s["objects"] for s in stacks},
        "placement": services is not None,  # agents with services place a container given no host
        "service_volumes": services is not None,  # the same agents give a service's tasks their volumes
        "nodes": {n["name"]: n.get("state") for n in status.get("nodes", [])},
    }
