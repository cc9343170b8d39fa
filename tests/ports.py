"""Free TCP ports on loopback for tests that start real servers."""
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
