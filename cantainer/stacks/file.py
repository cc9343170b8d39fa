"""A stack file: one application in TOML (``stack.example.toml`` shows every key), read and checked.

Validation is the inventory's (cantainer/inventory.py): strict, and every mistake is one
:class:`StackError` line — ``FILE:LINE: KEY.PATH: what is wrong — how to fix it`` — raised before
anything is read from or changed in the cluster. The result is plain data, the *desired* state the
planner compares with the cluster (plan.py)::

    {name, networks: {NAME: {subnet, internal}}, volumes: {NAME: {host}},
     services: {NAME: SPEC}, containers: {NAME: SPEC}}

A SPEC holds the file's inputs, normalised, with None for a key not given (so the plan compares what
the file asked for, not what a default became): image, command, entrypoint, env, workdir, user,
network (one of the stack's), mounts (cantainer_agent.mounts dicts; a volume by its name in the file),
restart, health, constraints, resources {memory, cpus, pids}; a service also mode, replicas, ports,
update and volume_policy; a container host and ports (only when given: records of containers from
before they had ports compare the same).
"""
from __future__ import annotations

import ipaddress
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

from cantainer.errors import CantainerError
from cantainer.inventory import find_key_line, format_key_path
from cantainer.tomlcheck import describe, did_you_mean, quote
from cantainer_agent import mounts as M
from cantainer_agent.cluster import ipam
from cantainer_agent.cluster import ports as P
from cantainer_agent.cluster.stacks import STACK_NAME_RE
from cantainer_agent.errors import StateError

EXAMPLE_HINT = "see stack.example.toml"
OBJECT_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
SERVICE_NAME_MAX = 32  # the cluster's limit for a service name ("STACK-NAME")
CONTAINER_NAME_MAX = 63
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?")
SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
CONSTRAINT_RE = re.compile(r"(host|label\.[a-z0-9][a-z0-9._-]{0,62})\s*(==|!=)\s*(\S+)")
MODES = ("replicated", "global")
UPDATE_ORDERS = ("start-first", "stop-first")
FAILURE_ACTIONS = ("rollback", "pause")
MAX_REPLICAS = 10000

TOP_KEYS = ("name", "networks", "volumes", "services", "containers")
NETWORK_KEYS = ("subnet", "internal")
VOLUME_KEYS = ("host",)
COMMON_KEYS = ("image", "command", "entrypoint", "env", "workdir", "user", "networks", "volumes", "restart",
               "health", "constraints", "resources")
SERVICE_KEYS = (*COMMON_KEYS, "replicas", "mode", "ports", "update", "volume_policy")
VOLUME_POLICIES = ("stay", "move-empty")
CONTAINER_KEYS = (*COMMON_KEYS, "ports", "host")
HEALTH_KEYS = ("cmd", "interval", "timeout", "retries", "start_period")
RESOURCE_KEYS = ("memory", "cpus", "pids")
UPDATE_KEYS = ("parallelism", "order", "monitor", "failure_action", "drain")


class StackError(CantainerError):
    """The stack file is missing, unreadable, not TOML, or breaks the schema (one line, with FILE:LINE)."""

    exit_code = 1


class _Source:
    def __init__(self, path: Path, text: str | None) -> None:
        self.path = path
        self.text = text

    def error(self, key_path: Sequence[str | int], problem: str, hint: str) -> StackError:
        line = None
        if self.text is not None:
            for length in range(len(key_path), 0, -1):  # a missing key: its table's header
                line = find_key_line(self.text, tuple(key_path[:length]))
                if line:
                    break
        where = f"{self.path}:{line}" if line else str(self.path)
        key = format_key_path(key_path) if key_path else ""
        return StackError(" ".join(f"{where}: {key + ': ' if key else ''}{problem}".splitlines()),
                          " ".join(hint.splitlines()))


# ---------------------------------------------------------------------------------------- reading


def load_stack(path: str | Path, hosts: Sequence[str] | None = None) -> dict:
    """Read and check the stack file at *path*; *hosts*: the inventory's host names (a host the file
    names must be one of them). StackError on any problem."""
    named = Path(path)
    file = named.expanduser()
    if file.is_dir():
        raise StackError(f"{named}: is a directory, not a stack file", "pass the TOML file itself")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise StackError(f"{named}: no such stack file", f"check the path; {EXAMPLE_HINT}") from None
    except OSError as error:
        raise StackError(f"{named}: cannot be read: {error.strerror or error}", "check the path and its mode") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise StackError(f"{named}:{line}: not valid UTF-8 text", "save the file as UTF-8") from None
    return parse_stack(text, named, hosts)


_DECODE_POSITION = re.compile(
    r"(?P<reason>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)")


def parse_stack(text: str, path: Path, hosts: Sequence[str] | None = None) -> dict:
    if not text.strip():
        raise StackError(f"{path}: the file is empty", f'start it with name = "myapp"; {EXAMPLE_HINT}')
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = _DECODE_POSITION.match(str(error))
        reason = match["reason"] if match else str(error)
        line = match["line"] if match and match["line"] else None
        where = f"{path}:{line}" if line else str(path)
        raise StackError(f"{where}: invalid TOML: {reason[:1].lower()}{reason[1:]}",
                         "strings need double quotes, tables are [services.NAME], arrays [\"a\", \"b\"]") from None
    return check_document(document, _Source(path, text), hosts)


def check_document(document: dict, source: _Source | None = None, hosts: Sequence[str] | None = None) -> dict:
    """The checked stack of a parsed TOML document (the planner's fixtures use it without a file)."""
    source = source or _Source(Path("stack.toml"), None)
    return _Reader(source, hosts).stack(document)


class _Reader:
    def __init__(self, source: _Source, hosts: Sequence[str] | None) -> None:
        self.source = source
        self.hosts = list(hosts) if hosts is not None else None
        self.err = source.error

    # -- generic ------------------------------------------------------------------------------------
    def keys(self, path: tuple, table: Any, allowed: Sequence[str], what: str) -> dict:
        if not isinstance(table, dict):
            raise self.err(path, f"expected a table, got {describe(table)}",
                           f"write it as [{format_key_path(path)}] with key = value lines; {EXAMPLE_HINT}")
        for key in table:
            if key not in allowed:
                raise self.err((*path, key), f"unknown key{did_you_mean(key, allowed)}",
                               f"{what} takes {', '.join(allowed)}")
        return table

    def typed(self, path: tuple, value: Any, types: tuple, example: str) -> Any:
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = {str: "a string", int: "an integer", bool: "true or false", float: "a number",
                     list: "an array", dict: "a table"}
            wanted = " or ".join(names[t] for t in types if t in names)
            raise self.err(path, f"expected {wanted}, got {describe(value)}", f"write it like {path[-1]} = {example}")
        return value

    def string(self, path: tuple, value: Any, example: str, empty: bool = False) -> str:
        text = self.typed(path, value, (str,), example)
        if not text and not empty:
            raise self.err(path, "is empty", f"write it like {path[-1]} = {example}, or leave it out")
        if "\x00" in text:
            raise self.err(path, "contains a NUL character", "remove it")
        return text

    def strings(self, path: tuple, value: Any, example: str) -> list[str]:
        items = self.typed(path, value, (list,), example)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise self.err(path, f"item {index} is {describe(item)}, not a string", f"write it like {example}")
        return list(items)

    def name(self, path: tuple, name: str, what: str, limit: int | None = None) -> str:
        """An object's name in the file; *limit*: of its name in the cluster, STACK-NAME."""
        if not OBJECT_NAME_RE.fullmatch(name):
            raise self.err(path, f"{what} name {quote(name)} is invalid",
                           "use 1-32 lowercase letters, digits and hyphens, starting and ending with a letter or digit")
        full = f"{self.stack_name}-{name}"
        if limit is not None and len(full) > limit:
            raise self.err(path, f"{what} name {quote(name)} is too long in this stack: {full} has {len(full)} "
                                 "characters", f"a {what}'s name in the cluster has at most {limit} characters; "
                                               "shorten the stack's name or this one")
        return name

    def duration(self, path: tuple, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.err(path, f"expected a duration, got {describe(value)}", f'write it like {path[-1]} = "5s"')
        if isinstance(value, str):
            match = DURATION_RE.fullmatch(value.strip())
            if not value.strip() or not match or not any(match.groups()):
                raise self.err(path, f"{quote(value)} is not a duration", f'write it like {path[-1]} = "1m30s"'
                                                                           ' (h, m, s, ms) or a number of seconds')
            hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
            value = hours * 3600 + minutes * 60 + seconds + millis / 1000
        if not math.isfinite(value) or value < 0 or value > 86400:
            raise self.err(path, f"{value} is not a duration from 0 to 24h", f'write it like {path[-1]} = "5s"')
        return float(value)

    # -- the stack -------------------------------------------------------------------------------------
    def stack(self, document: dict) -> dict:
        self.keys((), document, TOP_KEYS, "a stack file")
        if "name" not in document:
            raise self.err((), "the stack has no name", 'add name = "myapp" at the top (its objects are named '
                                                          'after it, so two stacks can live side by side)')
        name = self.string(("name",), document["name"], '"myapp"')
        if not STACK_NAME_RE.match(name):
            raise self.err(("name",), f"stack name {quote(name)} is invalid",
                           "use 1-24 lowercase letters, digits and hyphens, starting and ending with a letter or digit")
        self.stack_name = name
        networks = self.section("networks", document, self.network)
        self._check_overlaps(networks)
        volumes = self.section("volumes", document, self.volume)
        self.declared = {"networks": networks, "volumes": volumes}
        services = self.section("services", document, self.service)
        containers = self.section("containers", document, self.container)
        for both in sorted(set(services) & set(containers)):
            raise self.err(("containers", both), f"{both} is both a service and a container",
                           "give the container another name")
        used = {m["source"] for spec in (*services.values(), *containers.values()) for m in spec["mounts"] or []
                if m["type"] == M.VOLUME}
        for volume, declared in volumes.items():
            if volume not in used and declared["host"] is None:
                raise self.err(("volumes", volume), "the volume is used by nothing and has no host",
                               'mount it in a service or container, or pin it with host = "h1"')
        return {"name": name, "networks": networks, "volumes": volumes, "services": services,
                "containers": containers}

    def section(self, key: str, document: dict, read: Callable[[tuple, str, Any], dict]) -> dict:
        if key not in document:
            return {}
        table = self.typed((key,), document[key], (dict,), "a table: [" + key + ".NAME]")
        return {name: read((key, name), name, value) for name, value in table.items()}

    def network(self, path: tuple, name: str, value: Any) -> dict:
        self.name(path, name, "network")
        table = self.keys(path, value, NETWORK_KEYS, "a network")
        if "subnet" not in table:
            raise self.err(path, "the network has no subnet", 'add subnet = "10.20.0.0/24"')
        subnet = self.string((*path, "subnet"), table["subnet"], '"10.20.0.0/24"')
        try:
            network = ipam.parse_cidr(subnet)
            ipam.check_unicast(network)
        except StateError as error:
            raise self.err((*path, "subnet"), str(error), 'write it like subnet = "10.20.0.0/24"') from None
        internal = table.get("internal")
        if internal is not None:
            self.typed((*path, "internal"), internal, (bool,), "true")
        return {"subnet": str(network), "internal": internal}

    def _check_overlaps(self, networks: dict) -> None:
        seen: list[tuple[str, ipaddress.IPv4Network]] = []
        for name, network in networks.items():
            cidr = ipaddress.ip_network(network["subnet"])
            for other, other_cidr in seen:
                if cidr.overlaps(other_cidr):
                    raise self.err(("networks", name, "subnet"), f"{cidr} overlaps network {other} ({other_cidr})",
                                   "give each network its own subnet")
            seen.append((name, cidr))

    def volume(self, path: tuple, name: str, value: Any) -> dict:
        self.name(path, name, "volume")
        table = self.keys(path, value, VOLUME_KEYS, "a volume")
        host = None
        if "host" in table:
            host = self.host((*path, "host"), table["host"])
        return {"host": host}

    def host(self, path: tuple, value: Any) -> str:
        host = self.string(path, value, '"h1"')
        if self.hosts is not None and host not in self.hosts:
            raise self.err(path, f"host {quote(host)} is not in the inventory{did_you_mean(host, self.hosts)}",
                           f"known hosts: {', '.join(self.hosts)}")
        return host

    # -- services and containers --------------------------------------------------------------------------
    def service(self, path: tuple, name: str, value: Any) -> dict:
        self.name(path, name, "service", SERVICE_NAME_MAX)
        table = self.keys(path, value, SERVICE_KEYS, "a service")
        spec = self.common(path, table)
        mode = table.get("mode")
        if mode is not None:
            mode = self.string((*path, "mode"), mode, '"replicated"')
            if mode not in MODES:
                raise self.err((*path, "mode"), f"{quote(mode)} is not a mode{did_you_mean(mode, MODES)}",
                               "use replicated (replicas copies) or global (one on every host)")
        replicas = table.get("replicas")
        if replicas is not None:
            replicas = self.typed((*path, "replicas"), replicas, (int,), "3")
            if mode == "global":
                raise self.err((*path, "replicas"), "a global service has no replicas (one runs on every host)",
                               'remove replicas, or set mode = "replicated"')
            if not 0 <= replicas <= MAX_REPLICAS:
                raise self.err((*path, "replicas"), f"{replicas} is not a number of replicas",
                               f"use 0 to {MAX_REPLICAS}")
        ports = self.ports(path, table)
        update = None
        if "update" in table:
            update = self.update((*path, "update"), table["update"])
        volume_policy = None
        if "volume_policy" in table:
            volume_policy = self.string((*path, "volume_policy"), table["volume_policy"], '"stay"')
            if volume_policy not in VOLUME_POLICIES:
                raise self.err((*path, "volume_policy"), f"{quote(volume_policy)} is not a volume policy"
                                                         f"{did_you_mean(volume_policy, VOLUME_POLICIES)}",
                               "use stay (a task waits for its volume's host) or move-empty (an empty volume may "
                               "be made again where its task moves)")
        return {**spec, "mode": mode, "replicas": replicas, "ports": ports, "update": update,
                "volume_policy": volume_policy}

    def container(self, path: tuple, name: str, value: Any) -> dict:
        self.name(path, name, "container", CONTAINER_NAME_MAX)
        table = self.keys(path, value, CONTAINER_KEYS, "a container")
        spec = self.common(path, table)
        host = self.host((*path, "host"), table["host"]) if "host" in table else None
        for mount in spec["mounts"] or []:
            pinned = self.declared["volumes"].get(mount["source"], {}).get("host") if mount["type"] == M.VOLUME \
                else None
            if pinned and host and pinned != host:
                raise self.err((*path, "host"), f"the container runs on {host}, but its volume {mount['source']} "
                                                f"lives on {pinned}", "run it on its volume's host, or leave host out")
        ports = self.ports(path, table)
        return {**spec, **({"ports": ports} if ports is not None else {}), "host": host}

    def common(self, path: tuple, table: dict) -> dict:
        spec: dict[str, Any] = {"image": None, "command": None, "entrypoint": None, "env": None, "workdir": None,
                                "user": None, "network": None, "mounts": None, "restart": None, "health": None,
                                "constraints": None, "resources": None}
        if "image" in table:
            spec["image"] = self.string((*path, "image"), table["image"], '"alpine"')
        if "command" in table:
            spec["command"] = self.command((*path, "command"), table["command"])
        if "entrypoint" in table:
            spec["entrypoint"] = self.string((*path, "entrypoint"), table["entrypoint"], '"/app/start"', empty=True)
        if "env" in table:
            spec["env"] = self.env((*path, "env"), table["env"])
        if "workdir" in table:
            workdir = self.string((*path, "workdir"), table["workdir"], '"/app"')
            if not workdir.startswith("/"):
                raise self.err((*path, "workdir"), f"{quote(workdir)} is not an absolute path",
                               f'write it like workdir = "/{workdir.lstrip("./")}"')
            spec["workdir"] = workdir
        if "user" in table:
            user = self.string((*path, "user"), table["user"], '"1000:1000"')
            if re.search(r"\s", user) or user.count(":") > 1:
                raise self.err((*path, "user"), f"{quote(user)} is not NAME|UID[:GROUP|GID]", 'write it like '
                                                                                             'user = "1000:1000"')
            spec["user"] = user
        spec["network"] = self.network_of(path, table)
        if "volumes" in table:
            spec["mounts"] = self.mounts((*path, "volumes"), table["volumes"])
        if "restart" in table:
            restart = self.string((*path, "restart"), table["restart"], '"on-failure:3"')
            policy, sep, count = restart.partition(":")
            if policy not in RESTART_POLICIES or (sep and (policy != "on-failure" or not count.isdigit()
                                                          or not 0 < int(count) <= 1_000_000)):
                raise self.err((*path, "restart"), f"restart policy {quote(restart)} is not understood",
                               "use no, on-failure, on-failure:MAX, always or unless-stopped")
            spec["restart"] = restart
        if "health" in table:
            spec["health"] = self.health((*path, "health"), table["health"])
        if "constraints" in table:
            constraints = self.strings((*path, "constraints"), table["constraints"], '["label.zone==a"]')
            for constraint in constraints:
                if not CONSTRAINT_RE.fullmatch(constraint):
                    raise self.err((*path, "constraints"), f"constraint {quote(constraint)} is not understood",
                                   "write host==NAME, host!=NAME, label.KEY==VALUE or label.KEY!=VALUE")
            spec["constraints"] = constraints
        if "resources" in table:
            spec["resources"] = self.resources((*path, "resources"), table["resources"])
        return spec

    def command(self, path: tuple, value: Any) -> list[str]:
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as error:
                raise self.err(path, f"cannot be split into words: {error}",
                               'close the quote, or write it as an array: ["sh", "-c", "…"]') from None
        else:
            argv = self.strings(path, value, '["sh", "-c", "exec ./app"]')
        if not argv:
            raise self.err(path, "is empty", "give the command, or leave it out to run the image's")
        return argv

    def env(self, path: tuple, value: Any) -> dict[str, str]:
        table = self.typed(path, value, (dict,), '{ LOG = "debug" }')
        env = {}
        for key, item in table.items():
            if not ENV_KEY_RE.fullmatch(key):
                raise self.err((*path, key), f"environment variable name {quote(key)} is invalid",
                               "use letters, digits and _, not starting with a digit")
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, (int, float)):
                item = str(item)
            elif not isinstance(item, str):
                raise self.err((*path, key), f"expected a string, got {describe(item)}", f'write it like {key} = "…"')
            env[key] = item
        return env

    def ports(self, path: tuple, table: dict) -> list[str] | None:
        """Published ports in docker's -p syntax (cluster/ports.py: the same parser and checks as
        `run -p`); kept as written, so a plan compares what the file says. Refused on an internal
        network (it has no published ports)."""
        if "ports" not in table:
            return None
        items = self.strings((*path, "ports"), table["ports"], '["8080:80"]')
        try:
            P.check([P.parse(item) for item in items])
        except P.PortError as error:
            raise self.err((*path, "ports"), str(error).split(" — ")[0].replace("-p ", "published port ", 1),
                           'write it like ports = ["8080:80"], "127.0.0.1:8080:80" or "5353:53/udp" (each host '
                           "port once)") from None
        network = self.declared["networks"].get(self.network_of(path, table) or "")
        if items and network and network.get("internal"):
            raise self.err((*path, "ports"), "an internal network has no published ports",
                           "drop ports, or put it on a network without internal = true")
        return items

    def network_of(self, path: tuple, table: dict) -> str | None:
        declared = self.declared["networks"]
        if "networks" not in table:
            if len(declared) == 1:
                return next(iter(declared))
            raise self.err(path, "no network given" if declared else "the stack has no network",
                           'add networks = ["NAME"] naming one of the stack\'s [networks.NAME]' if declared else
                           'declare one: [networks.NAME] with subnet = "10.20.0.0/24"')
        names = self.strings((*path, "networks"), table["networks"], '["front"]')
        if len(names) != 1:
            raise self.err((*path, "networks"), f"{len(names)} networks given: a container joins one network",
                           'name exactly one, like networks = ["front"]')
        if names[0] not in declared:
            raise self.err((*path, "networks"), f"network {quote(names[0])} is not declared in this stack"
                                                f"{did_you_mean(names[0], list(declared))}",
                           f"declare it as [networks.{names[0]}] with a subnet, or use one of: "
                           f"{', '.join(declared) or 'none declared'}")
        return names[0]

    def mounts(self, path: tuple, value: Any) -> list[dict]:
        items = self.strings(path, value, '["data:/var/lib/app", "/srv/conf:/etc/app:ro"]')
        parsed = []
        for item in items:
            try:
                mount = M.parse(item, f"{item!r}")
            except M.MountError as error:
                problem, _, hint = str(error).partition(" — ")
                raise self.err(path, problem, hint or 'write volumes like ["NAME:/path", "/host/path:/path:ro"]') \
                    from None
            if mount["type"] == M.VOLUME and mount["source"] not in self.declared["volumes"]:
                raise self.err(path, f"volume {quote(mount['source'])} is not declared in this stack"
                                     f"{did_you_mean(mount['source'], list(self.declared['volumes']))}",
                               f"declare it as [volumes.{mount['source']}], or bind a host path (/srv/…:/path)")
            parsed.append(mount)
        try:
            return M.check_all(parsed)
        except M.MountError as error:
            problem, _, hint = str(error).partition(" — ")
            raise self.err(path, problem, hint or "give each mount its own target, each volume once") from None

    def health(self, path: tuple, value: Any) -> dict:
        if value is False:
            return {"disable": True}
        table = self.keys(path, value, HEALTH_KEYS, "a health check")
        if "cmd" not in table:
            raise self.err(path, "the health check has no cmd",
                           'add cmd = "wget -qO- localhost/health", or health = false to turn the image\'s off')
        health: dict[str, Any] = {"cmd": self.string((*path, "cmd"), table["cmd"], '"wget -qO- localhost"')}
        for key in ("interval", "timeout", "start_period"):
            if key in table:
                health[key] = self.duration((*path, key), table[key])
                if key != "start_period" and health[key] < 0.1:
                    raise self.err((*path, key), f"{health[key]:g} s is too short", "give at least 0.1s")
        if "retries" in table:
            retries = self.typed((*path, "retries"), table["retries"], (int,), "3")
            if not 1 <= retries <= 1000:
                raise self.err((*path, "retries"), f"{retries} retries", "use 1 to 1000")
            health["retries"] = retries
        return health

    def resources(self, path: tuple, value: Any) -> dict:
        table = self.keys(path, value, RESOURCE_KEYS, "resources")
        out: dict[str, Any] = {}
        if "memory" in table:
            memory = table["memory"]
            if isinstance(memory, str):
                match = SIZE_RE.fullmatch(memory.strip())
                if not match:
                    raise self.err((*path, "memory"), f"{quote(memory)} is not a size",
                                   'write it like memory = "256m" (k, m, g) or a number of bytes')
                memory = int(float(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " "))
            elif isinstance(memory, bool) or not isinstance(memory, int):
                raise self.err((*path, "memory"), f"expected a size, got {describe(memory)}",
                               'write it like memory = "256m"')
            if memory < 6 << 20:
                raise self.err((*path, "memory"), f"{memory} bytes is below the 6 MiB minimum", 'give at least "6m"')
            out["memory"] = memory
        if "cpus" in table:
            cpus = self.typed((*path, "cpus"), table["cpus"], (int, float), "0.5")
            if not math.isfinite(cpus) or cpus < 0.01:
                raise self.err((*path, "cpus"), f"{cpus} is not a CPU limit", "give at least 0.01, like cpus = 0.5")
            out["cpus"] = float(cpus)
        if "pids" in table:
            pids = self.typed((*path, "pids"), table["pids"], (int,), "256")
            if not 1 <= pids <= 4194304:
                raise self.err((*path, "pids"), f"{pids} is not a number of processes", "use 1 to 4194304")
            out["pids"] = pids
        return out

    def update(self, path: tuple, value: Any) -> dict:
        table = self.keys(path, value, UPDATE_KEYS, "an update policy")
        out: dict[str, Any] = {}
        if "parallelism" in table:
            parallelism = self.typed((*path, "parallelism"), table["parallelism"], (int,), "1")
            if not 0 <= parallelism <= MAX_REPLICAS:
                raise self.err((*path, "parallelism"), f"{parallelism} tasks at a time", "use 0 (all) or more")
            out["parallelism"] = parallelism
        for key, choices in (("order", UPDATE_ORDERS), ("failure_action", FAILURE_ACTIONS)):
            if key in table:
                text = self.string((*path, key), table[key], f'"{choices[0]}"')
                if text not in choices:
                    raise self.err((*path, key), f"{quote(text)} is not one of {', '.join(choices)}"
                                                 f"{did_you_mean(text, choices)}", f"use {' or '.join(choices)}")
                out[key] = text
        for key in ("monitor", "drain"):
            if key in table:
                out[key] = self.duration((*path, key), table[key])
        return out
