"""Validation of what a container or service asks of the cluster, beyond its command (pure).

Restart policy ``no | on-failure[:MAX] | always | unless-stopped`` → ``{"policy", "max"}``; health
check (docker's HEALTHCHECK: ``test`` as ``["CMD", …]`` or ``["CMD-SHELL", cmd]``, durations in
seconds) → ``{"test", "interval", "timeout", "retries", "start_period"}``; placement constraints
``host==H``, ``host!=H``, ``label.KEY==V``, ``label.KEY!=V``; published ports as
cluster/ports.py has them. Names: a container's name is a DNS label
(``[a-z0-9-]``, 1-63); a service task is ``SERVICE.SLOT`` (slot: a number, or a host name in global
mode) and a task being retired ``SERVICE.SLOT.ID`` (its 12 hex digits) — the dots are reserved for tasks, and inside the
container the hostname is the name with dots turned into hyphens (one valid DNS label).
Every refusal is a ``StateError`` saying what is wrong and how to write it.
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import StateError
from . import ports

LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
CONTAINER_NAME_RE = re.compile(rf"^{LABEL}$")
SERVICE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")  # room left for ".SLOT.ID"
SLOT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a number, or an inventory host name
TASK_NAME_RE = re.compile(rf"^({LABEL})\.([a-z0-9][a-z0-9-]{{0,62}})(?:\.([0-9a-f]{{12}}))?$")
MAX_NAME = 63

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
HEALTH_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}  # docker's
MIN_HEALTH_INTERVAL = 0.1
MAX_DURATION = 86400.0
LABEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CONSTRAINT_RE = re.compile(r"^(host|label\.([^=!\s]+))\s*(==|!=)\s*(\S+)$")
MAX_CONSTRAINTS = 32


def check_container_name(name: Any, task: bool = False) -> str:
    """A container's name: a DNS label; with *task*, also ``SERVICE.SLOT`` / ``SERVICE.SLOT.ID``."""
    if isinstance(name, str) and len(name) <= MAX_NAME and (
            CONTAINER_NAME_RE.match(name) or (task and TASK_NAME_RE.match(name))):
        return name
    if isinstance(name, str) and not task and TASK_NAME_RE.match(name) and len(name) <= MAX_NAME:
        raise StateError(f"container name {name!r} has a dot: names with dots belong to service tasks — "
                         "use 1-63 lowercase letters, digits and hyphens")
    raise StateError(f"container name {name!r} is invalid — use 1-63 lowercase letters, digits and "
                     "hyphens, starting and ending with a letter or digit")


def check_known_name(name: Any) -> str:
    """Any name a container may have (looking one up: plain or task)."""
    return check_container_name(name, task=True)


def hostname_of(name: str) -> str:
    """The hostname inside a container: its name, dots (tasks) turned into hyphens."""
    return name.replace(".", "-")


def check_service_name(name: Any) -> str:
    if not isinstance(name, str) or not SERVICE_NAME_RE.match(name):
        raise StateError(f"service name {name!r} is invalid — use 1-32 lowercase letters, digits and hyphens, "
                         "starting and ending with a letter or digit")
    return name


def task_name(service: str, slot: str) -> str:
    name = f"{service}.{slot}"
    if len(name) > MAX_NAME or not SLOT_RE.match(slot):
        raise StateError(f"task name {name!r} is too long or invalid (at most {MAX_NAME} characters)")
    return name


def retired_name(service: str, slot: str, container_id: str) -> str:
    """A retired task's name, freeing ``SERVICE.SLOT`` for its successor: its id added (unique; a
    long slot is shortened to fit)."""
    room = MAX_NAME - len(service) - 14
    return f"{service}.{slot[:room]}.{container_id[:12]}"


# ----------------------------------------------------------------------------------- restart


def parse_restart(text: Any) -> dict:
    """``no``, ``on-failure``, ``on-failure:5``, ``always``, ``unless-stopped`` → {"policy", "max"}."""
    if isinstance(text, dict):
        return check_restart(text)
    if not isinstance(text, str):
        raise StateError("restart policy must be a string like on-failure:3")
    policy, sep, count = text.partition(":")
    if policy not in RESTART_POLICIES:
        raise StateError(f"restart policy {text!r} is unknown — use no, on-failure[:MAX], always or unless-stopped")
    if sep and policy != "on-failure":
        raise StateError(f"restart policy {text!r}: only on-failure takes a maximum (on-failure:3)")
    if sep and not (count.isdigit() and 0 < int(count) <= 1_000_000):
        raise StateError(f"restart policy {text!r}: the maximum must be a positive number of restarts")
    return {"policy": policy, "max": int(count) if sep else None}


def check_restart(value: Any) -> dict:
    if not isinstance(value, dict) or set(value) != {"policy", "max"} or value["policy"] not in RESTART_POLICIES:
        raise StateError("restart must be {policy, max} with policy no, on-failure, always or unless-stopped")
    limit = value["max"]
    if limit is not None and (type(limit) is not int or not 0 < limit <= 1_000_000 or value["policy"] != "on-failure"):
        raise StateError("restart max must be a positive number, and only for on-failure")
    return {"policy": value["policy"], "max": limit}


def restart_text(restart: dict | None) -> str:
    if not restart:
        return "no"
    return restart["policy"] + (f":{restart['max']}" if restart.get("max") else "")


# ------------------------------------------------------------------------------------ health


def _duration(key: str, value: Any, minimum: float = 0.0) -> float:
    if type(value) not in (int, float) or value != value or not minimum <= value <= MAX_DURATION:
        raise StateError(f"health {key} must be a number of seconds from {minimum:g} to {MAX_DURATION:g}")
    return float(value)


def check_health(value: Any) -> dict | None:
    """A health check as docker's HEALTHCHECK: None (none), or test + timings (defaults docker's)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"test", *HEALTH_DEFAULTS}:
        raise StateError("health must be {test, interval, timeout, retries, start_period}")
    test = value.get("test")
    if not isinstance(test, list) or not test or not all(isinstance(item, str) and len(item) <= 4096 for item in test) \
            or len(test) > 256:
        raise StateError("health test must be a list of strings: [\"CMD\", ARG, …] or [\"CMD-SHELL\", COMMAND]")
    if test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2 or (test[0] == "CMD-SHELL" and len(test) != 2) \
            or not test[1]:
        raise StateError("health test must start with CMD (then the command and its arguments) or CMD-SHELL "
                         "(then one shell command)")
    merged = {**HEALTH_DEFAULTS, **{k: v for k, v in value.items() if k != "test" and v is not None}}
    retries = merged["retries"]
    if type(retries) is not int or not 1 <= retries <= 1000:
        raise StateError("health retries must be a number from 1 to 1000")
    return {"test": list(test), "interval": _duration("interval", merged["interval"], MIN_HEALTH_INTERVAL),
            "timeout": _duration("timeout", merged["timeout"], MIN_HEALTH_INTERVAL), "retries": retries,
            "start_period": _duration("start_period", merged["start_period"])}


def health_argv(health: dict) -> list[str]:
    """The command a probe runs inside the container."""
    test = health["test"]
    return ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])


# ------------------------------------------------------------------------------- constraints


def parse_constraint(text: Any) -> dict:
    """``host==h1`` / ``label.zone!=a`` → {"key": "host" | "label.zone", "op": "==" | "!=", "value"}."""
    match = CONSTRAINT_RE.match(text) if isinstance(text, str) and len(text) <= 200 else None
    if match is None:
        raise StateError(f"constraint {text!r} is not understood — write host==NAME, host!=NAME, "
                         "label.KEY==VALUE or label.KEY!=VALUE")
    label = match.group(2)
    if label is not None and not LABEL_KEY_RE.match(label):
        raise StateError(f"constraint {text!r}: label key {label!r} must be lowercase letters, digits, . _ -")
    return {"key": match.group(1), "op": match.group(3), "value": match.group(4)}


def check_constraints(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CONSTRAINTS:
        raise StateError(f"constraints must be a list of at most {MAX_CONSTRAINTS} strings")
    out = []
    for text in value:
        parsed = parse_constraint(text)
        out.append(f"{parsed['key']}{parsed['op']}{parsed['value']}")
    return out


def constraint_holds(constraint: str, host: str, labels: dict[str, str]) -> bool:
    parsed = parse_constraint(constraint)
    key = parsed["key"]
    actual = host if key == "host" else labels.get(key[len("label."):])
    equal = actual == parsed["value"]
    return equal if parsed["op"] == "==" else not equal


def check_labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 64:
        raise StateError("labels must be a mapping of at most 64 keys")
    for key, item in value.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            raise StateError(f"label key {key!r} is invalid — use lowercase letters, digits, '.', '_' and '-'")
        if not isinstance(item, str) or not LABEL_VALUE_RE.match(item):
            raise StateError(f"label {key} = {item!r} is invalid — use letters, digits, '.', '_' and '-' (1-63)")
    return dict(sorted(value.items()))


# ----------------------------------------------------------------------------------- publish


def check_publish(value: Any) -> list[dict]:
    """Published ports (cluster/ports.py: docker's ``[HOSTIP:]HOST:CONTAINER[/tcp|udp]`` or its dicts)."""
    if value is None:
        return []
    try:
        return ports.check(value)
    except ports.PortError as error:
        raise StateError(str(error)) from None
