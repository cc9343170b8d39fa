"""Published ports as data: docker's ``-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]``, pure.

A published port is ``{"host_ip", "host_port", "container_port", "protocol"}`` (``host_ip``
``0.0.0.0`` = every address of the host). ``parse`` reads the CLI's text (``PortError`` with a
one-line message), ``check`` validates what a request carries (the state machine calls it), and
``clash`` says whether two publications of one host collide: same protocol and host port, and the
same host IP or either on every address. A container's list lives in its state record
(``publish``), so anything that owns containers (a service, later) reuses the same rules.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

PROTOCOLS = ("tcp", "udp")
ANY = "0.0.0.0"
MAX_PUBLISHED = 64  # per container
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
EXAMPLE = "write it like -p 8080:80, -p 127.0.0.1:8080:80 or -p 5353:53/udp"


class PortError(ValueError):
    """A port publication that cannot be honoured; the message says what and how to fix it."""


def _port(text: str, what: str, spec: str) -> int:
    if not _PORT_RE.match(text) or not 1 <= int(text) <= 65535:
        raise PortError(f"-p {spec}: {what} {text!r} is not a port number from 1 to 65535 — {EXAMPLE}")
    return int(text)


def _host_ip(text: str, spec: str) -> str:
    if text.startswith("["):
        raise PortError(f"-p {spec}: IPv6 host addresses are not supported — publish on an IPv4 address or on all")
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise PortError(f"-p {spec}: {text!r} is not an IPv4 address — {EXAMPLE}") from None
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise PortError(f"-p {spec}: {text} is not a unicast address — use one of the host's addresses")
    return str(address)


def parse(spec: str) -> dict:
    """``[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`` → a published port."""
    if not isinstance(spec, str) or not spec.strip():
        raise PortError(f"-p needs a value — {EXAMPLE}")
    text, _, protocol = spec.strip().partition("/")
    protocol = protocol or "tcp"
    if protocol not in PROTOCOLS:
        raise PortError(f"-p {spec}: protocol {protocol!r} is not tcp or udp")
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        raise PortError(f"-p {spec}: give the host port too (a random host port is not supported) — {EXAMPLE}")
    if any("-" in part for part in parts[-2:]):
        raise PortError(f"-p {spec}: port ranges are not supported — publish each port with its own -p")
    host_ip = _host_ip(parts[0], spec) if len(parts) == 3 else ANY
    return {"host_ip": host_ip, "host_port": _port(parts[-2], "host port", spec),
            "container_port": _port(parts[-1], "container port", spec), "protocol": protocol}


def check(value: Any) -> list[dict]:
    """Validate and normalise a request's list of published ports (sorted, no duplicates); an item is
    ``parse``'s text or its dict (``host_ip`` may be left out: every address, as services had it)."""
    if not isinstance(value, list) or len(value) > MAX_PUBLISHED:
        raise PortError(f"published ports must be a list of at most {MAX_PUBLISHED}")
    out: list[dict] = []
    for item in value:
        if isinstance(item, str):
            item = parse(item)
        if isinstance(item, dict) and "host_ip" not in item:
            item = {"host_ip": ANY, **item}
        if not isinstance(item, dict) or set(item) != {"host_ip", "host_port", "container_port", "protocol"}:
            raise PortError("a published port must hold exactly host_ip, host_port, container_port, protocol")
        if item["protocol"] not in PROTOCOLS:
            raise PortError(f"published port protocol {item['protocol']!r} is not tcp or udp")
        for key in ("host_port", "container_port"):
            if type(item[key]) is not int or not 1 <= item[key] <= 65535:
                raise PortError(f"published {key} {item[key]!r} is not a port number from 1 to 65535")
        if not isinstance(item["host_ip"], str):
            raise PortError(f"published host_ip {item['host_ip']!r} is not an IPv4 address")
        port = {**item, "host_ip": _host_ip(item["host_ip"], format_port(item))}
        for other in out:
            if clash(port, other):
                raise PortError(f"host port {describe(port)} is published twice — publish each host port once")
        out.append(port)
    return sorted(out, key=lambda p: (p["protocol"], p["host_port"], p["host_ip"], p["container_port"]))


def host_ip(port: dict) -> str:
    """Where a recorded publication listens (services' records from before host addresses lack it)."""
    return port.get("host_ip", ANY)


def clash(a: dict, b: dict) -> bool:
    """Would *a* and *b*, on one host, claim the same packets?"""
    return (a["protocol"] == b["protocol"] and a["host_port"] == b["host_port"]
            and (host_ip(a) == host_ip(b) or ANY in (host_ip(a), host_ip(b))))


def describe(port: dict) -> str:
    """The host side of a publication: ``8080/tcp`` or ``127.0.0.1:8080/tcp``."""
    where = "" if host_ip(port) == ANY else f"{host_ip(port)}:"
    return f"{where}{port['host_port']}/{port['protocol']}"


def format_port(port: dict) -> str:
    """docker ps's form: ``0.0.0.0:8080->80/tcp``."""
    return f"{host_ip(port)}:{port['host_port']}->{port['container_port']}/{port['protocol']}"
