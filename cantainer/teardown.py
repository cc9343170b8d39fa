"""`cantainer down`: stop the agents (leader last), then what they started on the hosts.

Agents stop first (so nothing re-creates what is being removed). Then each host's containers are
stopped gracefully — SIGTERM, SIGKILL after `--time` — recorded as "stopped by down" (a later
`up` shows them exited with that reason), and the overlay devices go. Without --purge, raft state,
config, bundles and the stopped containers' records stay, so a later `up` resumes the same cluster.
With --purge, everything cantainer wrote on the hosts is removed. With --keep-containers only the
agents stop: containers, their records and the overlay keep running (the data plane needs no agent).
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
from cantainer.ssh import RemoteCommandError
from cantainer_agent import layout


@dataclass
class HostTeardown:
    agent_was_running: bool
    stopped: int = 0      # containers stopped now
    removed: int = 0      # containers removed (--purge)
    kept: int | None = None  # containers left running (--keep-containers), if known
    volumes: list[str] = field(default_factory=list)  # volumes whose data is on the host (--purge deletes them)


@dataclass
class DownResult:
    hosts: dict[str, HostTeardown] = field(default_factory=dict)
    errors: dict[str, CantainerError] = field(default_factory=dict)

    @property
    def stopped(self) -> list[str]:
        return list(self.hosts)


@dataclass
class DownOptions:
    purge: bool = False
    keep_containers: bool = False
    stop_timeout: float = 10.0


class Teardown:
    def __init__(self, inventory: Inventory, options: DownOptions, fanout: int) -> None:
        self.fleet = Fleet(inventory, fanout)
        self.options = options
        self.result = DownResult()
        self._running: dict[str, int] = {}

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
        """The leader (stopped last), and how many containers run where (for --keep-containers)."""
        for host in self.fleet.healthy():
            client = AgentClient(self.fleet.connections[host.name])
            try:
                status = await client.call("status", {"consistency": "stale"}, timeout=3)
            except CantainerError:
                continue
            finally:
                client.close()
            for container in status.get("containers", []):
                if container.get("state") == "running":
                    self._running[container["host"]] = self._running.get(container["host"], 0) + 1
            return status.get("leader")
        return None

    async def _stop(self, host: Host) -> None:
        connection = self.fleet.connections[host.name]
        probe = await connection.run([*remote.python(host.python), "-c",
                                      "import os; print(os.path.isdir('/run/systemd/system'))"])
        if probe.stdout.strip() == "True":
            active = await connection.run(["systemctl", "is-active", "--quiet", layout.UNIT_NAME], check=False)
            await connection.run(["systemctl", "disable", "--now", layout.UNIT_NAME], check=False)
            await connection.run(["rm", "-f", layout.UNIT_FILE])
            await connection.run(["systemctl", "daemon-reload"])
            was_running = active.exit_status == 0
        else:
            stopped = await connection.run([*remote.python(host.python), "-c", remote.STOP_AGENT, layout.PID_FILE,
                                            "10"])
            was_running = stopped.stdout.strip() == "stopped"
        outcome = HostTeardown(was_running)
        if self.options.keep_containers:
            outcome.kept = self._running.get(host.name, 0) if self._running or was_running else None
            self.result.hosts[host.name] = outcome
            return  # containers, their run records and the overlay stay: the data plane keeps working
        # Agent stopped: now its containers and overlay devices can go without being re-created.
        config = await connection.run(["cat", layout.CONFIG_FILE], check=False)
        if config.exit_status == 0:
            bundle = layout.bundle_dir(json.loads(config.stdout)["bundle"])
            counts = await self._teardown(host, bundle)
            outcome.stopped, outcome.removed = counts.get("stopped", 0), counts.get("removed", 0)
            outcome.volumes = list(counts.get("volumes") or [])
        paths = [layout.RUN_DIR]
        if self.options.purge:
            paths += [layout.DATA_DIR, layout.CONFIG_DIR, layout.LOG_DIR]
        await connection.run([*remote.python(host.python), "-c", remote.REMOVE_TREES, *paths])
        self.result.hosts[host.name] = outcome

    async def _teardown(self, host: Host, bundle: str) -> dict:
        connection = self.fleet.connections[host.name]
        argv = [*remote.python(host.python), bundle, "teardown", "--stop-timeout", f"{self.options.stop_timeout:g}",
                *(["--remove"] if self.options.purge else [])]
        try:
            result = await connection.run(argv, timeout=self.options.stop_timeout + 120)
        except RemoteCommandError as error:
            if error.exit_status != 2:
                raise
            # An agent bundle older than this CLI: its teardown takes no options and removes everything.
            await connection.run([*remote.python(host.python), bundle, "teardown"])
            return {}
        lines = result.stdout.strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else {}
        except ValueError:
            return {}


def run_down(inventory: Inventory, options: DownOptions, fanout: int) -> DownResult:
    return asyncio.run(Teardown(inventory, options, fanout).run())
