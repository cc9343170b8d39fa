"""The network group: DNS answers from a container, published-port latency, name removal.

`measure(quick)` returns rows for `python -m bench`; alone:
`sudo .venv/bin/python -m bench.network_bench [--quick]`. One lab `bnet` of 3 hosts with a formed
cluster (bench/lab_cluster.py), removed afterwards whatever happens. Every socket is made by this
process *inside a container's network namespace* (bench/lab_cluster.socket_in_netns), so no process
start or SSH is measured — only the data path. Network `bench` (10.90.0.0/24): `client` on h1,
`server` on h2 publishing 18080:8080.

* DNS answer: a UDP query for `server.bench` from the client's namespace to its gateway (h1's
  agent answers from its replica), round trip, p50; anchor: a name the agent forwards to the host's
  resolver (a dnslib responder on the workstation's lab address, the lab hosts' resolv.conf).
* published port: a new TCP connection from the client to h2's address:18080 (DNAT to the server),
  one request, one response, close — p50; anchor: the same to the server's container address
  directly (the overlay path without NAT). The server is a thread of this process listening in the
  server container's namespace.
* removal: the server's twin `gone` on h2 is removed through h2's agent API (`container.rm`); from
  the call's return, the client's namespace asks h1's DNS every 2 ms until NXDOMAIN.
"""
from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from bench.lab_cluster import AgentSocket, cluster, container_netns, socket_in_netns
from bench.results import percentile, row
from bench.up_vs_ansible import CANTAINER, BenchError, _run

LAB = "bnet"
NETWORK, CIDR, GATEWAY = "bench", "10.90.0.0/24", "10.90.0.1"
PUBLISHED, PORT = 18080, 8080
OUTSIDE = "outside.bench-anchor.test"


class Resolver:
    """The hosts' resolver, on the workstation's lab address: answers OUTSIDE."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            query = DNSRecord.parse(data)
            reply = query.reply()
            if str(query.q.qname).rstrip(".") == OUTSIDE:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("203.0.113.7"), ttl=0))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


class Server:
    """Accept, read one request, answer, close — in the server container's network namespace."""

    def __init__(self, netns: str) -> None:
        self.sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", PORT))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.recv(100)
                conn.sendall(b"pong")

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


def dns_round_trip(netns: str, name: str, timeout: float = 3.0) -> tuple[float, int]:
    """Seconds for one A query from *netns* to the gateway, and the answer's rcode."""
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        query = DNSRecord.question(name).pack()
        started = time.perf_counter()
        sock.sendto(query, (GATEWAY, 53))
        reply = sock.recv(4096)
        return time.perf_counter() - started, DNSRecord.parse(reply).header.rcode


def request(netns: str, address: str, port: int) -> float:
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        started = time.perf_counter()
        sock.connect((address, port))
        sock.sendall(b"ping")
        if sock.recv(100) != b"pong":
            raise BenchError(f"no answer from {address}:{port}")
        return time.perf_counter() - started


def run(inventory: Path, host: str, name: str, *extra: str) -> None:
    _run([str(CANTAINER), "run", "--inventory", str(inventory), "--host", host, "-n", NETWORK, "--name", name,
          *extra, "-d", "--", "sleep", "1000000"], timeout=120)


def measure(quick: bool = False, log=print) -> list[dict]:
    n = 100 if quick else 500
    with cluster(LAB, 3, log=log) as (lab, inventory):
        resolver = Resolver(str(lab.load().gateway.ip))
        server = None
        try:
            _run([str(CANTAINER), "network", "create", CIDR, "--name", NETWORK, "-i", str(inventory)], timeout=60)
            run(inventory, "h1", "client")
            run(inventory, "h2", "server", "-p", f"{PUBLISHED}:{PORT}")
            with AgentSocket(lab, "h1") as api:
                containers = {c["name"]: c for c in api.call("container.ps")}
                h2 = next(node["address"] for node in api.call("status")["nodes"] if node["name"] == "h2")
            client = container_netns(lab, "h1", containers["client"]["id"])
            server = Server(container_netns(lab, "h2", containers["server"]["id"]))
            server_ip = containers["server"]["ip"]

            log(f"  DNS from a container: {n} local and {n // 5} forwarded queries")
            for _ in range(20):  # warm: the table is built at the first query after a change
                dns_round_trip(client, "server.bench")
            local = [dns_round_trip(client, "server.bench")[0] for _ in range(n)]
            forwarded = [dns_round_trip(client, OUTSIDE)[0] for _ in range(n // 5)]

            log(f"  published port vs direct: {n} requests each, interleaved")
            for _ in range(20):
                request(client, h2, PUBLISHED)
                request(client, server_ip, PORT)
            published, direct = [], []
            for _ in range(n):
                published.append(request(client, h2, PUBLISHED))
                direct.append(request(client, server_ip, PORT))

            rounds = 3 if quick else 10
            log(f"  removal → NXDOMAIN on another host: {rounds} rounds")
            removal = []
            for i in range(rounds):
                run(inventory, "h2", f"gone{i}")
                name = f"gone{i}.bench"
                if dns_round_trip(client, name)[1] != RCODE.NOERROR:
                    raise BenchError(f"{name} does not resolve before its removal")
                with AgentSocket(lab, "h2") as api:
                    api.call("container.rm", {"name": f"gone{i}", "force": True})
                removed = time.perf_counter()
                while dns_round_trip(client, name)[1] != RCODE.NXDOMAIN:
                    if time.perf_counter() - removed > 10:
                        raise BenchError(f"{name} still resolves 10 s after its removal")
                    time.sleep(0.002)
                removal.append(time.perf_counter() - removed)
        finally:
            if server is not None:
                server.close()
            resolver.close()
    ms = 1000
    return [
        row(f"DNS answer from a container (its host's agent, UDP), p50 (n={n})",
            statistics.median(local) * ms, "ms",
            "a name forwarded to the host's resolver, p50", statistics.median(forwarded) * ms),
        row(f"DNS answer from a container, p99 (n={n})", percentile(local, 99) * ms, "ms"),
        row(f"published port: connect + request + response, h1 container → h2:{PUBLISHED}, p50 (n={n})",
            statistics.median(published) * ms, "ms",
            "the same to the container's overlay address (no NAT), p50", statistics.median(direct) * ms),
        row(f"published port, p99 (n={n})", percentile(published, 99) * ms, "ms",
            "direct, p99", percentile(direct, 99) * ms),
        row(f"container removed on h2 → NXDOMAIN from h1's DNS, max (n={len(removal)})", max(removal) * ms, "ms"),
    ]


if __name__ == "__main__":
    for r in measure("--quick" in sys.argv[1:]):
        print(r)
