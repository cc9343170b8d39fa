"""TCP connections to the hosts, opened before the SSH library is imported.

`up` imports asyncssh (~90 ms on the development VM) before it can connect, and each host's sshd
starts its per-connection work (fork, re-exec, host keys: ~10-25 ms of the host's CPU) only when a
connection arrives. Opened first, the connections let every sshd do that while the workstation
imports. Only hosts the inventory names by IP address get one (a name lookup could block here).
:func:`take` hands a socket to the SSH connector only when the SSH options (which ~/.ssh/config
may change) say the same address and port without a proxy, and once its TCP handshake is complete;
any other is closed, and that host is connected as before.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from cantainer.inventory import Host


def open_early(hosts: Iterable[Host], limit: int) -> dict[str, socket.socket]:
    """Start a non-blocking TCP connection to each of the first *limit* hosts named by IP address."""
    early: dict[str, socket.socket] = {}
    for host in hosts:
        if len(early) >= limit:
            break
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host.address).version == 6 else socket.AF_INET
        except ValueError:
            continue  # a name (or an address with a zone): the connector resolves it
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect((host.address, host.port))
        except BlockingIOError:
            pass  # in progress, as intended
        except OSError:
            sock.close()  # e.g. no route: the connector reports it with its own words
            continue
        early[host.name] = sock
    return early


def take(early: dict[str, socket.socket], host: Host, address: str, port: int,
         proxied: bool) -> socket.socket | None:
    """The early connection for *host* if it goes where the SSH options say (*address*, *port*, no
    proxy) and is established; else None (and it is closed)."""
    sock = early.pop(host.name, None)
    if sock is None:
        return None
    if proxied or (address, port) != (host.address, host.port) or not _established(sock):
        sock.close()
        return None
    return sock


def close_all(early: dict[str, socket.socket]) -> None:
    """Close the connections nobody took (a failed lock, an error before connecting)."""
    for sock in early.values():
        sock.close()
    early.clear()


def _established(sock: socket.socket) -> bool:
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
        return False  # refused, unreachable
    try:
        sock.getpeername()
    except OSError:
        return False  # still connecting
    return True
