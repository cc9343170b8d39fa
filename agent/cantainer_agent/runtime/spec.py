"""What to run: an immutable, validated description of one container.

``ContainerSpec`` is plain data (tuples, str, int, float): hashable, picklable and convertible to
and from JSON with ``to_dict``/``from_dict``. Construction validates every field and raises
``SpecError`` with one line naming the field.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .. import capabilities, mounts
from .errors import SpecError

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# docker's container-name alphabet; also a valid hostname for sethostname (<= 64 bytes)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")
ENV_KEY_RE = re.compile(r"[^=\x00]+")
USER_RE = re.compile(r"([^:\s]+(:[^:\s]+)?)?")
MAX_SIGNAL = 64

MIN_MEMORY = 6 * 1024 * 1024  # docker's minimum; smaller limits OOM-kill the first exec
MIN_CPUS = 0.01  # CFS quota of 1 ms per 100 ms period, the kernel's minimum
MAX_PIDS = 4194304
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SECCOMP_PROFILES = ("default", "unconfined")  # docker's default profile (seccomp.py), or none

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_bytes(text: str) -> int:
    """'512m' -> 536870912 (docker's units: b, k, m, g, t; binary multiples; optional 'b'/'ib')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*", str(text).lower())
    if not match:
        raise SpecError(f"invalid size {text!r}: use a number with an optional unit b, k, m, g (e.g. 256m)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means unlimited."""

    memory: int | None = None  # bytes (no extra swap is granted)
    cpus: float | None = None  # CPUs' worth of CFS quota, e.g. 0.5
    pids: int | None = None  # max number of tasks

    def __post_init__(self) -> None:
        if self.memory is not None:
            if isinstance(self.memory, bool) or not isinstance(self.memory, int):
                raise SpecError(f"limits.memory must be an integer number of bytes, not {self.memory!r}")
            if self.memory < MIN_MEMORY:
                raise SpecError(f"limits.memory {self.memory} is below the minimum of {MIN_MEMORY} bytes (6 MiB)")
        if self.cpus is not None:
            if isinstance(self.cpus, bool) or not isinstance(self.cpus, (int, float)) or not math.isfinite(self.cpus):
                raise SpecError(f"limits.cpus must be a number, not {self.cpus!r}")
            if self.cpus < MIN_CPUS:
                raise SpecError(f"limits.cpus {self.cpus} is below the minimum of {MIN_CPUS}")
            object.__setattr__(self, "cpus", float(self.cpus))
        if self.pids is not None:
            if isinstance(self.pids, bool) or not isinstance(self.pids, int):
                raise SpecError(f"limits.pids must be an integer, not {self.pids!r}")
            if not 1 <= self.pids <= MAX_PIDS:
                raise SpecError(f"limits.pids {self.pids} is out of range 1..{MAX_PIDS}")

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "cpus": self.cpus, "pids": self.pids}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Limits":
        data = data or {}
        unknown = set(data) - {"memory", "cpus", "pids"}
        if unknown:
            raise SpecError(f"unknown limits field(s): {', '.join(sorted(unknown))}")
        return cls(data.get("memory"), data.get("cpus"), data.get("pids"))


def _no_nul(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{what} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise SpecError(f"{what} contains a NUL character")
    return value


def _normalize_env(env: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = env.items() if isinstance(env, Mapping) else env
    seen: dict[str, str] = {}
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            raise SpecError(f"env entry {item!r} is not a (name, value) pair") from None
        _no_nul(key, "env name")
        if not ENV_KEY_RE.fullmatch(key):
            raise SpecError(f"env name {key!r} is invalid (empty or contains '=')")
        seen[key] = _no_nul(value, f"env {key}")
    return tuple(seen.items())


def _normalize_hosts(hosts: Iterable[Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for entry in hosts:
        try:
            address, names = entry
        except (TypeError, ValueError):
            raise SpecError(f"hosts entry {entry!r} is not an (address, names) pair") from None
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise SpecError(f"hosts entry {entry!r}: {address!r} is not an IP address") from None
        names = tuple(names.split()) if isinstance(names, str) else tuple(names)
        if not names:
            raise SpecError(f"hosts entry for {address} has no names")
        for name in names:
            if not isinstance(name, str) or not HOSTNAME_RE.fullmatch(name):
                raise SpecError(f"hosts entry for {address}: {name!r} is not a valid host name")
        out.append((address, names))
    return tuple(out)


@dataclass(frozen=True)
class Mount:
    """A mount of the container (mounts.py): a named volume's directory on this host, or a bind."""

    kind: str  # mounts.VOLUME or mounts.BIND
    source: str  # host path: the volume's directory (layout.volume_dir) or the bound path
    target: str  # path inside the container
    readonly: bool = False
    name: str = ""  # the volume's name (messages), "" for a bind

    def __post_init__(self) -> None:
        try:
            if self.kind == mounts.BIND:
                object.__setattr__(self, "source", mounts.check_bind_source(self.source))
            elif self.kind == mounts.VOLUME:
                mounts.check_volume_name(self.name)
                object.__setattr__(self, "source", mounts.check_volume_dir(self.source))
            else:
                raise mounts.MountError(f"mount kind {self.kind!r} must be volume or bind")
            object.__setattr__(self, "target", mounts.check_target(self.target))
        except mounts.MountError as error:
            raise SpecError(str(error)) from None
        if not isinstance(self.readonly, bool):
            raise SpecError("mount readonly must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "target": self.target, "readonly": self.readonly,
                "name": self.name}

    @classmethod
    def of(cls, value: Any) -> "Mount":
        if isinstance(value, Mount):
            return value
        if not isinstance(value, Mapping) or set(value) - {"kind", "source", "target", "readonly", "name"}:
            raise SpecError("a mount is {kind, source, target, readonly, name}")
        return cls(**value)


@dataclass(frozen=True)
class ContainerSpec:
    id: str
    name: str
    image: str  # sha256 (hex) of the image: its manifest's digest (or a single tarball's)
    command: tuple[str, ...] = ("/bin/sh",)
    env: tuple[tuple[str, str], ...] = ()  # accepts a dict; kept as ordered pairs
    workdir: str = "/"
    limits: Limits = field(default_factory=Limits)
    hosts: tuple[tuple[str, tuple[str, ...]], ...] = ()  # extra /etc/hosts lines: (ip, (names...))
    resolv_conf: str = ""  # full text of /etc/resolv.conf
    tty: bool = False  # PID 1 gets a pseudo-terminal as controlling terminal and stdio (docker -t)
    stdin: bool = False  # stdin stays open for attached clients (docker -i); a pipe unless tty
    user: str = ""  # docker's --user: name|uid[:group|gid], resolved in the image by init; "" = root
    stop_signal: int = 15  # what `stop` sends first (the image's StopSignal; SIGTERM by default)
    cap_add: tuple[str, ...] = ()  # capability names (capabilities.py), "ALL" allowed
    cap_drop: tuple[str, ...] = ()
    seccomp: str = "default"  # one of SECCOMP_PROFILES
    mounts: tuple[Mount, ...] = ()  # accepts dicts; volumes and binds, mounted nosuid,nodev

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ID_RE.fullmatch(self.id):
            raise SpecError(
                f"container id {self.id!r} is invalid: use 1-128 of A-Z a-z 0-9 _ . - (not starting with . _ -)"
            )
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise SpecError(
                f"container name {self.name!r} is invalid: use 1-63 of A-Z a-z 0-9 _ . - starting with a letter "
                f"or digit"
            )
        if not isinstance(self.image, str) or not SHA256_RE.fullmatch(self.image):
            raise SpecError(f"image {self.image!r} is not a sha256 (64 lowercase hex digits)")
        if isinstance(self.command, str) or not isinstance(self.command, Iterable):
            raise SpecError("command must be a list of strings (argv), not a shell string")
        command = tuple(_no_nul(arg, "command argument") for arg in self.command)
        if not command or not command[0]:
            raise SpecError("command is empty")
        object.__setattr__(self, "command", command)
        object.__setattr__(self, "env", _normalize_env(self.env))
        workdir = _no_nul(self.workdir, "workdir")
        if not workdir.startswith("/"):
            raise SpecError(f"workdir {workdir!r} must be an absolute path")
        limits = self.limits
        if isinstance(limits, Mapping):
            limits = Limits.from_dict(limits)
        elif not isinstance(limits, Limits):
            raise SpecError(f"limits must be a Limits, not {type(limits).__name__}")
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "hosts", _normalize_hosts(self.hosts))
        _no_nul(self.resolv_conf, "resolv_conf")
        for flag in ("tty", "stdin"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"{flag} must be true or false, not {getattr(self, flag)!r}")
        user = _no_nul(self.user, "user")
        if len(user) > 256 or not USER_RE.fullmatch(user):
            raise SpecError(f"user {user!r} is invalid: use NAME or UID, optionally :GROUP or :GID")
        if type(self.stop_signal) is not int or not 1 <= self.stop_signal <= MAX_SIGNAL:
            raise SpecError(f"stop_signal {self.stop_signal!r} is not a signal number (1-{MAX_SIGNAL})")
        for option in ("cap_add", "cap_drop"):
            names = getattr(self, option)
            if isinstance(names, str) or not isinstance(names, Iterable):
                raise SpecError(f"{option} must be a list of capability names")
            try:
                object.__setattr__(self, option, capabilities.normalize(names, option.replace("_", "-")))
            except capabilities.CapabilityError as exc:
                raise SpecError(str(exc)) from None
        if self.seccomp not in SECCOMP_PROFILES:
            raise SpecError(f"seccomp profile {self.seccomp!r} is not supported: use "
                            f"{' or '.join(SECCOMP_PROFILES)}")
        if isinstance(self.mounts, (str, Mapping)) or not isinstance(self.mounts, Iterable):
            raise SpecError("mounts must be a list of mounts")
        checked = tuple(Mount.of(m) for m in self.mounts)
        if len(checked) > mounts.MAX_MOUNTS:
            raise SpecError(f"a container has at most {mounts.MAX_MOUNTS} mounts")
        targets = [m.target for m in checked]
        if len(set(targets)) != len(targets):
            raise SpecError("two mounts go to the same target — give each its own")
        object.__setattr__(self, "mounts", checked)

    @property
    def attachable(self) -> bool:
        """Started held until a client attaches (or a timeout): see attach.py."""
        return self.tty or self.stdin

    @property
    def hostname(self) -> str:
        """The name, dots (service tasks: web.1) turned into hyphens: one valid DNS label."""
        return self.name.replace(".", "-")

    def capabilities(self, default: Iterable[str] = capabilities.DEFAULT_CAPS) -> tuple[str, ...]:
        """The container's capability set: *default* with ``cap_add`` and ``cap_drop`` applied."""
        return capabilities.effective(self.cap_add, self.cap_drop, default)

    def environ(self) -> dict[str, str]:
        """The command's environment: PATH and HOSTNAME defaults overridden by ``env``. HOME, unless
        set here, is the user's home from the image's /etc/passwd (init adds it, as docker does)."""
        base = {"PATH": DEFAULT_PATH, "HOSTNAME": self.hostname}
        base.update(self.env)
        return base

    def hosts_file(self) -> str:
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        lines += [f"{address}\t{' '.join(names)}" for address, names in self.hosts]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "command": list(self.command),
            "env": dict(self.env),
            "workdir": self.workdir,
            "limits": self.limits.to_dict(),
            "hosts": [[address, list(names)] for address, names in self.hosts],
            "resolv_conf": self.resolv_conf,
            "tty": self.tty,
            "stdin": self.stdin,
            "user": self.user,
            "stop_signal": self.stop_signal,
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "seccomp": self.seccomp,
            "mounts": [m.to_dict() for m in self.mounts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ContainerSpec":
        if not isinstance(data, Mapping):
            raise SpecError("container spec must be an object")
        known = {"id", "name", "image", "command", "env", "workdir", "limits", "hosts", "resolv_conf", "tty", "stdin",
                 "user", "stop_signal", "cap_add", "cap_drop", "seccomp", "mounts"}
        unknown = set(data) - known
        if unknown:
            raise SpecError(f"unknown container spec field(s): {', '.join(sorted(unknown))}")
        missing = {"id", "name", "image"} - set(data)
        if missing:
            raise SpecError(f"container spec lacks {', '.join(sorted(missing))}")
        kwargs = dict(data)
        kwargs["limits"] = Limits.from_dict(data.get("limits"))
        return cls(**kwargs)
