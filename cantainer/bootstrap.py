"""`cantainer up`: bring every inventory host to "agent running, healthy raft member".

Reading and changing are separate steps, as in pyinfra: a probe reads each host's facts in one
round trip, `plan.plan_host` compares them with what the inventory wants, and only then are files
pushed and agents (re)started. A host that already matches is not touched (same agent PID).

Each host costs two round trips and one Python start besides the agent's own: connect, then one
program that prints the probe's facts and, once every host is planned, reads what the plan says to
write (bundle, secret, config: all on its stdin) and becomes the agent's launcher. A host whose
agent runs is not probed: the agent reads the same facts with the probe's code (API `facts`).

Ordering rules that keep raft safe:
- a cluster is founded only when *every* inventory host was probed and none has raft state —
  otherwise a wiped or new node could found a second cluster;
- a founding `up` starts every host at once: the first `voters` hosts as the initial voters (they
  know each other from their config, like etcd's initial-cluster), the rest join them through the
  seeds as standbys; hosts added later join through the seeds too, one membership change at a time;
- agents that already run and must be restarted (new bundle, new config) are restarted one at a
  time, each waiting until it is a healthy member again, so the group keeps its quorum.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from cantainer import remote
from cantainer.bundle import Bundle, Platform, build_bundle, bundle_key
from cantainer.client import AgentClient, AgentError
from cantainer.errors import CantainerError
from cantainer.fleet import Fleet
from cantainer.inventory import Host, Inventory
from cantainer.plan import (
    HostPlan,
    NoFounder,
    choose_bootstrap,
    plan_host,
    secret_digest,
    underlay_addresses,
)
from cantainer.secret import load_or_create_secret
from cantainer.ssh import HostError, RemoteCommandError, Session
from cantainer_agent import layout, protocol, raftkey
from cantainer_agent.config import identity

HEALTHY_TIMEOUT = 60.0
MEMBER_WAIT = 20.0  # seconds one `member` call may wait on the agent
FACTS_WAIT = 3.0  # seconds a running agent may take to answer `facts` before the probe runs instead
ADOPT_WAIT = 10.0  # seconds an agent holding the lock may take to answer `hello` (a loaded host starts slowly)
_ROLES = {"candidate": "follower"}  # a member between elections is shown as the follower it was

# Progress callback: (host name, phase, detail).
Reporter = Callable[[str, str, str], None]


@dataclass
class HostOutcome:
    host: Host
    probe: remote.ProbeResult | None = None
    from_agent: bool = False  # the facts came from the running agent (API `facts`), not from the probe
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
    def __init__(self, inventory: Inventory, report: Reporter, fanout: int,
                 early: dict[str, socket.socket] | None = None) -> None:
        self.inventory = inventory
        self.report = report
        self.fleet = Fleet(inventory, fanout, early=early if early is not None else {})
        self.result = UpResult()
        self.secret = b""
        self._bundles: dict[bool, Bundle] = {}  # by bundle_key
        self._raft_key: bytes | None = None  # the key file's content (raftkey.record), made on first use
        self._sessions: dict[str, Session] = {}  # probed hosts' processes, waiting to apply the plan

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
            for host in self.fleet.healthy():
                self._plan(host, addresses, bootstrap_node)
            await self.fleet.each([h for h in self.fleet.healthy() if self._changes_by_agent_facts(h)],
                                  lambda host: self._reprobe(host, addresses, bootstrap_node))
            await self.fleet.each(self.fleet.healthy(), self._apply)
            await self._start_rest()
            await self._wait_healthy()
        finally:
            for host in self.fleet.hosts:
                self._end_session(host)
            self.result.errors = dict(self.fleet.errors)
            await self.fleet.close()
            self.result.seconds = time.monotonic() - started
        return self.result

    # -- read -------------------------------------------------------------------------------------
    async def _probe(self, host: Host) -> None:
        self.report(host.name, "probe", "")
        probe = await self._facts_from_agent(host)
        self._take(host, probe or await self._run_probe(host), from_agent=probe is not None)

    async def _reprobe(self, host: Host, addresses: dict[str, str | None], bootstrap_node: str | None) -> None:
        """A host whose agent's answer says something must change is probed before it is changed: the
        agent's facts decide only that nothing needs doing (a running agent has nftables loaded even
        if the library is gone from the disk since, which the agent it would start must not meet)."""
        self._take(host, await self._run_probe(host), from_agent=False)
        self._plan(host, addresses, bootstrap_node)

    def _take(self, host: Host, probe: remote.ProbeResult, from_agent: bool) -> None:
        if probe.python[:2] < layout.MIN_PYTHON:
            version = ".".join(map(str, probe.python))
            raise HostError(host.name, f"python {version} at {host.python} is too old (cantainer needs >= 3.10)",
                            "install a newer python3 or point `python` in the inventory at one")
        if probe.nftables_error:  # the agent would refuse to start: VXLAN would be open to the underlay
            raise HostError(host.name, "libnftables.so.1 is missing (the agent needs nftables to protect the overlay)",
                            "install the package libnftables1 there (apt-get install libnftables1)")
        outcome = HostOutcome(host, probe, from_agent=from_agent)
        outcome.bundle = self._bundle_for(Platform(probe.machine, probe.python[:2], probe.bytecode))
        self.result.outcomes[host.name] = outcome

    async def _facts_from_agent(self, host: Host) -> remote.ProbeResult | None:
        """The facts as the host's running agent reads them (API ``facts``, the probe's own code), or
        None: no agent answers, an agent from before ``facts`` or running under another Python than the
        inventory's ``python``, or a host whose underlay address only the SSH server's view tells (an
        agent cannot see it) or that needs sudo (its socket relay is a Python start anyway) — then the
        probe runs."""
        connection = self.fleet.connections[host.name]
        if host.underlay_address is None or connection.needs_sudo:
            return None
        client = AgentClient(connection)
        try:
            document = await client.call("facts", timeout=FACTS_WAIT)
            if document.get("interpreter") != host.python:  # the inventory names another Python now: probe it
                return None
            return remote.ProbeResult.from_document(document)
        except (CantainerError, AttributeError, KeyError, TypeError, ValueError):
            return None  # the probe is the authority: it reads the host itself
        finally:
            client.close()

    async def _run_probe(self, host: Host) -> remote.ProbeResult:
        """The probe's facts, from a process that stays to apply the plan (``remote.PROBE_THEN_APPLY``:
        one Python start and one round trip less per host); ``_apply`` ends it, with or without input."""
        connection = self.fleet.connections[host.name]
        argv = [*remote.python(host.python), "-c", remote.PROBE_THEN_APPLY, layout.PID_FILE, layout.CONFIG_FILE,
                layout.BUNDLES_DIR, layout.MEMBERS_FILE, layout.SECRET_FILE]
        session = await connection.start(argv)
        if session.first_line:
            self._sessions[host.name] = session
            return remote.ProbeResult.parse(session.first_line)
        result = await session.finish(check=False, timeout=30)  # it ended without its facts: how?
        if result.exit_status == 127:
            raise HostError(host.name, f"{host.python} not found on the host",
                            "install python3 (>= 3.10) there or set `python` in the inventory")
        if result.exit_status != 0:
            raise HostError(
                host.name,
                f"probe with {host.python} failed: {result.stderr.strip().splitlines()[-1:] or result.exit_status}",
            )
        raise HostError(host.name, f"probe with {host.python} printed nothing (exit status {result.exit_status})")

    def _end_session(self, host: Host) -> None:
        session = self._sessions.pop(host.name, None)
        if session is not None:
            session.close()

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
        key = bundle_key(target)
        if key not in self._bundles:
            self._bundles[key] = build_bundle(target)
        return self._bundles[key]

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
    def _plan(self, host: Host, addresses: dict[str, str], bootstrap_node: str | None) -> None:
        outcome = self.result.outcomes[host.name]
        outcome.plan = plan_host(self.inventory, host, outcome.probe, bundle_digest=outcome.bundle.digest,
                                 secret_sha256=secret_digest(self.secret), addresses=addresses,
                                 bootstrap_node=bootstrap_node)

    def _changes_by_agent_facts(self, host: Host) -> bool:
        outcome = self.result.outcomes[host.name]
        return outcome.from_agent and (outcome.plan.touches_files or outcome.plan.start is not None)

    def _starts_in_apply(self, outcome: HostOutcome) -> bool:
        """A stopped agent without systemd starts in the same round trip as its files; restarts wait
        for their turn (one at a time) and systemd hosts start through their unit."""
        return outcome.plan.start == "start" and not outcome.probe.systemd

    async def _apply(self, host: Host) -> None:
        """One round trip: the files the plan wants (bundle, secret, config) and, for an agent that is
        not running, its start (remote.APPLY becomes the launcher, which returns once it is ready)."""
        outcome = self.result.outcomes[host.name]
        plan, bundle = outcome.plan, outcome.bundle
        start = self._starts_in_apply(outcome)
        session = self._sessions.pop(host.name, None)
        if not plan.touches_files and not start:
            if session is not None:
                await session.finish(timeout=30)  # no input: the probe's process ends, nothing changed
            return
        header: dict = {"dirs": [layout.CONFIG_DIR, layout.DATA_DIR, layout.BUNDLES_DIR, layout.LOG_DIR]
                        if plan.touches_files else []}
        blobs: list[bytes] = []
        if plan.push_bundle:
            self.report(host.name, "push", f"agent bundle {bundle.short} ({len(bundle.data) / 1e6:.1f} MB)")
            keep = [layout.bundle_dir(digest).rsplit("/", 1)[1]
                    for digest in (bundle.digest, (outcome.probe.config or {}).get("bundle")) if digest]
            header["bundle"] = {"digest": bundle.digest, "size": len(bundle.data), "magic": bundle.magic,
                                "target": layout.bundle_dir(bundle.digest), "keep": keep}
            blobs.append(bundle.data)
        if plan.write_secret:
            header["secret"] = {"path": layout.SECRET_FILE, "size": len(self.secret) + 1}
            blobs.append(self.secret + b"\n")
            if self._raft_key is None:  # derived once per secret here, not by every agent at its start
                kept = raftkey.key_file(str(self.inventory.cluster.secret_file))
                self._raft_key = raftkey.record(self.secret, raftkey.load(self.secret, kept))
            header["raft_key"] = {"path": raftkey.key_file(layout.SECRET_FILE), "size": len(self._raft_key)}
            blobs.append(self._raft_key)
        if plan.write_config:
            self.report(host.name, "configure", "")
            config = json.dumps(plan.config, indent=1).encode() + b"\n"
            header["config"] = {"path": layout.CONFIG_FILE, "size": len(config)}
            blobs.append(config)
        if start:
            self.report(host.name, "start", "")
            header["exec"] = {"argv": self._launcher(host, outcome)}
        stdin = json.dumps(header).encode() + b"\n" + b"".join(blobs)
        try:
            if session is not None:
                await session.finish(stdin, timeout=120 if start else 60)
            else:  # its facts came from its agent: no process waits
                await self.fleet.connections[host.name].run([*remote.python(host.python), "-c", remote.APPLY],
                                                            input=stdin, timeout=120 if start else 60)
        except RemoteCommandError as error:
            if not (start and "another agent is already running" in error.stderr):
                raise
            if not await self._adopt(host, outcome):
                raise self._taken(host) from None
        outcome.pushed = plan.push_bundle
        if start:
            outcome.action = "started"

    def _launcher(self, host: Host, outcome: HostOutcome) -> list[str]:
        return [*remote.python(host.python), layout.bundle_dir(outcome.bundle.digest), "run", "--config",
                layout.CONFIG_FILE, "--daemon"]

    async def _adopt(self, host: Host, outcome: HostOutcome) -> bool:
        """Is the agent that holds the host's lock one this `up` would have started — same bundle, and
        a config that differs at most in the founding keys (``config.identity``)? That is an agent an
        interrupted `up` of this inventory started late (its remote launcher outlived the Ctrl-C):
        taken as started. Anything else (another workstation's, a stranger holding the lock) is not."""
        client = AgentClient(self.fleet.connections[host.name])
        deadline = time.monotonic() + ADOPT_WAIT
        try:
            while True:
                try:
                    hello = await client.call("hello", timeout=2)
                    break
                except HostError:  # still starting (no socket yet), or no agent at all
                    client.close()
                    if time.monotonic() > deadline:
                        return False
                    await asyncio.sleep(0.1)
        except AgentError:
            return False
        finally:
            client.close()
        return hello.get("bundle") == outcome.bundle.digest and hello.get("config") == identity(outcome.plan.config)

    @staticmethod
    def _taken(host: Host) -> HostError:
        return HostError(host.name, "an agent was started on this host meanwhile — another `up` (from another "
                         "workstation?) is in progress", "wait for it, then run `cantainer up` again")

    async def _start_rest(self) -> None:
        """What `_apply` did not start: systemd units (all at once), then restarts one at a time."""
        healthy = self.fleet.healthy()
        outcomes = {h.name: self.result.outcomes[h.name] for h in healthy}
        for host in healthy:
            if not outcomes[host.name].plan.start:
                outcomes[host.name].pid = outcomes[host.name].probe.agent_pid
        fresh = [h for h in healthy if outcomes[h.name].plan.start == "start" and outcomes[h.name].probe.systemd]
        rolling = [h for h in healthy if outcomes[h.name].plan.start == "restart"]
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
            header = {"dirs": [], "exec": {"argv": self._launcher(host, outcome), "stop_first": restarting,
                                           "pid_file": layout.PID_FILE}}
            try:
                await connection.run([*remote.python(host.python), "-c", remote.APPLY],
                                     input=json.dumps(header).encode() + b"\n", timeout=120)
            except RemoteCommandError as error:
                if "another agent is already running" not in error.stderr:
                    raise
                if not await self._adopt(host, outcome):
                    raise self._taken(host) from None
        outcome.action = "restarted" if restarting else "started"

    async def _start_with_systemd(self, host: Host, outcome: HostOutcome) -> None:
        connection = self.fleet.connections[host.name]
        unit = remote.systemd_unit(host.python, outcome.bundle.digest, self.inventory.cluster.name)
        await connection.write_file(layout.UNIT_FILE, unit.encode(), 0o644)
        await connection.run(["systemctl", "daemon-reload"])
        await connection.run(["systemctl", "enable", layout.UNIT_NAME])
        await connection.run(["systemctl", "restart", layout.UNIT_NAME])

    async def _wait_member(self, host: Host) -> None:
        """Until the host's agent knows a leader and is registered in the cluster state (it answers
        `member` as soon as that is so: no polling over SSH)."""
        self.report(host.name, "join", "")
        client = AgentClient(self.fleet.connections[host.name])
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        last_problem = "no answer yet"
        try:
            while (left := deadline - time.monotonic()) > 0:
                wait = min(MEMBER_WAIT, left)
                try:
                    member = await client.call("member", {"wait": wait}, timeout=wait + 5)
                except HostError as error:  # not listening yet, or the connection broke: ask again
                    last_problem = error.message
                    client.close()
                    await asyncio.sleep(0.1)
                    continue
                except AgentError as error:
                    if error.code != protocol.UNAVAILABLE:
                        raise
                    last_problem = error.message  # raft busy (e.g. changing roles): ask again
                    await asyncio.sleep(0.1)
                    continue
                if member["leader"] and member["registered"]:
                    outcome = self.result.outcomes[host.name]
                    outcome.pid, outcome.role = member["pid"], _ROLES.get(member["role"], member["role"])
                    self.result.leader = await self._leader_name(client, member["leader"])
                    self.report(host.name, "ready", "")
                    return
                last_problem = "no leader yet" if not member["leader"] else "not yet registered"
        finally:
            client.close()
        raise HostError(
            host.name,
            f"agent did not become a healthy raft member within {HEALTHY_TIMEOUT:.0f}s ({last_problem})",
            f"see {layout.LOG_DIR}/agent.log on the host",
        )

    async def _leader_name(self, client: AgentClient, raft_addr: str) -> str | None:
        """The leader's node name (the summary shows it), asked once per `up`."""
        if self.result.leader is None:
            status = await client.call("status", {"consistency": "stale"}, timeout=10)
            self.result.leader = status.get("leader")
        return self.result.leader

    async def _wait_healthy(self) -> None:
        await self.fleet.each(self.fleet.healthy(), self._wait_member)


def run_up(inventory: Inventory, report: Reporter, fanout: int,
           early: dict[str, socket.socket] | None = None) -> UpResult:
    """*early*: TCP connections to hosts opened before this module's imports (preconnect.py)."""
    return asyncio.run(Bootstrapper(inventory, report, fanout, early).run())
