"""Free TCP ports on loopback for tests that start real servers (or need one nothing listens on)."""
from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel just handed out (bound together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def closed_port() -> int:
    """A loopback port nothing listens on (handed out by the kernel a moment ago, then released)."""
    return free_ports(1)[0]
