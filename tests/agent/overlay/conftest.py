"""A fake multi-host underlay made of network namespaces, for the overlay's integration tests.

Layout (every name starts with ``ovtest-<pid>-``, so a crashed run's leftovers are found again):

* ``…-wire``: a namespace holding one bridge, the "switch" of the underlay (no IP address);
* ``…-hA``, ``…-hB``, ``…-hC``: fake hosts, each with ``eth0`` 198.18.250.x/24 veth-paired to
  the wire; the overlay library is driven *inside* them through ``IPRoute(netns=...)``;
* fake containers: ``unshare --net sleep`` processes (their own network namespace, killed by
  PID — and by PR_SET_PDEATHSIG if this test process dies).

Nothing is created in the machine's own network namespace; every namespace, link and process is
removed by finalizers, also when a test fails.
"""
from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from pyroute2 import IPRoute, netns

UNDERLAY = ipaddress.ip_network("198.18.250.0/24")
PREFIX = "ovtest-"
_STALE = re.compile(r"^ovtest-(\d+)-")
_serial = itertools.count(1)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("overlay integration tests need root (network namespaces, veth, vxlan)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs whose test process is gone (killed before its finalizers)."""
    for name in netns.listnetns():
        m = _STALE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            netns.remove(name)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Host:
    name: str
    ns: str
    address: str

    @contextmanager
    def ipr(self):
        with IPRoute(netns=self.ns, flags=0) as ipr:
            yield ipr

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command inside the host's network namespace (tests only)."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True,
                              check=check, timeout=30)


@dataclass
class Container:
    id: str
    pid: int
    process: subprocess.Popen = field(repr=False)

    @property
    def nspath(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def run(self, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net={self.nspath}", *argv], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def ping(self, ip: str, size: int = 56, count: int = 2, df: bool = True) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-s", str(size)]
        if df:
            argv += ["-M", "do"]
        return self.run(*argv, ip).returncode == 0

    @contextmanager
    def ipr(self):
        with IPRoute(netns=self.nspath, flags=0) as ipr:
            yield ipr


class Fabric:
    def __init__(self, mtu: int = 1500) -> None:
        self.run_id = f"{PREFIX}{os.getpid()}-{next(_serial)}"
        self.mtu = mtu
        self.namespaces: list[str] = []
        self.containers: list[Container] = []
        self.hosts: dict[str, Host] = {}
        self.wire = f"{self.run_id}-wire"

    def setup(self) -> "Fabric":
        self._netns("wire")
        with IPRoute(netns=self.wire, flags=0) as ipr:
            ipr.link("add", ifname="wire", kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname="wire")[0], state="up")
        return self

    def _netns(self, suffix: str) -> str:
        name = f"{self.run_id}-{suffix}"
        self.namespaces.append(name)  # recorded first: removed even if creation fails half-way
        netns.create(name)
        return name

    def add_host(self, name: str) -> Host:
        address = str(UNDERLAY.network_address + len(self.hosts) + 1)
        ns = self._netns(name)
        with IPRoute(netns=self.wire, flags=0) as wire:
            port = f"u-{name}"
            wire.link("add", ifname=port, kind="veth", mtu=self.mtu,
                      peer={"ifname": "eth0", "net_ns_fd": ns, "mtu": self.mtu})
            wire.link("set", index=wire.link_lookup(ifname=port)[0],
                      master=wire.link_lookup(ifname="wire")[0], state="up")
        with IPRoute(netns=ns, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=address, prefixlen=UNDERLAY.prefixlen)
            ipr.link("set", index=eth0, state="up")
        host = Host(name, ns, address)
        self.hosts[name] = host
        return host

    def add_container(self, cid: str) -> Container:
        process = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"], preexec_fn=_die_with_parent,
                                   stdin=subprocess.DEVNULL)
        container = Container(cid, process.pid, process)
        self.containers.append(container)
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(container.nspath).st_ino == own:
            if time.monotonic() > deadline:
                raise RuntimeError("unshare did not create a network namespace")
            time.sleep(0.005)
        return container

    def close(self) -> None:
        """Kill our processes (by PID), remove our namespaces; keep going past errors."""
        errors = []
        for container in self.containers:
            try:
                if container.process.poll() is None:
                    container.process.kill()
                container.process.wait(timeout=10)
            except Exception as error:  # noqa: BLE001 - clean up the rest anyway
                errors.append(error)
        for name in reversed(self.namespaces):
            try:
                if name in netns.listnetns():
                    netns.remove(name)
            except Exception as error:  # noqa: BLE001
                errors.append(error)
        if errors:
            raise errors[0]


@contextmanager
def fabric_factory():
    """Yields a factory of fabrics; every fabric made is torn down on exit, whatever happened."""
    require_root()
    remove_stale_namespaces()
    made: list[Fabric] = []

    def make(**kwargs) -> Fabric:
        fabric = Fabric(**kwargs)
        made.append(fabric)
        return fabric.setup()

    try:
        yield make
    finally:
        for fabric in reversed(made):
            fabric.close()


@pytest.fixture
def make_fabric():
    with fabric_factory() as make:
        yield make
