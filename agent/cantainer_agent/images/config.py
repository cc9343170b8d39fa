"""The image config (what docker calls ``.Config``) and how `run`'s options override it, docker's way.

``ImageConfig.parse(bytes)`` reads Entrypoint, Cmd, Env, WorkingDir, User, StopSignal, ExposedPorts,
Healthcheck, the platform and the layer diff_ids of an OCI or Docker image config. ``effective(config, …)`` is the
container docker would run: a command after ``--`` replaces Cmd; ``--entrypoint`` replaces Entrypoint
*and* drops the image's Cmd; ``-e`` overrides Env by name; ``-w`` and ``--user`` replace WorkingDir and
User. An image without a command and a `run` without one is an error, as in docker.
``effective_health`` merges the image's HEALTHCHECK with `--health-*` options the same way.
"""
from __future__ import annotations

import json
import signal
from dataclasses import dataclass

from .errors import ImageSourceError
from .manifest import MAX_CONFIG
from .reference import DIGEST_RE

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    user: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    os: str = "linux"
    architecture: str = ""
    variant: str | None = None
    diff_ids: tuple[str, ...] = ()
    # HEALTHCHECK: (test, interval, timeout, start_period, retries); durations in seconds, 0: docker's default
    healthcheck: tuple | None = None

    @classmethod
    def parse(cls, body: bytes, where: str = "image config") -> "ImageConfig":
        if len(body) > MAX_CONFIG:
            raise ImageSourceError(f"{where}: larger than {MAX_CONFIG // (1 << 20)} MiB")
        try:
            document = json.loads(body)
        except ValueError:
            raise ImageSourceError(f"{where}: not valid JSON") from None
        if not isinstance(document, dict):
            raise ImageSourceError(f"{where}: not a JSON object")
        return cls.from_document(document, where)

    @classmethod
    def from_document(cls, document: dict, where: str = "image config") -> "ImageConfig":
        inner = document.get("config") or {}
        if not isinstance(inner, dict):
            raise ImageSourceError(f"{where}: config is not an object")
        rootfs = document.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) and DIGEST_RE.fullmatch(d) for d in diff_ids):
            raise ImageSourceError(f"{where}: rootfs.diff_ids must list sha256 digests")
        env = []
        for item in _strings(where, "Env", inner.get("Env")) or ():
            key, sep, value = item.partition("=")
            if sep and key:
                env.append((key, value))
        ports = inner.get("ExposedPorts") or {}
        if not isinstance(ports, dict):
            raise ImageSourceError(f"{where}: ExposedPorts is not an object")
        variant = document.get("variant")
        return cls(
            entrypoint=_strings(where, "Entrypoint", inner.get("Entrypoint")),
            cmd=_strings(where, "Cmd", inner.get("Cmd")),
            env=tuple(env),
            workdir=_string(where, "WorkingDir", inner.get("WorkingDir")),
            user=_string(where, "User", inner.get("User")),
            stop_signal=_string(where, "StopSignal", inner.get("StopSignal")),
            exposed_ports=tuple(sorted(str(p) for p in ports)),
            os=_string(where, "os", document.get("os")) or "linux",
            architecture=_string(where, "architecture", document.get("architecture")),
            variant=variant if isinstance(variant, str) and variant else None,
            diff_ids=tuple(diff_ids),
            healthcheck=_healthcheck(where, inner.get("Healthcheck")),
        )

    def to_dict(self) -> dict:
        """A compact JSON form (what travels to the agent with `container.run`)."""
        return {"entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
                "cmd": list(self.cmd) if self.cmd is not None else None, "env": [list(p) for p in self.env],
                "workdir": self.workdir, "user": self.user, "stop_signal": self.stop_signal,
                "exposed_ports": list(self.exposed_ports), "os": self.os, "architecture": self.architecture,
                "variant": self.variant, "diff_ids": list(self.diff_ids),
                "healthcheck": _health_to_dict(self.healthcheck)}

    @classmethod
    def from_dict(cls, data: dict) -> "ImageConfig":
        if not isinstance(data, dict):
            raise ImageSourceError("image config must be an object")
        try:
            return cls(
                entrypoint=_strings("image config", "entrypoint", data.get("entrypoint")),
                cmd=_strings("image config", "cmd", data.get("cmd")),
                env=tuple((str(k), str(v)) for k, v in data.get("env") or ()),
                workdir=_string("image config", "workdir", data.get("workdir")),
                user=_string("image config", "user", data.get("user")),
                stop_signal=_string("image config", "stop_signal", data.get("stop_signal")),
                exposed_ports=tuple(str(p) for p in data.get("exposed_ports") or ()),
                os=str(data.get("os") or "linux"), architecture=str(data.get("architecture") or ""),
                variant=data.get("variant") or None,
                diff_ids=tuple(str(d) for d in data.get("diff_ids") or ()),
                healthcheck=_health_from_dict(data.get("healthcheck")),
            )
        except (TypeError, ValueError, KeyError):
            raise ImageSourceError("image config is malformed") from None


NANOSECONDS = 1e9


def _healthcheck(where: str, value: object) -> tuple | None:
    """docker's Healthcheck {Test, Interval, Timeout, StartPeriod, Retries} (durations in ns)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ImageSourceError(f"{where}: Healthcheck is not an object")
    test = _strings(where, "Healthcheck.Test", value.get("Test"))
    if not test:
        return None  # empty: inherit (nothing to inherit here)
    numbers = []
    for key in ("Interval", "Timeout", "StartPeriod", "Retries"):
        item = value.get(key) or 0
        if type(item) is not int or item < 0:
            raise ImageSourceError(f"{where}: Healthcheck.{key} must be a non-negative integer")
        numbers.append(item)
    interval, timeout, start, retries = numbers
    return (test, interval / NANOSECONDS, timeout / NANOSECONDS, start / NANOSECONDS, retries)


def _health_to_dict(health: tuple | None) -> dict | None:
    if health is None:
        return None
    test, interval, timeout, start, retries = health
    return {"test": list(test), "interval": interval, "timeout": timeout, "start_period": start, "retries": retries}


def _health_from_dict(data: object) -> tuple | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("healthcheck")
    return (tuple(str(t) for t in data["test"]), float(data["interval"]), float(data["timeout"]),
            float(data["start_period"]), int(data["retries"]))


def effective_health(config: ImageConfig, options: dict | None) -> dict | None:
    """The health check of a container: `--health-cmd` (``options["test"]``) or the image's
    HEALTHCHECK, its timings overridden by the options given; ``options["disable"]`` (or a NONE
    test) means none. Unset timings stay absent: the cluster applies docker's defaults."""
    options = dict(options or {})
    if options.pop("disable", False):
        return None
    test = options.pop("test", None)
    base: dict = {}
    if config.healthcheck is not None:
        image_test, interval, timeout, start, retries = config.healthcheck
        base = {"test": list(image_test), **{k: v for k, v in (("interval", interval), ("timeout", timeout),
                                                                ("start_period", start), ("retries", retries)) if v}}
    if test is not None:
        base["test"] = list(test)
    if not base.get("test") or base["test"][0] == "NONE":
        return None
    base.update({key: value for key, value in options.items() if value is not None})
    return base


def _strings(where: str, key: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageSourceError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _string(where: str, key: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageSourceError(f"{where}: {key} must be a string")
    return value


def parse_signal(text: str | int) -> int:
    """'SIGQUIT', 'QUIT', '3' or 3 -> 3 (docker's StopSignal forms); ValueError if unknown."""
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        name = str(text).strip().upper()
        if name.isdigit():
            number = int(name)
        else:
            name = name if name.startswith("SIG") else f"SIG{name}"
            if name.startswith("SIGRTMIN+") and name[9:].isdigit():
                number = int(signal.SIGRTMIN) + int(name[9:])
            else:
                try:
                    number = int(getattr(signal.Signals, name))
                except AttributeError:
                    raise ValueError(f"unknown signal {text!r}") from None
    if not 1 <= number <= int(signal.SIGRTMAX):
        raise ValueError(f"signal {text!r} is out of range")
    return number


@dataclass(frozen=True)
class RunConfig:
    """What the container runs, after the image config and `run`'s options are merged."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: str
    stop_signal: int
    exposed_ports: tuple[str, ...]


class NoCommand(ImageSourceError):
    pass


def effective(config: ImageConfig, command: list[str] | None = None, entrypoint: str | None = None,
              env: dict[str, str] | None = None, workdir: str | None = None, user: str | None = None,
              image: str = "the image") -> RunConfig:
    """docker run's merge. *entrypoint* "" clears the image's; None keeps it. *command* None or []
    keeps the image's Cmd (unless *entrypoint* is given, which drops it)."""
    if entrypoint is not None:
        argv = ([entrypoint] if entrypoint else []) + list(command or [])
    else:
        argv = list(config.entrypoint or []) + (list(command) if command else list(config.cmd or []))
    if not argv:
        raise NoCommand(f"{image} has no Entrypoint or Cmd: give the command after --")
    merged = dict(config.env)
    merged.setdefault("PATH", DEFAULT_PATH)
    merged.update(env or {})
    try:
        stop = parse_signal(config.stop_signal) if config.stop_signal else int(signal.SIGTERM)
    except ValueError as error:
        raise ImageSourceError(f"{image}: StopSignal {config.stop_signal!r}: {error}") from None
    chosen_workdir = workdir or config.workdir or "/"
    if not chosen_workdir.startswith("/"):
        chosen_workdir = "/" + chosen_workdir  # docker resolves a relative WorkingDir against /
    return RunConfig(argv=tuple(argv), env=tuple(merged.items()), workdir=chosen_workdir,
                     user=user if user is not None else config.user, stop_signal=stop,
                     exposed_ports=config.exposed_ports)
