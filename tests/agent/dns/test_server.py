"""The DNS server on real sockets (loopback addresses, unprivileged ports): local answers over UDP and TCP,
forwarding to the host's resolvers with a timeout, one network's socket never answering another's names."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from cantainer_agent.controllers import dns as dns_controller
from cantainer_agent.controllers.dns import DnsController, LiveTable, local_gateways
from cantainer_agent.dns import DnsError, DnsServer, build, read_resolv_conf

NETWORKS = {"10.50.0.0/24": {"name": "backend", "gateway": "127.0.50.1"},
            "10.60.0.0/24": {"name": "vault", "gateway": "127.0.60.1"}}
CONTAINERS = {
    "web": {"name": "web", "host": "h1", "network": "10.50.0.0/24", "ip": "10.50.0.2",
            "observed": {"state": "running"}},
    "secret": {"name": "secret", "host": "h1", "network": "10.60.0.0/24", "ip": "10.60.0.2",
               "observed": {"state": "running"}},
}
BACKEND_GW, VAULT_GW = "127.0.50.1", "127.0.60.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """A resolver standing in for the host's (UDP and TCP): answers outside.test, or stays silent if told to."""

    def __init__(self, address: str, port: int, silent: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.listener = socket.create_server((address, port))
        self.listener.settimeout(0.2)
        self.silent, self.queries, self._stop = silent, [], False
        self.threads = [threading.Thread(target=self._run, daemon=True),
                        threading.Thread(target=self._run_tcp, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            reply = self.reply(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _run_tcp(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                size = struct.unpack("!H", conn.recv(2))[0]
                reply = self.reply(conn.recv(size))
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

    def reply(self, data: bytes) -> bytes | None:
        query = DNSRecord.parse(data)
        self.queries.append(str(query.q.qname))
        if self.silent:
            return None
        reply = query.reply()
        if str(query.q.qname) == "outside.test." and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("203.0.113.7"), ttl=60))
        elif str(query.q.qname) == "big.test.":
            for i in range(60):
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(f"203.0.113.{i}"), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()

    def close(self) -> None:
        self._stop = True
        for thread in self.threads:
            thread.join(2)
        self.sock.close()
        self.listener.close()


@pytest.fixture
def dns():
    port, upstream_port = free_port(), free_port()
    upstream = Upstream("127.0.9.1", upstream_port)
    state = {"networks": dict(NETWORKS), "containers": dict(CONTAINERS)}
    server = DnsServer(lambda: build(state["networks"], state["containers"]), lambda: ["127.0.9.1"],
                       timeout=0.5, port=port, upstream_port=upstream_port)
    server.serve({BACKEND_GW: "10.50.0.0/24", VAULT_GW: "10.60.0.0/24"})
    yield server, port, upstream, state
    server.close()
    upstream.close()


def ask(gateway: str, port: int, name: str, qtype: str = "A", tcp: bool = False) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    return DNSRecord.parse(query.send(gateway, port, tcp=tcp, timeout=3))


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def test_local_names_over_udp_and_tcp(dns):
    server, port, upstream, _ = dns
    for tcp in (False, True):
        reply = ask(BACKEND_GW, port, "web.backend", tcp=tcp)
        assert reply.header.rcode == RCODE.NOERROR and reply.header.aa and addresses(reply) == ["10.50.0.2"]
        assert reply.rr[0].ttl == 0
    assert addresses(ask(BACKEND_GW, port, "web")) == ["10.50.0.2"]
    aaaa = ask(BACKEND_GW, port, "web", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and aaaa.rr == []  # the name exists, without IPv6
    assert ask(BACKEND_GW, port, "nobody.backend").header.rcode == RCODE.NXDOMAIN
    ptr = ask(BACKEND_GW, port, "2.0.50.10.in-addr.arpa", "PTR")
    assert str(ptr.rr[0].rdata) == "web.backend."
    assert upstream.queries == []  # none of that left the host


def test_each_network_sees_only_its_own_names(dns):
    _, port, upstream, _ = dns
    assert addresses(ask(VAULT_GW, port, "secret")) == ["10.60.0.2"]
    for name in ("web", "web.backend", "secret.vault"):
        gateway = VAULT_GW if name == "web" or name == "web.backend" else BACKEND_GW
        assert ask(gateway, port, name).header.rcode == RCODE.NXDOMAIN
    assert upstream.queries == []


def test_other_names_are_forwarded_over_udp_and_tcp(dns):
    _, port, upstream, _ = dns
    for tcp in (False, True):
        reply = ask(BACKEND_GW, port, "outside.test", tcp=tcp)
        assert addresses(reply) == ["203.0.113.7"] and reply.rr[0].ttl == 60  # the upstream's answer, as it is
    assert ask(BACKEND_GW, port, "missing.test").header.rcode == RCODE.NXDOMAIN
    assert "outside.test." in upstream.queries and "missing.test." in upstream.queries


def test_a_large_forwarded_answer_is_truncated_over_udp_and_whole_over_tcp(dns):
    _, port, _, _ = dns
    truncated = ask(BACKEND_GW, port, "big.test")
    assert truncated.header.tc == 1 and truncated.rr == []  # over 512 bytes: the client asks again over TCP
    assert len(addresses(ask(BACKEND_GW, port, "big.test", tcp=True))) == 60


def test_a_silent_upstream_is_servfail_after_the_timeout():
    port, upstream_port = free_port(), free_port()
    silent = Upstream("127.0.9.2", upstream_port, silent=True)
    server = DnsServer(lambda: build(NETWORKS, CONTAINERS), lambda: ["127.0.9.2"], timeout=0.3, port=port,
                       upstream_port=upstream_port)
    try:
        server.serve({BACKEND_GW: "10.50.0.0/24"})
        started = time.monotonic()
        assert ask(BACKEND_GW, port, "outside.test").header.rcode == RCODE.SERVFAIL
        assert time.monotonic() - started < 3  # the timeout, not the client's
        assert silent.queries == ["outside.test."]
        # with no upstream at all: SERVFAIL at once
        server._upstreams = lambda: []
        assert ask(BACKEND_GW, port, "outside.test").header.rcode == RCODE.SERVFAIL
    finally:
        server.close()
        silent.close()


def test_garbage_and_responses_are_dropped_and_serving_continues(dns):
    _, port, _, _ = dns
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(b"\x00garbage", (BACKEND_GW, port))
        response = DNSRecord.question("web").reply().pack()  # QR set: never answered (no reflection loops)
        sock.sendto(response, (BACKEND_GW, port))
        with pytest.raises(socket.timeout):
            sock.recvfrom(4096)
    with socket.create_connection((BACKEND_GW, port), timeout=3) as conn:
        conn.sendall(struct.pack("!H", 4) + b"junk")
        assert conn.recv(100) == b""  # closed
    assert addresses(ask(BACKEND_GW, port, "web")) == ["10.50.0.2"]


def test_answers_follow_the_table_and_serve_follows_the_bindings(dns):
    server, port, _, state = dns
    state["containers"] = {k: v for k, v in state["containers"].items() if k != "web"}
    assert ask(BACKEND_GW, port, "web").header.rcode == RCODE.NXDOMAIN  # the next query sees the change
    server.serve({VAULT_GW: "10.60.0.0/24"})
    assert server.gateways == {VAULT_GW: "10.60.0.0/24"}
    with pytest.raises(ConnectionRefusedError):
        ask(BACKEND_GW, port, "secret", tcp=True)  # closed
    assert addresses(ask(VAULT_GW, port, "secret")) == ["10.60.0.2"]


def test_a_taken_address_is_reported_and_the_rest_served():
    port = free_port()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((BACKEND_GW, port))  # no SO_REUSEADDR: ours cannot share it
    server = DnsServer(lambda: build(NETWORKS, CONTAINERS), lambda: [], port=port)
    try:
        with pytest.raises(DnsError, match=f"cannot serve DNS on {BACKEND_GW}:{port}"):
            server.serve({BACKEND_GW: "10.50.0.0/24", VAULT_GW: "10.60.0.0/24"})
        assert server.gateways == {VAULT_GW: "10.60.0.0/24"}
    finally:
        server.close()
        blocker.close()


def snapshot(containers: dict) -> dict:
    return {"ready": True, "state": {"networks": NETWORKS, "containers": containers}}


def test_a_started_container_is_served_before_any_pass_and_a_stale_pass_keeps_it(dns, monkeypatch):
    """`run` starts a container between passes: serve_now answers its first query at once, and a pass
    whose snapshot predates the container's record does not close its gateway; once a snapshot holds
    the record (or the pin expires), the snapshot alone decides."""
    server, port, _, state = dns
    server.serve({})
    controller = DnsController("h1", server)
    web = CONTAINERS["web"] | {"id": "c-web"}
    controller.serve_now(web, NETWORKS["10.50.0.0/24"])
    assert addresses(ask(BACKEND_GW, port, "web")) == ["10.50.0.2"]
    controller.sync(snapshot({}))  # a pass that read the state before the record's commit
    assert server.gateways == {BACKEND_GW: "10.50.0.0/24"}
    controller.sync(snapshot({"web": web}))  # the record arrived: the pin is dropped
    controller.sync(snapshot({}))  # the container was removed since
    assert server.gateways == {}
    monkeypatch.setattr(dns_controller, "PIN_TTL", 0.0)  # a start whose record never arrives (refused)
    controller.serve_now(web | {"id": "c-refused"}, NETWORKS["10.50.0.0/24"])
    time.sleep(0.01)
    controller.sync(snapshot({}))
    assert server.gateways == {}


def test_a_network_without_gateway_has_nothing_to_serve_now(dns):
    server, _, _, _ = dns
    server.serve({})
    DnsController("h1", server).serve_now(CONTAINERS["web"] | {"id": "c"}, {"name": "flat"})
    assert server.gateways == {}


def test_a_table_that_cannot_be_read_yet_is_servfail():
    port = free_port()

    def no_raft():
        raise RuntimeError("raft is not running yet")
    server = DnsServer(no_raft, lambda: [], port=port)
    try:
        server.serve({BACKEND_GW: "10.50.0.0/24"})
        assert ask(BACKEND_GW, port, "web").header.rcode == RCODE.SERVFAIL
    finally:
        server.close()


def test_live_table_rebuilds_only_after_a_change():
    reads = []

    class State:
        networks, containers, revision = NETWORKS, CONTAINERS, 4

    def read(fn):
        reads.append(1)
        return fn(State)
    table = LiveTable(read)
    assert table().revision == 4 and table().revision == 4 and len(reads) == 1
    State.revision = 5
    table.invalidate()
    assert table().revision == 5 and len(reads) == 2


def test_local_gateways_and_resolv_conf(tmp_path):
    state = {"networks": {**NETWORKS, "10.70.0.0/24": {"name": "old", "gateway": None}},
             "containers": {**CONTAINERS,
                            "x": {"host": "h2", "network": "10.50.0.0/24", "observed": {"state": "running"}},
                            "y": {"host": "h1", "network": "10.70.0.0/24", "observed": {"state": "running"}}}}
    assert local_gateways(state, "h1") == {BACKEND_GW: "10.50.0.0/24", VAULT_GW: "10.60.0.0/24"}
    assert local_gateways(state, "h2") == {BACKEND_GW: "10.50.0.0/24"}
    state["containers"]["secret"]["observed"] = {"state": "exited"}
    assert local_gateways(state, "h1") == {BACKEND_GW: "10.50.0.0/24"}
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\noptions edns0\n")
    assert read_resolv_conf(str(conf)) == ["127.0.0.53", "fe80::1"]
    assert read_resolv_conf(str(tmp_path / "missing")) == []
