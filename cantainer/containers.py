"""Workstation side of the container commands: run, exec, logs, stop, rm.

`run` talks to the chosen host's agent; the others first find the container's host from the
cluster state (any agent can answer), then act there. Output streams (logs, exec, attached run)
travel over SSH exec channels running the agent bundle's own tools on the host, so no TCP port
and no shell command line built from user strings is involved.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from cantainer import ssh
from cantainer.client import SESSIONS, AgentClient, retrying
from cantainer.errors import CantainerError
from cantainer.image_store import RunImage
from cantainer.inventory import Host, Inventory
from cantainer.ssh import HostError
from cantainer.status import open_status_source
from cantainer.terminal import stream_command
from cantainer_agent import layout


class ContainerNotFound(CantainerError):
    pass


@dataclass
class RunRequest:
    host: str
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


class HostSession:
    """One SSH connection + agent client to a host, closed on exit."""

    def __init__(self, host: Host) -> None:
        self.host = host

    async def __aenter__(self) -> "HostSession":
        self.connection = await ssh.connect(self.host)
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
                self.connection = await ssh.connect(self.host)
                self.client = AgentClient(self.connection)
                raise

        return await retrying(attempt)

    def tool(self, *args: str) -> list[str]:
        """argv for one of the agent bundle's host-side tools."""
        return [self.host.python, self.bundle, *args]


def run_params(request: RunRequest, image: RunImage, interactive: bool = False, use_tty: bool = False) -> dict:
    """The agent's `container.run` parameters for `request` (also used by bench/scale_bench.py)."""
    return {"name": request.name, "network": request.network, "image": image.params(),
            "command": request.command, "entrypoint": request.entrypoint, "env": request.env,
            "workdir": request.workdir, "user": request.user, "interactive": interactive, "tty": use_tty,
            "limits": {k: v for k, v in (("memory", request.memory), ("cpus", request.cpus),
                                         ("pids", request.pids)) if v is not None}}


async def run(inventory: Inventory, request: RunRequest, detach: bool, interactive: bool, use_tty: bool) -> int:
    from cantainer import run_image

    host = inventory.host(request.host)
    async with HostSession(host) as session:
        image = await run_image.resolve(session, inventory, request.image)
        params = run_params(request, image, interactive, use_tty)
        created = await session.write("container.run", params, timeout=60)
        if detach:
            print(f"{created['name']} {created['ip']}")
            return 0
        if interactive or use_tty:
            return await stream_command(session.connection, session.tool("attach", created["id"]), interactive, use_tty)
        return await stream_command(session.connection, session.tool("logs", created["id"], "--follow", "--exit-code"),
                                    interactive=False, use_tty=False)


async def find(inventory: Inventory, name: str) -> tuple[dict, Host]:
    client, _ = await open_status_source(inventory)
    try:
        containers = await client.call("container.ps")
    finally:
        client.close()
        client.connection.close()
    for container in containers:
        if container["name"] == name:
            return container, inventory.host(container["host"])
    raise ContainerNotFound(f"no container named {name!r}", "see `cantainer ps -a` for the containers that exist")


async def exec_in(inventory: Inventory, name: str, command: list[str], interactive: bool, use_tty: bool) -> int:
    container, host = await find(inventory, name)
    async with HostSession(host) as session:
        argv = session.tool("exec", *(["--tty"] if use_tty else []), container["id"], "--", *command)
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
    container, host = await find(inventory, name)
    async with HostSession(host) as session:
        argv = session.tool("logs", container["id"], *request.tool_args())
        return await stream_command(session.connection, argv, interactive=False, use_tty=False)


async def stop(inventory: Inventory, name: str, timeout: float) -> dict:
    _, host = await find(inventory, name)
    async with HostSession(host) as session:
        return await session.write("container.stop", {"name": name, "timeout": timeout}, timeout=timeout + 10)


async def remove(inventory: Inventory, name: str, force: bool) -> dict:
    _, host = await find(inventory, name)
    async with HostSession(host) as session:
        return await session.write("container.rm", {"name": name, "force": force}, timeout=30)


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CantainerError(f"-e {item!r} is not KEY=VALUE", "write it like -e GREETING=hello")
        env[key] = value
    return env


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
