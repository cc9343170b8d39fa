"""`cantainer down`: stop the agents (leader last) and remove what they created on the hosts.

Agents stop first (so nothing re-creates what is being removed), then each host's containers
(processes, mounts, cgroups) and overlay devices go. Without --purge, raft state, config and
bundles stay, so a later `up` resumes the same cluster (its containers then show as dead).
With --purge, everything cantainer wrote on the hosts is removed.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from cantainer import remote
from cantainer.client import AgentClient
from cantainer.errors import CantainerError
from cantainer.fleet import Fleet
from cantainer.inventory import Host, Inventory
from cantainer_agent import layout


@dataclass
class DownResult:
    stopped: list[str] = field(default_factory=list)
    errors: dict[str, CantainerError] = field(default_factory=dict)


class Teardown:
    def __init__(self, inventory: Inventory, purge: bool, fanout: int) -> None:
        self.fleet = Fleet(inventory, fanout)
        self.purge = purge
        self.result = DownResult()

    async def run(self) -> DownResult:
        try:
            await self.fleet.connect_all()
            leader = await self._leader()
            followers = [h for h in self.fleet.healthy() if h.name != leader]
            await self.fleet.each(followers, self._stop)
            await self.fleet.each([h for h in self.fleet.healthy() if h.name == leader], self._stop)
        finally:
            self.result.errors = dict(self.fleet.errors)
            await self.fleet.close()
        return self.result

    async def _leader(self) -> str | None:
        for host in self.fleet.healthy():
            client = AgentClient(self.fleet.connections[host.name])
            try:
                return (await client.call("status", {"consistency": "stale"}, timeout=3)).get("leader")
            except CantainerError:
                continue
            finally:
                client.close()
        return None

    async def _stop(self, host: Host) -> None:
        connection = self.fleet.connections[host.name]
        probe = await connection.run([host.python, "-c", "import os; print(os.path.isdir('/run/systemd/system'))"])
        if probe.stdout.strip() == "True":
            await connection.run(["systemctl", "disable", "--now", layout.UNIT_NAME], check=False)
            await connection.run(["rm", "-f", layout.UNIT_FILE])
            await connection.run(["systemctl", "daemon-reload"])
        else:
            await connection.run([host.python, "-c", remote.STOP_AGENT, layout.PID_FILE, "10"])
        # Agent stopped: now its containers and overlay devices can go without being re-created.
        config = await connection.run(["cat", layout.CONFIG_FILE], check=False)
        if config.exit_status == 0:
            bundle = layout.bundle_dir(json.loads(config.stdout)["bundle"])
            await connection.run([host.python, bundle, "teardown"])
        paths = [layout.RUN_DIR]
        if self.purge:
            paths += [layout.DATA_DIR, layout.CONFIG_DIR, layout.LOG_DIR]
        await connection.run([host.python, "-c", remote.REMOVE_TREES, *paths])
        self.result.stopped.append(host.name)


def run_down(inventory: Inventory, purge: bool, fanout: int) -> DownResult:
    return asyncio.run(Teardown(inventory, purge, fanout).run())
