"""``host:port`` strings as the config and the join wire carry them (a leaf: no internal imports)."""
from __future__ import annotations

import ipaddress
import re

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def split_hostport(value: str) -> tuple[str, int]:
    """Split ``"host:port"``; raises ValueError with a readable message."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"{value!r} is not of the form host:port")
    host, _, port_s = value.rpartition(":")
    if not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r} is not of the form host:port (port 1..65535)")
    if not HOST_RE.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{value!r} has an invalid host {host!r}") from None
    return host, int(port_s)
