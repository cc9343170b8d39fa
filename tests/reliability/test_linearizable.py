"""Linearizability of the cluster API under faults, checked as etcd's robustness tests do.

Concurrent clients (the CLI's own code: asyncssh to the agents, one write session per request,
resent while the outcome is unknown) create, remove and list overlapping networks, run, remove and
list containers, and create, remove and list volumes from three hosts at once, while a nemesis
SIGKILLs the leader's agent, cuts a host off and SIGKILLs every agent (each time `up` brings them
back). Every operation is recorded with its invocation and response time; one whose outcome stayed
unknown is kept as *pending* — never dropped, never counted as a failure — and failed reads
(nothing happened) are left out. The history is then checked with tests/history/checker.py against
models of the networks map, of container addresses and of volumes. `make test` runs the short
form (one round of faults); `-m slow` adds a longer one.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import threading
import time
from pathlib import Path

import pytest

from cantainer import ssh
from cantainer.client import SESSIONS, AgentClient, AgentError, retrying
from cantainer.errors import CantainerError
from cantainer.inventory import load_inventory
from cantainer_agent import protocol
from tests.history.checker import Op, check
from tests.history.models import Containers, Networks, Volumes
from tests.labcli import cli, kill_agent, ok, status, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.reliability]
AREA = "Linearizability under faults"

CIDRS = ["10.201.0.0/24", "10.201.1.0/24", "10.201.0.0/23", "10.201.2.0/24", "10.201.2.0/23"]
FAMILIES = ["10.201.0.0/16"]
CONTAINER_NET = "10.202.0.0/24"
DEFINITE = {protocol.NOT_FOUND, protocol.ALREADY_EXISTS, protocol.CONFLICT, protocol.INVALID}
OP_TIMEOUT = 8.0
CLIENT_NAMES = {3: ["l-a", "l-b", "l-c"], 4: ["l-d", "l-e", "l-f"], 5: ["l-g", "l-h", "l-i"]}  # container clients


class Recorder:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.lock = threading.Lock()

    async def write(self, client: int, kind: str, arg, send) -> None:
        """A write: one session, resent while its outcome is unknown; pending if it stays unknown."""
        call = time.monotonic()
        try:
            result = ("ok", await asyncio.wait_for(retrying(send, deadline=OP_TIMEOUT), OP_TIMEOUT + 2))
        except AgentError as error:
            result = ("error", error.code) if error.code in DEFINITE else None
        except (CantainerError, asyncio.TimeoutError):
            result = None
        self._add(Op(client, kind, arg, call, None if result is None else time.monotonic(), result))

    async def read(self, client: int, kind: str, arg, send, view) -> None:
        call = time.monotonic()
        try:
            result = view(await asyncio.wait_for(send(), OP_TIMEOUT))
        except (CantainerError, asyncio.TimeoutError):
            return  # a read that failed had no effect: nothing to check
        self._add(Op(client, kind, arg, call, time.monotonic(), result))

    def _add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)


class Client:
    """One workload client: an SSH connection to one agent at a time, moving on when it fails."""

    def __init__(self, number: int, hosts: list) -> None:
        self.number, self.hosts = number, hosts
        self.host = hosts[number % len(hosts)]
        self.agent: AgentClient | None = None
        self.pinned = False  # True: stay with this host (its containers run there)

    async def call(self, method: str, params: dict, session: dict | None = None):
        if self.agent is None:
            self.agent = AgentClient(await asyncio.wait_for(ssh.connect(self.host), 5))
        try:
            return await self.agent.call(method, params, timeout=5, session=session)
        except CantainerError as error:
            if not isinstance(error, AgentError) or error.code in (protocol.UNAVAILABLE, protocol.OUTCOME_UNKNOWN):
                self.close()
                if not self.pinned:
                    self.host = random.choice(self.hosts)  # try another agent next time
            raise

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent.connection.close()
            self.agent = None


async def network_client(client: Client, recorder: Recorder, stop: asyncio.Event, rng: random.Random) -> None:
    while not stop.is_set():
        choice = rng.random()
        cidr = rng.choice(CIDRS)
        if choice < 0.35:
            session = SESSIONS.next()
            await recorder.write(client.number, "create", cidr, lambda c=cidr, s=session: _created(
                client.call("network.create", {"cidr": c}, s)))
        elif choice < 0.65:
            session = SESSIONS.next()
            await recorder.write(client.number, "delete", cidr, lambda c=cidr, s=session: _none(
                client.call("network.rm", {"cidr": c}, s)))
        else:
            await recorder.read(client.number, "ls", FAMILIES, lambda: client.call("network.ls", {}),
                                lambda nets: frozenset(n["cidr"] for n in nets))
        await asyncio.sleep(rng.random() * 0.05)


async def container_client(client: Client, recorder: Recorder, stop: asyncio.Event, rng: random.Random,
                           names: list[str]) -> None:
    client.pinned = True  # a container runs on the host that was asked: stay with it
    while not stop.is_set():
        choice = rng.random()
        name = rng.choice(names)
        if choice < 0.4:
            session = SESSIONS.next()
            params = {"name": name, "network": CONTAINER_NET, "image": IMAGE[0], "command": ["sleep", "100000"]}
            await recorder.write(client.number, "run", name, lambda p=params, s=session: _ip(
                client.call("container.run", p, s)))
        elif choice < 0.75:
            session = SESSIONS.next()
            await recorder.write(client.number, "rm", name, lambda n=name, s=session: _none(
                client.call("container.rm", {"name": n, "force": True}, s)))
        else:
            await recorder.read(client.number, "ps", None, lambda: client.call("container.ps", {}),
                                lambda cs: frozenset((c["name"], c["ip"]) for c in cs if c["network"] == CONTAINER_NET))
        await asyncio.sleep(rng.random() * 0.2)


VOLUME_NAMES = ["lv-a", "lv-b", "lv-c"]


async def volume_client(client: Client, recorder: Recorder, stop: asyncio.Event, rng: random.Random) -> None:
    """Volumes live on one host: this client stays with its host, and its volumes (created there)
    race with the other volume clients', which are on other hosts, for the same names."""
    client.pinned = True
    while not stop.is_set():
        choice = rng.random()
        arg = (rng.choice(VOLUME_NAMES), client.host.name)
        if choice < 0.4:
            session = SESSIONS.next()
            await recorder.write(client.number, "vcreate", arg, lambda a=arg, s=session: _created(
                client.call("volume.create", {"name": a[0]}, s)))
        elif choice < 0.75:
            session = SESSIONS.next()
            await recorder.write(client.number, "vrm", arg, lambda a=arg, s=session: _none(
                client.call("volume.rm", {"name": a[0]}, s)))
        else:
            await recorder.read(client.number, "vls", None, lambda: client.call("volume.ls", {}),
                                lambda vs: frozenset((v["name"], v["host"]) for v in vs))
        await asyncio.sleep(rng.random() * 0.1)


IMAGE: list[dict] = []  # the `image` parameter of container.run for alpine (on every host before the workload)


async def _created(call):
    return (await call)["created"]


async def _none(call):
    await call
    return None


async def _ip(call):
    return (await call)["ip"]


def nemesis(lab, cluster: Path, rounds: int, log: list[str]) -> None:
    """Faults, one after the other, each healed before the next; the workload runs throughout."""
    for _ in range(rounds):
        time.sleep(3)
        leader = wait_for(lambda: status(cluster).get("leader"), 30, what="a leader")
        kill_agent(lab, leader)
        log.append(f"[{time.monotonic():.3f}] SIGKILL of the leader's agent ({leader})")
        time.sleep(2)
        ok(cli(cluster, "up", str(cluster), timeout=180))
        time.sleep(2)
        victim = random.choice(["h1", "h2", "h3"])
        lab.cut(victim)
        log.append(f"[{time.monotonic():.3f}] {victim} cut off")
        time.sleep(6)
        lab.cut(victim, up=True)
        log.append(f"[{time.monotonic():.3f}] {victim} back")
        time.sleep(3)
        for host in ("h1", "h2", "h3"):
            kill_agent(lab, host)
        log.append(f"[{time.monotonic():.3f}] SIGKILL of every agent")
        time.sleep(1)
        ok(cli(cluster, "up", str(cluster), timeout=180))
        log.append(f"[{time.monotonic():.3f}] up done")


def clean_slate(cluster: Path) -> None:
    """Remove what an earlier run left: the models start from an empty networks map, no containers and
    no volumes."""
    for name in (name for names in CLIENT_NAMES.values() for name in names):
        assert cli(cluster, "rm", "-f", name).returncode in (0, 3)  # 3: not found, already clean
    for volume in json.loads(ok(cli(cluster, "volume", "ls", "--json"))):
        if volume["name"] in VOLUME_NAMES:
            ok(cli(cluster, "volume", "rm", volume["name"]))
    for network in json.loads(ok(cli(cluster, "network", "ls", "--json"))):
        if any(ipaddress.ip_network(network["cidr"]).subnet_of(ipaddress.ip_network(f)) for f in FAMILIES):
            ok(cli(cluster, "network", "rm", network["cidr"]))


def run_workload(lab, cluster: Path, rounds: int) -> tuple[Recorder, list[str]]:
    inventory = load_inventory(cluster)
    clean_slate(cluster)
    # The image on every host first (the CLI pushes it on the first `run` of each host).
    for host in ("h1", "h2", "h3"):
        ok(cli(cluster, "run", "--host", host, "-n", CONTAINER_NET, "--name", f"warm-{host}", "-d", "--", "true"))
        ok(cli(cluster, "rm", "-f", f"warm-{host}"))
    from cantainer.run_image import tarball_image

    IMAGE[:] = [tarball_image("alpine", inventory).params()]
    recorder, faults = Recorder(), []
    fault_thread = threading.Thread(target=nemesis, args=(lab, cluster, rounds, faults), daemon=True)

    async def main() -> None:
        stop = asyncio.Event()
        hosts = list(inventory.hosts)
        clients = [Client(n, hosts) for n in range(9)]  # 6, 7, 8: volumes, one per host
        tasks = [asyncio.ensure_future(network_client(c, recorder, stop, random.Random(c.number)))
                 for c in clients[:3]]
        tasks += [asyncio.ensure_future(container_client(c, recorder, stop, random.Random(c.number),
                                                         CLIENT_NAMES[c.number])) for c in clients[3:6]]
        tasks += [asyncio.ensure_future(volume_client(c, recorder, stop, random.Random(c.number)))
                  for c in clients[6:]]
        fault_thread.start()
        while fault_thread.is_alive():
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # a little more history after the last heal
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            c.close()

    asyncio.run(main())
    return recorder, faults


def dump_history(ops: list[Op], folder: Path, label: str, faults: list[str] = ()) -> Path:
    """The whole history of a partition, one operation per line (sorted by invocation), to study a
    violation: the checker names only the operations none of which fits at the furthest point. The
    faults come first, stamped on the operations' clock."""
    path = folder / f"history-{label}.jsonl"
    with path.open("w") as out:
        for fault in faults:
            out.write(json.dumps({"fault": fault}) + "\n")
        for op in sorted(ops, key=lambda o: o.call):
            result = sorted(op.result) if isinstance(op.result, frozenset) else op.result
            out.write(json.dumps({"client": op.client, "kind": op.kind, "arg": op.arg, "call": round(op.call, 4),
                                  "ret": None if op.pending else round(op.ret, 4),
                                  "result": None if op.pending else result}, default=str) + "\n")
    return path


def check_and_report(recorder: Recorder, faults: list[str], measured, folder: Path) -> None:
    networks = [op for op in recorder.ops if op.kind in ("create", "delete", "ls")]
    containers = [op for op in recorder.ops if op.kind in ("run", "rm", "ps")]
    names = {op.arg for op in containers if op.kind != "ps"}
    volumes = [op for op in recorder.ops if op.kind in ("vcreate", "vrm", "vls")]
    measured("faults", "; ".join(faults))
    measured("operations", f"{len(recorder.ops)} ({sum(op.pending for op in recorder.ops)} pending)")
    for label, model, ops in (("networks", Networks(), networks),
                              ("containers", Containers(CONTAINER_NET, names), containers),
                              ("volumes", Volumes(VOLUME_NAMES), volumes)):
        completed = [op for op in ops if not op.pending]
        assert len({op.client for op in ops}) >= 3, f"{label}: too few clients recorded"
        refused = [op for op in completed if isinstance(op.result, tuple) and op.result[0] == "error"
                   and op.result[1] not in ("not_found", "already_exists", "conflict")]
        assert refused == [], f"{label}: requests refused as wrong, the workload is broken: {refused[:3]}"
        assert sum(op.kind in ("create", "run", "vcreate") and op.result[0] == "ok" for op in completed) >= 5, \
            f"{label}: too few successful writes to judge"
        assert sum(op.kind in ("ls", "ps", "vls") for op in completed) >= 5, f"{label}: too few reads to judge"
        started = time.monotonic()
        violation = check(model, ops)
        measured(f"{label} history", f"{len(ops)} ops, checked in {time.monotonic() - started:.2f} s, "
                 f"{'violation' if violation else 'linearizable'}")
        assert violation is None, f"{violation}\nthe whole history: {dump_history(ops, folder, label, faults)}"


def test_api_is_linearizable_while_agents_die_and_a_host_is_cut(lab, cluster, measured, tmp_path):
    """5+ concurrent clients on networks, containers and volumes while the leader's agent is SIGKILLed, a host is
    cut off and every agent is SIGKILLed: the recorded history is linearizable."""
    recorder, faults = run_workload(lab, cluster, rounds=1)
    check_and_report(recorder, faults, measured, tmp_path)


@pytest.mark.slow
def test_api_is_linearizable_through_three_rounds_of_faults(lab, cluster, measured, tmp_path):
    """The same through three rounds of faults."""
    recorder, faults = run_workload(lab, cluster, rounds=3)
    check_and_report(recorder, faults, measured, tmp_path)
