"""Read the cluster's state from whichever agent answers first (the leader's answer preferred)."""
from __future__ import annotations

import asyncio

from cantainer import ssh
from cantainer.client import AgentClient
from cantainer.errors import CantainerError
from cantainer.inventory import Host, Inventory

STATUS_TIMEOUT = 5.0


class ClusterUnreachable(CantainerError):
    pass


async def _status_from(host: Host) -> tuple[AgentClient, dict]:
    connection = await ssh.connect(host)
    client = AgentClient(connection)
    try:
        return client, await client.call("status", timeout=STATUS_TIMEOUT)
    except BaseException:
        client.close()
        connection.close()
        raise


async def open_status_source(inventory: Inventory) -> tuple[AgentClient, dict]:
    """The first agent whose status names a leader; else any answer; else a clear error.

    Also the way into the cluster for any command not tied to one host: every agent serves
    reads from its replica and forwards writes to the leader."""
    tasks = {asyncio.ensure_future(_status_from(host)): host for host in inventory.hosts}
    fallback: tuple[AgentClient, dict] | None = None
    errors: list[str] = []
    try:
        for finished in asyncio.as_completed(list(tasks)):
            try:
                client, status = await finished
            except CantainerError as error:
                errors.append(error.message)
                continue
            if status.get("leader"):
                if fallback:
                    fallback[0].connection.close()
                return client, status
            if fallback is None:
                fallback = (client, status)
            else:
                client.connection.close()
    finally:
        for task in tasks:
            task.cancel()
    if fallback:
        return fallback
    raise ClusterUnreachable(f"no agent answered ({'; '.join(errors[:3])}{' …' if len(errors) > 3 else ''})",
                             "check the hosts, or run `cantainer up` to start the agents")


def merge_inventory(status: dict, inventory: Inventory) -> dict:
    """Inventory hosts the raft state does not know yet are listed too, as not-members."""
    known = {node["name"] for node in status.get("nodes", [])}
    nodes = list(status.get("nodes", []))
    for host in inventory.hosts:
        if host.name not in known:
            nodes.append({"name": host.name, "address": host.underlay_address or host.address,
                          "role": "none", "state": "not-member"})
    return {
        "cluster": inventory.cluster.name,
        "leader": status.get("leader"),
        "term": status.get("term"),
        "commit_index": status.get("commit_index"),
        "answered_by": status.get("node"),
        "nodes": nodes,
        "networks": status.get("networks", []),
        "containers": status.get("containers", []),
    }
