"""`cantainer up`: bring every inventory host to "agent running, healthy raft member".

Reading and changing are separate steps, as in pyinfra: a probe reads each host's facts in one
round trip, `plan.plan_host` compares them with what the inventory wants, and only then are files
pushed and agents (re)started. A host that already matches is not touched (same agent PID).

Ordering rules that keep raft safe:
- a cluster is bootstrapped only when *every* inventory host was probed and none has raft state —
  otherwise a wiped or new node could found a second cluster;
- the bootstrap node starts first, the others then join through the seeds;
- agents that already run and must be restarted (new bundle, new config) are restarted one at a
  time, each waiting until it is a healthy member again, so the group keeps its quorum.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable

from cantainer import remote
from cantainer.bundle import Bundle, Platform, build_bundle
from cantainer.client import AgentClient, AgentError
from cantainer.errors import CantainerError
from cantainer.fleet import Fleet
from cantainer.inventory import Host, Inventory
from cantainer.plan import HostPlan, NoFounder, choose_bootstrap, plan_host, secret_digest, underlay_addresses
from cantainer.secret import load_or_create_secret
from cantainer.ssh import HostError, RemoteCommandError
from cantainer_agent import layout, protocol

HEALTHY_TIMEOUT = 60.0

# Progress callback: (host name, phase, detail).
Reporter = Callable[[str, str, str], None]


@dataclass
class HostOutcome:
    host: Host
    probe: remote.ProbeResult | None = None
    bundle: Bundle | None = None
    plan: HostPlan | None = None
    pushed: bool = False
    action: str = "unchanged"  # unchanged | started | restarted
    pid: int | None = None
    role: str | None = None


@dataclass
class UpResult:
    outcomes: dict[str, HostOutcome] = field(default_factory=dict)
    errors: dict[str, CantainerError] = field(default_factory=dict)
    leader: str | None = None
    seconds: float = 0.0


class Bootstrapper:
    def __init__(self, inventory: Inventory, report: Reporter, fanout: int) -> None:
        self.inventory = inventory
        self.report = report
        self.fleet = Fleet(inventory, fanout)
        self.result = UpResult()
        self.secret = b""
        self._bundles: dict[Platform, Bundle] = {}

    async def run(self) -> UpResult:
        started = time.monotonic()
        self.secret = load_or_create_secret(self.inventory.cluster.secret_file)
        try:
            for host in self.fleet.hosts:
                self.report(host.name, "connect", "")
            await self.fleet.connect_all()
            await self.fleet.each(self.fleet.healthy(), self._probe)
            bootstrap_node = self._choose_bootstrap_node()
            addresses = await self._addresses()
            await self.fleet.each(self.fleet.healthy(), lambda h: self._converge_files(h, addresses, bootstrap_node))
            await self._start_agents(bootstrap_node)
            await self._wait_healthy()
        finally:
            self.result.errors = dict(self.fleet.errors)
            await self.fleet.close()
            self.result.seconds = time.monotonic() - started
        return self.result

    # -- read -------------------------------------------------------------------------------------
    async def _probe(self, host: Host) -> None:
        self.report(host.name, "probe", "")
        connection = self.fleet.connections[host.name]
        argv = [host.python, "-c", remote.PROBE, layout.PID_FILE, layout.CONFIG_FILE, layout.BUNDLES_DIR,
                layout.MEMBERS_FILE, layout.SECRET_FILE]
        result = await connection.run(argv, check=False)
        if result.exit_status == 127:
            raise HostError(host.name, f"{host.python} not found on the host",
                            "install python3 (>= 3.10) there or set `python` in the inventory")
        if result.exit_status != 0:
            raise HostError(
                host.name,
                f"probe with {host.python} failed: {result.stderr.strip().splitlines()[-1:] or result.exit_status}",
            )
        probe = remote.ProbeResult.parse(result.stdout)
        if probe.python[:2] < layout.MIN_PYTHON:
            version = ".".join(map(str, probe.python))
            raise HostError(host.name, f"python {version} at {host.python} is too old (cantainer needs >= 3.10)",
                            "install a newer python3 or point `python` in the inventory at one")
        if probe.nftables_error:  # the agent would refuse to start: VXLAN would be open to the underlay
            raise HostError(host.name, "libnftables.so.1 is missing (the agent needs nftables to protect the overlay)",
                            "install the package libnftables1 there (apt-get install libnftables1)")
        outcome = HostOutcome(host, probe)
        outcome.bundle = self._bundle_for(Platform(probe.machine, probe.python[:2]))
        self.result.outcomes[host.name] = outcome

    async def _addresses(self) -> dict[str, str | None]:
        """Every inventory host's underlay address (plan.underlay_addresses): seeds come from the
        inventory, not from who answered, so an unreachable host changes nobody's config."""
        probes = {name: outcome.probe for name, outcome in self.result.outcomes.items() if outcome.probe}
        registered: dict[str, str] = {}
        if any(h.underlay_address is None and h.name not in probes for h in self.inventory.hosts):
            registered = await self._registered_addresses()
        addresses = underlay_addresses(self.inventory, probes, registered)
        for host in self.fleet.healthy():
            if addresses[host.name] is None:
                self.fleet.fail(host, HostError(host.name, "cannot tell the host's underlay address",
                                                "set underlay_address for this host in the inventory"))
        return addresses

    async def _registered_addresses(self) -> dict[str, str]:
        """The addresses the cluster state has registered, from the first running agent that answers."""
        for host in self.fleet.healthy():
            if self.result.outcomes[host.name].probe.agent_pid is None:
                continue
            client = AgentClient(self.fleet.connections[host.name])
            try:
                status = await client.call("status", timeout=5)
            except CantainerError:
                continue
            finally:
                client.close()
            return {node["name"]: node["address"] for node in status.get("nodes", []) if node.get("registered")}
        return {}

    def _bundle_for(self, target: Platform) -> Bundle:
        if target not in self._bundles:
            self._bundles[target] = build_bundle(target)
        return self._bundles[target]

    def _choose_bootstrap_node(self) -> str | None:
        probes = {h.name: self.result.outcomes[h.name].probe for h in self.fleet.healthy()}
        try:
            return choose_bootstrap(self.inventory, probes)
        except NoFounder as refusal:
            for host in self.fleet.healthy():
                self.fleet.fail(host, HostError(host.name, str(refusal),
                                                "fix the unreachable hosts and run `cantainer up` again"))
            return None

    # -- change -----------------------------------------------------------------------------------
    async def _converge_files(self, host: Host, addresses: dict[str, str], bootstrap_node: str | None) -> None:
        outcome = self.result.outcomes[host.name]
        probe, bundle = outcome.probe, outcome.bundle
        connection = self.fleet.connections[host.name]
        plan = outcome.plan = plan_host(self.inventory, host, probe, bundle_digest=bundle.digest,
                                        secret_sha256=secret_digest(self.secret), addresses=addresses,
                                        bootstrap_node=bootstrap_node)
        if not plan.touches_files:
            return
        await connection.run(["install", "-d", "-m", "700", layout.CONFIG_DIR, layout.DATA_DIR, layout.BUNDLES_DIR,
                              layout.LOG_DIR])
        if plan.push_bundle:
            self.report(host.name, "push", f"agent bundle {bundle.short} ({len(bundle.data) / 1e6:.1f} MB)")
            archive = f"{layout.BUNDLES_DIR}/.{bundle.digest}.tar.gz"
            await connection.write_file(archive, bundle.data, 0o600)
            await connection.run([host.python, "-c", remote.INSTALL_BUNDLE, archive, layout.bundle_dir(bundle.digest),
                                  bundle.digest])
            outcome.pushed = True
            keep = [layout.bundle_dir(digest).rsplit("/", 1)[1]
                    for digest in (bundle.digest, (probe.config or {}).get("bundle")) if digest]
            await connection.run([host.python, "-c", remote.PRUNE_BUNDLES, layout.BUNDLES_DIR, *keep])
        if plan.write_secret:
            await connection.write_file(layout.SECRET_FILE, self.secret + b"\n", 0o600)
        if plan.write_config:
            self.report(host.name, "configure", "")
            await connection.write_file(layout.CONFIG_FILE, json.dumps(plan.config, indent=1).encode() + b"\n", 0o600)

    async def _start_agents(self, bootstrap_node: str | None) -> None:
        healthy = self.fleet.healthy()
        todo = {h.name: self.result.outcomes[h.name].plan.start for h in healthy}
        for host in healthy:
            if not todo[host.name]:
                self.result.outcomes[host.name].pid = self.result.outcomes[host.name].probe.agent_pid
        first = [h for h in healthy if h.name == bootstrap_node and todo[h.name]]
        fresh = [h for h in healthy if todo[h.name] == "start" and h.name != bootstrap_node]
        rolling = [h for h in healthy if todo[h.name] == "restart" and h.name != bootstrap_node]
        await self.fleet.each(first, self._start_agent)
        await self.fleet.each(fresh, self._start_agent)
        for host in rolling:  # one at a time: the group keeps its quorum
            await self.fleet.each([host], self._start_agent)
            await self.fleet.each([host], self._wait_member)

    async def _start_agent(self, host: Host) -> None:
        outcome = self.result.outcomes[host.name]
        connection = self.fleet.connections[host.name]
        restarting = outcome.probe.agent_pid is not None
        self.report(host.name, "restart" if restarting else "start", "")
        if outcome.probe.systemd:
            await self._start_with_systemd(host, outcome)
        else:
            if restarting:
                await connection.run([host.python, "-c", remote.STOP_AGENT, layout.PID_FILE, "10"])
            try:
                await connection.run([host.python, layout.bundle_dir(outcome.bundle.digest), "run",
                                      "--config", layout.CONFIG_FILE, "--daemon"], timeout=60)
            except RemoteCommandError as error:
                if "another agent is already running" not in error.stderr:
                    raise
                raise HostError(host.name, "an agent was started on this host meanwhile — another `up` (from another "
                                "workstation?) is in progress", "wait for it, then run `cantainer up` again") from None
        outcome.action = "restarted" if restarting else "started"

    async def _start_with_systemd(self, host: Host, outcome: HostOutcome) -> None:
        connection = self.fleet.connections[host.name]
        unit = remote.systemd_unit(host.python, outcome.bundle.digest, self.inventory.cluster.name)
        await connection.write_file(layout.UNIT_FILE, unit.encode(), 0o644)
        await connection.run(["systemctl", "daemon-reload"])
        await connection.run(["systemctl", "enable", layout.UNIT_NAME])
        await connection.run(["systemctl", "restart", layout.UNIT_NAME])

    async def _wait_member(self, host: Host) -> None:
        """Until the host's agent answers with a leader and lists itself as an up member."""
        self.report(host.name, "join", "")
        client = AgentClient(self.fleet.connections[host.name])
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        last_problem = "no answer yet"
        try:
            while time.monotonic() < deadline:
                try:
                    hello = await client.call("hello", timeout=5)
                    status = await client.call("status", {"consistency": "stale"}, timeout=5)
                except HostError as error:
                    last_problem = error.message
                    client.close()
                except AgentError as error:
                    if error.code != protocol.UNAVAILABLE:
                        raise
                    # Still joining — e.g. started by an `up` that was interrupted: finish the job.
                    last_problem = error.message
                else:
                    mine = {n["name"]: n for n in status.get("nodes", [])}.get(host.name)
                    if status.get("leader") and mine and mine.get("state") == "up":
                        outcome = self.result.outcomes[host.name]
                        outcome.pid, outcome.role = hello.get("pid"), mine.get("role")
                        self.result.leader = status["leader"]
                        self.report(host.name, "ready", "")
                        return
                    last_problem = "no leader yet" if not status.get("leader") else "not yet a member"
                await asyncio.sleep(0.1)
        finally:
            client.close()
        raise HostError(
            host.name,
            f"agent did not become a healthy raft member within {HEALTHY_TIMEOUT:.0f}s ({last_problem})",
            f"see {layout.LOG_DIR}/agent.log on the host",
        )

    async def _wait_healthy(self) -> None:
        await self.fleet.each(self.fleet.healthy(), self._wait_member)


def run_up(inventory: Inventory, report: Reporter, fanout: int) -> UpResult:
    return asyncio.run(Bootstrapper(inventory, report, fanout).run())
