"""How a CLI command reaches a host: through the connection process, or over a connection of its own.

``connect(host)`` returns an object with the connector's verbs (``run``, ``write_file``,
``open_agent``, ``stream``, ``close``): by default a ``persist.client.ProxyConnection`` — the
per-user connection process (cantainer/persist/) holds one SSH connection per host across CLI calls,
so a command imports neither asyncssh nor its crypto and pays no SSH handshake — and, when
persistence is off (``--no-persist``, ``CANTAINER_PERSIST=no``), an ``ssh.Connection`` of its own.
`up` and `down` always use their own connections (cantainer/fleet.py). This module imports neither.
"""
from __future__ import annotations

from cantainer.inventory import Host


async def connect(host: Host):
    from cantainer.persist import settings

    if settings.enabled():
        from cantainer.persist.client import ProxyConnection

        return ProxyConnection(host)
    from cantainer import ssh

    return await ssh.connect(host)
