"""Fan-out over the inventory's hosts: bounded concurrency, one connection per host, per-host errors.

A failing host never stops the others; its error is kept and reported in the summary.
"""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

from cantainer import ssh
from cantainer.errors import CantainerError
from cantainer.inventory import Host, Inventory

DEFAULT_FANOUT = 32
T = TypeVar("T")


@dataclass
class Fleet:
    inventory: Inventory
    fanout: int = DEFAULT_FANOUT
    connections: dict[str, ssh.Connection] = field(default_factory=dict)
    errors: dict[str, CantainerError] = field(default_factory=dict)
    # TCP connections opened before (preconnect.py); whoever opened them closes those never taken
    early: dict[str, socket.socket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.fanout)

    @property
    def hosts(self) -> list[Host]:
        return list(self.inventory.hosts)

    def healthy(self) -> list[Host]:
        return [host for host in self.inventory.hosts if host.name in self.connections and host.name not in self.errors]

    async def connect_all(self, hosts: list[Host] | None = None) -> None:
        await self.each(hosts or self.hosts, self._connect)

    async def _connect(self, host: Host) -> None:
        self.connections[host.name] = await ssh.connect(host, early=self.early)

    async def each(self, hosts: list[Host], action: Callable[[Host], Awaitable[T]]) -> dict[str, T]:
        """Run `action` for every host still healthy, at most `fanout` at once; record failures."""
        results: dict[str, T] = {}

        async def guarded(host: Host) -> None:
            if host.name in self.errors:
                return
            async with self._slots:
                try:
                    results[host.name] = await action(host)
                except CantainerError as error:
                    self.errors[host.name] = error

        await asyncio.gather(*(guarded(host) for host in hosts))
        return results

    def fail(self, host: Host, error: CantainerError) -> None:
        self.errors[host.name] = error

    async def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        await asyncio.gather(*(c.wait_closed() for c in self.connections.values()), return_exceptions=True)
