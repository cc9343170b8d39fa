"""Read the cluster's state from whichever agent answers first (the leader's answer preferred)."""
from __future__ import annotations

import asyncio

from cantainer.client import AgentClient
from cantainer.connection import connect
from cantainer.errors import CantainerError
from cantainer.inventory import Host, Inventory

STATUS_TIMEOUT = 5.0
LEADER_GRACE = 2.0  # seconds to wait for a leader's answer once any agent has answered


class ClusterUnreachable(CantainerError):
    pass


async def _member_of(host: Host) -> tuple[AgentClient, dict]:
    connection = await connect(host)
    client = AgentClient(connection)
    try:
        # Finding a way in needs only each agent's own view of who leads: the light `member` answer,
        # not a status document (with 1000 containers that was ~1 MB from every host).
        return client, await client.call("member", timeout=STATUS_TIMEOUT)
    except BaseException:
        client.close()
        connection.close()
        raise


async def open_status_source(inventory: Inventory) -> tuple[AgentClient, dict]:
    """An agent to ask: the leader (its linearizable reads need no round trip to another node), else the
    first that knows a leader, else any that answers; else a clear error. Returns its client and its
    ``member`` answer (node, leader, role).

    Also the way into the cluster for any command not tied to one host: every agent serves
    linearizable reads (asking the leader) and forwards writes to the leader. Once some agent has answered
    (without being the leader) the others get LEADER_GRACE more seconds — not the SSH connect timeout of
    a host that is cut off."""
    tasks = {asyncio.ensure_future(_member_of(host)): host for host in inventory.hosts}
    answers: list[tuple[AgentClient, dict]] = []
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    give_up_at: float | None = None
    try:
        pending = set(tasks)
        while pending:
            timeout = None if give_up_at is None else max(0.0, give_up_at - loop.time())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for finished in done:
                try:
                    answers.append(finished.result())
                except CantainerError as error:
                    errors.append(error.message)
            leading = [answer for answer in answers if answer[1].get("role") == "leader"]
            if leading:
                return _keep(leading[0], answers)
            if answers and give_up_at is None:
                give_up_at = loop.time() + LEADER_GRACE
    finally:
        for task in tasks:
            task.cancel()
    knowing = [answer for answer in answers if answer[1].get("leader")]
    if knowing or answers:
        return _keep((knowing or answers)[0], answers)
    raise ClusterUnreachable(f"no agent answered ({'; '.join(errors[:3])}{' …' if len(errors) > 3 else ''})",
                             "check the hosts, or run `cantainer up` to start the agents")


def _keep(chosen: tuple[AgentClient, dict], answers: list[tuple[AgentClient, dict]]) -> tuple[AgentClient, dict]:
    """Close every connection but the chosen one."""
    for client, _ in answers:
        if client is not chosen[0]:
            client.connection.close()
    return chosen


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
        "consistency": status.get("consistency", "linearizable"),
        "nodes": nodes,
        "networks": status.get("networks", []),
        "containers": status.get("containers", []),
        "volumes": status.get("volumes", []),
    }
