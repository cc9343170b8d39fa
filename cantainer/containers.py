"""Workstation side of the container commands: run, exec, logs, stop, rm.

`run` talks to the chosen host's agent; the others first find the container's host from the
cluster state (any agent can answer), then act there. Output streams (logs, exec, attached run)
travel over SSH exec channels running the agent bundle's own tools on the host, so no TCP port
and no shell command line built from user strings is involved.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

from cantainer.client import EXIT_CODES, SESSIONS, AgentClient, AgentError, retrying
from cantainer.connection import connect
from cantainer.errors import CantainerError, HostError, Interrupted, UsageError
from cantainer.image_store import RunImage
from cantainer.inventory import Host, Inventory
from cantainer.remote import python
from cantainer.status import open_status_source
from cantainer.terminal import stream_command
from cantainer.timefmt import age
from cantainer_agent import capabilities, layout, mounts, protocol
from cantainer_agent.cluster.specs import constraint_holds, parse_constraint
from cantainer_agent.errors import StateError

PUSH_FANOUT = 8  # hosts an image is pushed to at once


class ContainerNotFound(CantainerError):
    """No container has that name, id or id prefix: exit 3, as the agent's not_found."""
    exit_code = EXIT_CODES[protocol.NOT_FOUND]


class AmbiguousContainer(CantainerError):
    """An id prefix that starts several containers' ids: exit 6, as invalid input."""
    exit_code = EXIT_CODES[protocol.INVALID]


@dataclass
class RunRequest:
    host: str | None  # None: the cluster places it (cluster/scheduler.py)
    network: str
    image: str = "alpine"
    name: str | None = None
    command: list[str] | None = None  # None: the image's (Entrypoint +) Cmd
    env: dict[str, str] = field(default_factory=dict)  # over the image's Env
    workdir: str | None = None  # None: the image's WorkingDir, else /
    entrypoint: str | None = None  # replaces the image's Entrypoint (and drops its Cmd); "" clears it
    user: str | None = None  # None: the image's User
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    auto_remove: bool = False  # --rm: removed once it has exited
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp: str = "default"
    restart: str | None = None  # no | on-failure[:MAX] | always | unless-stopped
    health: dict | None = None  # --health-* options: {test, interval, timeout, retries, start_period, disable}
    constraints: list[str] = field(default_factory=list)  # placement (without --host)
    publish: list[dict] = field(default_factory=list)  # cantainer_agent.cluster.ports dicts (run -p)
    mounts: list[dict] = field(default_factory=list)  # cantainer_agent.mounts: -v volumes and binds


class HostSession:
    """One SSH connection + agent client to a host, closed on exit."""

    def __init__(self, host: Host) -> None:
        self.host = host

    async def __aenter__(self) -> "HostSession":
        self.connection = await connect(self.host)
        self.client = AgentClient(self.connection)
        hello = await self.client.call("hello")
        self.bundle = layout.bundle_dir(hello["bundle"])
        self.machine = hello.get("machine")  # the host's uname -m: which platform of an image it runs
        return self

    async def __aexit__(self, *exc) -> None:
        self.client.close()
        self.connection.close()

    async def write(self, method: str, params: dict, timeout: float) -> dict:
        """A write with a session, resent (over a new connection if the old one broke) while its
        outcome is unknown; the agent applies it at most once."""
        session = SESSIONS.next()

        async def attempt() -> dict:
            try:
                return await self.client.call(method, params, timeout=timeout, session=session)
            except HostError:
                self.client.close()
                self.connection.close()
                self.connection = await connect(self.host)
                self.client = AgentClient(self.connection)
                raise

        return await retrying(attempt)

    def tool(self, *args: str) -> list[str]:
        """argv for one of the agent bundle's host-side tools."""
        return [*python(self.host.python), self.bundle, *args]


def run_params(request: RunRequest, image: RunImage, interactive: bool = False, use_tty: bool = False) -> dict:
    """The agent's `container.run` parameters for `request` (also used by bench/scale_bench.py)."""
    return {"name": request.name, "network": request.network, "image": image.params(),
            "command": request.command, "entrypoint": request.entrypoint, "env": request.env,
            "workdir": request.workdir, "user": request.user, "interactive": interactive, "tty": use_tty,
            "limits": {k: v for k, v in (("memory", request.memory), ("cpus", request.cpus),
                                         ("pids", request.pids)) if v is not None},
            "cap_add": request.cap_add, "cap_drop": request.cap_drop, "seccomp": request.seccomp,
            **({"publish": request.publish} if request.publish else {}),
            **({"mounts": request.mounts} if request.mounts else {}),
            **({"auto_remove": True} if request.auto_remove else {}),
            **({"restart": request.restart} if request.restart else {}),
            **({"health": request.health} if request.health else {}),
            **({"constraints": request.constraints} if request.constraints else {})}


async def run(inventory: Inventory, request: RunRequest, detach: bool, interactive: bool, use_tty: bool) -> int:
    """Start the container; detached, print its name and address; else stream it and return its exit
    code. --rm: detached, its host removes it once it exits; in the foreground, we do. Ctrl-C stops it
    (and with --rm removes it) rather than leaving it running unseen."""
    from cantainer import run_image

    if request.host is None:
        return await run_placed(inventory, request, detach, interactive, use_tty)
    host = inventory.host(request.host)
    async with HostSession(host) as session:
        image = await run_image.resolve(session, inventory, request.image)
        params = run_params(request, image, interactive, use_tty)
        if not detach:
            params.pop("auto_remove", None)  # the host would race our reading of its exit code
        created = await session.write("container.run", params, timeout=60)
        if detach:
            print(f"{created['name']} {created['ip']}")
            return 0
        try:
            if interactive or use_tty:
                argv = session.tool("attach", created["id"])
            else:
                argv = session.tool("logs", created["id"], "--follow", "--exit-code")
            code = await stream_command(session.connection, argv, interactive, use_tty)
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels us)
            raise await _interrupted(session, created["name"], request.auto_remove) from None
        if request.auto_remove:
            await session.write("container.rm", {"name": created["name"], "force": True}, timeout=30)
        return code


def candidate_hosts(inventory: Inventory, status: dict, constraints: list[str]) -> list[str]:
    """Inventory hosts that are up and satisfy every constraint (labels from the inventory)."""
    up = {node["name"] for node in status.get("nodes", []) if node.get("state") == "up"}
    try:
        for constraint in constraints:
            parse_constraint(constraint)
    except StateError as error:
        raise CantainerError(str(error)) from None
    return [host.name for host in inventory.hosts if host.name in up
            and all(constraint_holds(c, host.name, dict(host.labels)) for c in constraints)]


async def distribute_image(inventory: Inventory, status: dict, name: str, constraints: list[str]) -> RunImage:
    """*name* resolved once and its layers on every candidate host; the image (for the agent API)."""
    from cantainer import run_image

    hosts = candidate_hosts(inventory, status, constraints)
    if not hosts:
        raise CantainerError(f"no host that is up matches {' and '.join(constraints) or 'the request'}",
                           "see `cantainer status` and the hosts' labels in the inventory")
    gate = asyncio.Semaphore(PUSH_FANOUT)

    async def one(host: str) -> RunImage:
        async with gate, HostSession(inventory.host(host)) as session:
            return await run_image.resolve(session, inventory, name)

    results = await asyncio.gather(*(one(host) for host in hosts), return_exceptions=True)
    images = [result for result in results if isinstance(result, RunImage)]
    failures = [(host, result) for host, result in zip(hosts, results, strict=True) if not isinstance(result, RunImage)]
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, CantainerError):
            raise result
    if not images:
        raise failures[0][1]
    for host, error in failures:
        print(f"cantainer: warning: {host} did not get image {name} ({error}); nothing of it is placed there",
              file=sys.stderr)
    return images[0]


async def run_placed(inventory: Inventory, request: RunRequest, detach: bool, interactive: bool,
                     use_tty: bool) -> int:
    """`run` without --host: the image goes to every host it may land on, the cluster picks one
    (inside the replicated command), that host's agent starts it; then as `run --host`."""
    async with ClusterView(inventory) as cluster:
        image = await distribute_image(inventory, cluster.status, request.image, request.constraints)
        params = run_params(request, image, interactive, use_tty)
        if not detach:
            params.pop("auto_remove", None)  # the host would race our reading of its exit code
        created = await cluster.write("container.place", params, timeout=90)
    if detach:
        print(f"{created['name']} {created['ip']} {created['host']}")
        return 0
    async with HostSession(inventory.host(created["host"])) as session:
        try:
            if interactive or use_tty:
                argv = session.tool("attach", created["id"])
            else:
                argv = session.tool("logs", created["id"], "--follow", "--exit-code")
            code = await stream_command(session.connection, argv, interactive, use_tty)
        except asyncio.CancelledError:
            raise await _interrupted(session, created["name"], request.auto_remove) from None
        if request.auto_remove:
            await session.write("container.rm", {"name": created["name"], "force": True}, timeout=30)
        return code


async def _interrupted(session: HostSession, name: str, remove: bool) -> Interrupted:
    """Stop (and with --rm remove) the container `run` was attached to; say so."""
    stopped = await session.write("container.stop", {"name": name, "timeout": 10.0}, timeout=30)
    if remove:
        await session.write("container.rm", {"name": name, "force": True}, timeout=30)
    code = stopped.get("exit_code")
    return Interrupted(f"interrupted: container {name} stopped{f' (exit {code})' if code is not None else ''}"
                       f"{' and removed' if remove else ''}")


class HostDown(CantainerError):
    """The container's host is down: nothing on it can be reached (its containers show `unknown`)."""


@dataclass
class Found:
    container: dict
    host: Host
    down_since: float | None  # the host's last heartbeat, when it is down

    @property
    def name(self) -> str:
        return self.container["name"]

    def require_up(self, what: str, hint: str = "") -> None:
        if self.down_since is not None:
            raise HostDown(f"container {self.name} is on host {self.host.name}, which is down "
                           f"(no heartbeat for {age(self.down_since)}): cannot {what}",
                           hint or f"wait until {self.host.name} is back (`cantainer up`), or remove the container "
                                   f"from the cluster now with `cantainer rm -f {self.name}`")


def pick(containers: list[dict], wanted: str) -> dict:
    """The container called *wanted*, else the one with that id or unique id prefix (as docker)."""
    for container in containers:
        if container["name"] == wanted:
            return container
    matches = [c for c in containers if c["id"] == wanted] or \
        [c for c in containers if len(wanted) >= 3 and c["id"].startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousContainer(f"{wanted!r} is the start of the ids of {', '.join(c['name'] for c in matches)}",
                                "give more of the id, or the name")
    raise ContainerNotFound(f"no container named {wanted!r}", "see `cantainer ps -a` for the containers that exist")


class ClusterView:
    """One connection into the cluster and the status it answered: find containers, call the API."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def __aenter__(self) -> "ClusterView":
        self.client, _ = await open_status_source(self.inventory)
        try:  # a container created a moment ago must be found: a linearizable read, if a leader answers
            self.status = await self.client.call("status", {"consistency": "linearizable"})
        except AgentError as error:
            if error.code != protocol.UNAVAILABLE:
                raise
            self.status = await self.client.call("status", {"consistency": "stale"})
        return self

    async def __aexit__(self, *exc) -> None:
        self.client.close()
        self.client.connection.close()

    def find(self, wanted: str) -> Found:
        container = pick(self.status.get("containers", []), wanted)
        node = {n["name"]: n for n in self.status.get("nodes", [])}.get(container["host"], {})
        down = node.get("state") == "down"
        return Found(container, self.inventory.host(container["host"]), node.get("last_seen") if down else None)

    async def write(self, method: str, params: dict, timeout: float = 10.0):
        """A write with a session, resent (through any agent) while its outcome is unknown."""
        return await resent_write(self, method, params, timeout)


async def resent_write(owner, method: str, params: dict, timeout: float):
    """One write under one session, resent while its outcome is unknown; a failed agent is replaced
    by another (`owner.client` is reopened from `owner.inventory`), so the session makes it exactly once."""
    session = SESSIONS.next()

    async def attempt():
        try:
            return await owner.client.call(method, params, timeout=timeout, session=session)
        except HostError:
            owner.client.close()
            owner.client.connection.close()
            owner.client, _ = await open_status_source(owner.inventory)
            raise

    return await retrying(attempt)


async def find(inventory: Inventory, wanted: str) -> Found:
    async with ClusterView(inventory) as cluster:
        return cluster.find(wanted)


async def exec_in(inventory: Inventory, name: str, command: list[str], interactive: bool, use_tty: bool) -> int:
    found = await find(inventory, name)
    found.require_up("exec in it")
    async with HostSession(found.host) as session:
        argv = session.tool("exec", *(["--tty"] if use_tty else []), found.container["id"], "--", *command)
        return await stream_command(session.connection, argv, interactive, use_tty)


@dataclass
class LogsRequest:
    follow: bool = False
    tail: int | None = None      # only the last lines
    since: str = ""              # only records at or after this RFC 3339 UTC time
    timestamps: bool = False
    streams: tuple[str, ...] = ()  # () = both

    def tool_args(self) -> list[str]:
        """The agent's `logs` tool options (agent/cantainer_agent/__main__.py)."""
        return [*(["--follow"] if self.follow else []), *(["--tail", str(self.tail)] if self.tail is not None else []),
                *(["--since", self.since] if self.since else []), *(["--timestamps"] if self.timestamps else []),
                *[f"--{stream}" for stream in self.streams]]


async def logs(inventory: Inventory, name: str, request: LogsRequest) -> int:
    found = await find(inventory, name)
    found.require_up("read its logs", f"they can be read once {found.host.name} is back (`cantainer up`)")
    async with HostSession(found.host) as session:
        argv = session.tool("logs", found.container["id"], *request.tool_args())
        return await stream_command(session.connection, argv, interactive=False, use_tty=False)


async def each_container(inventory: Inventory, names: list[str], action) -> list[tuple[str, dict | CantainerError]]:
    """`action(cluster, found)` for every name in turn (one cluster connection); an error stays with
    its name and the others carry on, as `docker rm a b` does."""
    results: list[tuple[str, dict | CantainerError]] = []
    async with ClusterView(inventory) as cluster:
        for name in names:
            try:
                found = cluster.find(name)
                results.append((found.name, await action(cluster, found)))
            except CantainerError as error:
                results.append((name, error))
    return results


async def stop(inventory: Inventory, names: list[str], timeout: float) -> list[tuple[str, dict | CantainerError]]:
    async def one(_cluster: ClusterView, found: Found) -> dict:
        found.require_up("stop it")
        async with HostSession(found.host) as session:
            return await session.write("container.stop", {"name": found.name, "timeout": timeout},
                                       timeout=timeout + 10)

    return await each_container(inventory, names, one)


async def remove(inventory: Inventory, names: list[str], force: bool) -> list[tuple[str, dict | CantainerError]]:
    async def one(cluster: ClusterView, found: Found) -> dict:
        if found.down_since is not None:  # the record goes now; the host removes the leftover when back
            return await cluster.write("container.rm", {"name": found.name, "force": force}, timeout=30)
        async with HostSession(found.host) as session:
            return await session.write("container.rm", {"name": found.name, "force": force}, timeout=30)

    return await each_container(inventory, names, one)


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CantainerError(f"-e {item!r} is not KEY=VALUE", "write it like -e GREETING=hello")
        env[key] = value
    return env


def parse_publish(items: list[str]) -> list[dict]:
    """run -p values, docker's syntax (cantainer_agent/cluster/ports.py); each host port once."""
    from cantainer_agent.cluster import ports

    try:
        return ports.check([ports.parse(item) for item in items])
    except ports.PortError as error:
        raise UsageError(str(error)) from None


def parse_mounts(items: list[str]) -> list[dict]:
    """-v values to mounts (cantainer_agent.mounts: the cluster checks them by the same rules)."""
    parsed = []
    for item in items:
        try:
            parsed.append(mounts.parse(item))
        except mounts.MountError as error:
            raise UsageError(str(error)) from None
    try:
        return mounts.check_all(parsed)
    except mounts.MountError as error:
        raise UsageError(str(error)) from None


def parse_security(cap_add: list[str], cap_drop: list[str], options: list[str]) -> dict:
    """--cap-add/--cap-drop names (checked, as capabilities(7) spells them) and --security-opt values."""
    try:
        add = list(capabilities.normalize(cap_add, "--cap-add"))
        drop = list(capabilities.normalize(cap_drop, "--cap-drop"))
    except capabilities.CapabilityError as error:
        raise CantainerError(str(error), "see `man 7 capabilities`; write names like NET_RAW or CAP_NET_RAW") from None
    seccomp = "default"
    for option in options:
        key, _, value = option.partition("=" if "=" in option else ":")
        if key == "seccomp" and value in ("unconfined", "default"):
            seccomp = value
        elif key == "no-new-privileges" and value in ("", "true"):
            continue  # always on in cantainer
        else:
            raise CantainerError(f"--security-opt {option!r} is not supported",
                                 "cantainer knows seccomp=unconfined (no filter) and no-new-privileges (always on)")
    return {"cap_add": add, "cap_drop": drop, "seccomp": seccomp}


def parse_size(text: str) -> int:
    """'256m' → bytes (k, m, g suffixes, powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    body, unit = (text[:-1], units[text[-1].lower()]) if text and text[-1].lower() in units else (text, 1)
    try:
        value = int(float(body) * unit)
    except ValueError:
        raise CantainerError(f"--memory {text!r} is not a size", "write it like 256m or 1g") from None
    if value < 4 << 20:
        raise CantainerError(f"--memory {text} is too small", "give at least 4m")
    return value


def stdin_is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()
