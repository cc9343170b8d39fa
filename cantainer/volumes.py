"""Workstation side of the volume commands: list, inspect, create, and remove on the volume's host.

A volume's data lives on one host, so `volume rm` finds that host from the cluster state (any agent
answers) and asks its agent, which forgets the record and deletes the directory. A volume of a host
that is down cannot be deleted: nothing is changed and the error says to bring the host back.
"""
from __future__ import annotations

from cantainer.client import AgentError
from cantainer.containers import ClusterView, HostSession
from cantainer.errors import CantainerError
from cantainer.inventory import Inventory
from cantainer_agent import protocol


class VolumeNotFound(CantainerError):
    exit_code = 3


class VolumeHostDown(CantainerError):
    exit_code = 69  # unavailable: nothing was done, run it again once the host is back


async def remove(inventory: Inventory, names: list[str]) -> list[tuple[str, dict | CantainerError]]:
    """Remove each volume on its host, one after another; an error stays with its name (as `docker
    volume rm a b`)."""
    results: list[tuple[str, dict | CantainerError]] = []
    async with ClusterView(inventory) as cluster:
        views = {v["name"]: v for v in await cluster.client.call("volume.ls", {"consistency": "linearizable"})}
        for name in names:
            view = views.get(name)
            try:
                if view is None:
                    raise VolumeNotFound(f"no volume named {name!r}", "see `cantainer volume ls`")
                if view["host_down"]:
                    raise VolumeHostDown(f"volume {name} is on host {view['host']}, which is down: its data cannot "
                                         "be deleted now", f"bring {view['host']} back (`cantainer up`) and run this "
                                         "again")
                async with HostSession(inventory.host(view["host"])) as session:
                    results.append((name, await session.write("volume.rm", {"name": name}, timeout=120)))
            except AgentError as error:
                if error.code == protocol.NOT_FOUND:
                    error.exit_code = VolumeNotFound.exit_code
                results.append((name, error))
            except CantainerError as error:
                results.append((name, error))
    return results
