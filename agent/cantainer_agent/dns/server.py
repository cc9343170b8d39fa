"""The host's DNS server for its networks: UDP and TCP port 53 on each local network's gateway address.

``DnsServer.serve({gateway: cidr})`` opens (and closes) sockets to match; one selector thread reads
them. A query is answered from ``table()`` (dns/records.py, the replicated state as of this replica)
when it is ours — at once, authoritatively, TTL 0 — else forwarded by a small worker pool to the
host's own resolvers (``upstreams()``: /etc/resolv.conf) over UDP (TCP when the client used TCP or
the answer was truncated), each with ``timeout`` seconds; nothing answers → SERVFAIL. The socket
a query arrived on says which network asked: a network only ever sees its own names. Sockets are
bound with IP_FREEBIND, so they can be opened before the gateway address is on the bridge.
dnslib parses and builds every packet; a packet it cannot parse is dropped (UDP) or closes the
connection (TCP). Limits: 16 TCP connections at once, 5 s per connection, 512 bytes per UDP answer
(larger ones are truncated with TC set, as RFC 1035 says).
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from ..errors import AgentError
from .records import Table, lookup

if TYPE_CHECKING:
    from dnslib import DNSRecord

log = logging.getLogger(__name__)

PORT = 53
TTL = 0  # answers come from the replicated state: never let a resolver keep one
UDP_MAX = 512
TCP_MAX_CONNECTIONS = 16
TCP_DEADLINE = 5.0
FORWARD_TIMEOUT = 2.0
FORWARD_WORKERS = 4
IP_FREEBIND = 15


class DnsError(AgentError):
    """A gateway's DNS socket could not be opened."""


def read_resolv_conf(path: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf (IPv4 and IPv6), in order."""
    servers = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append(fields[1].split("%")[0])
    except OSError:
        pass
    return servers


def answer(table: Table, cidr: str, query: DNSRecord) -> DNSRecord | None:
    """The reply to *query* from network *cidr* if it is ours to answer; None: forward it."""
    from dnslib import PTR, QTYPE, RCODE, RR, A  # noqa: PLC0415 - see _parse
    if len(query.questions) != 1 or query.header.opcode != 0:
        reply = query.reply()
        reply.header.rcode = RCODE.NOTIMP if query.header.opcode != 0 else RCODE.FORMERR
        return reply
    question = query.questions[0]
    found = lookup(table, cidr, str(question.qname))
    if found is None:
        return None
    reply = query.reply()
    reply.header.aa = 1
    if not found.exists:
        reply.header.rcode = RCODE.NXDOMAIN
    elif found.ptr is not None and question.qtype in (QTYPE.PTR, QTYPE.ANY):
        reply.add_answer(RR(question.qname, QTYPE.PTR, ttl=TTL, rdata=PTR(found.ptr + ".")))
    elif question.qtype in (QTYPE.A, QTYPE.ANY):
        for address in found.addresses:
            reply.add_answer(RR(question.qname, QTYPE.A, ttl=TTL, rdata=A(address)))
    # other types (AAAA among them) of a name we have: NOERROR without records
    return reply


class DnsServer:
    def __init__(self, table: Callable[[], Table], upstreams: Callable[[], list[str]],
                 timeout: float = FORWARD_TIMEOUT, port: int = PORT, upstream_port: int = PORT) -> None:
        self._table = table
        self._upstreams = upstreams
        self._timeout = timeout
        self._port, self._upstream_port = port, upstream_port  # other than 53 in tests only
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._bound: dict[str, tuple[str, socket.socket, socket.socket]] = {}  # gateway -> (cidr, udp, tcp)
        self._pool = ThreadPoolExecutor(FORWARD_WORKERS, thread_name_prefix="dns-forward")
        self._tcp_slots = threading.BoundedSemaphore(TCP_MAX_CONNECTIONS)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dns", daemon=True)
        self._thread.start()
        self.answered = 0  # queries answered (tests and benchmarks read it)

    @property
    def gateways(self) -> dict[str, str]:
        with self._lock:
            return {gateway: cidr for gateway, (cidr, _, _) in self._bound.items()}

    def serve(self, bindings: dict[str, str]) -> None:
        """Serve exactly these ``{gateway address: network cidr}``; raises DnsError listing the
        gateways it could not bind (the others are served)."""
        failures = []
        with self._lock:
            for gateway in list(self._bound):
                if bindings.get(gateway) != self._bound[gateway][0]:
                    self._close(gateway)
            for gateway, cidr in sorted(bindings.items()):
                if gateway in self._bound:
                    continue
                try:
                    self._open(gateway, cidr)
                except OSError as error:
                    failures.append(f"{gateway}:{self._port} ({error.strerror or error})")
        os.write(self._wake_w, b"x")
        if failures:
            raise DnsError(f"cannot serve DNS on {', '.join(failures)} — is another DNS server bound to "
                           "port 53 on every address?")

    def add(self, gateway: str, cidr: str) -> None:
        """Serve *gateway* (network *cidr*) too, leaving the others as they are; raises DnsError."""
        with self._lock:
            if self._bound.get(gateway, (cidr,))[0] != cidr:
                self._close(gateway)
            if gateway not in self._bound:
                try:
                    self._open(gateway, cidr)
                except OSError as error:
                    raise DnsError(f"cannot serve DNS on {gateway}:{self._port} ({error.strerror or error})") from None
        os.write(self._wake_w, b"x")

    def _open(self, gateway: str, cidr: str) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((gateway, self._port))
                sock.setblocking(False)
            tcp.listen(16)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self._bound[gateway] = (cidr, udp, tcp)
        self._selector.register(udp, selectors.EVENT_READ, ("udp", cidr))
        self._selector.register(tcp, selectors.EVENT_READ, ("tcp", cidr))
        log.info("dns: serving network %s on %s:%d", cidr, gateway, self._port)

    def _close(self, gateway: str) -> None:
        cidr, udp, tcp = self._bound.pop(gateway)
        for sock in (udp, tcp):
            self._selector.unregister(sock)
            sock.close()
        log.info("dns: no longer serving network %s on %s", cidr, gateway)

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            for gateway in list(self._bound):
                self._close(gateway)
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------------ serving

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
            for key, _ in self._selector.select(1.0):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                kind, cidr = key.data
                try:
                    if kind == "udp":
                        self._udp(key.fileobj, cidr)  # type: ignore[arg-type]
                    else:
                        self._accept(key.fileobj, cidr)  # type: ignore[arg-type]
                except OSError as error:  # a socket closed under us by serve(), or a peer's error
                    log.debug("dns: %s", error)

    def _udp(self, sock: socket.socket, cidr: str) -> None:
        for _ in range(64):  # a burst, then let the other sockets have a turn
            try:
                data, peer = sock.recvfrom(4096)
            except BlockingIOError:
                return
            reply = self._local(cidr, data)
            if reply is None:
                self._pool.submit(self._forward_udp, sock, peer, data)
            elif reply:
                sock.sendto(_fit(reply), peer)

    def _local(self, cidr: str, data: bytes) -> bytes | None:
        """The packed local answer, b"" for a packet to drop, None for one to forward."""
        try:
            query = _parse(data)
        except Exception:  # noqa: BLE001 - dnslib raises several kinds on garbage
            return b""
        if query.header.qr:
            return b""  # a response sent to us: never answer it
        try:
            table = self._table()
        except Exception as error:  # noqa: BLE001 - e.g. raft still starting: the client retries
            log.debug("dns: no table yet: %s", error)
            return _servfail(query)
        reply = answer(table, cidr, query)
        if reply is None:
            return None
        self.answered += 1
        return reply.pack()

    def _forward_udp(self, sock: socket.socket, peer: tuple, data: bytes) -> None:
        try:
            sock.sendto(_fit(self._forward(data, tcp=False)), peer)
        except OSError as error:
            log.debug("dns: reply to %s failed: %s", peer, error)

    def _forward(self, data: bytes, tcp: bool) -> bytes:
        """The host's resolvers' answer to *data*, or SERVFAIL when none answers in time."""
        query = _parse(data)
        for server in self._upstreams():
            try:
                reply = _ask(server, self._upstream_port, data, self._timeout, tcp)
                if not tcp and _parse(reply).header.tc:
                    reply = _ask(server, self._upstream_port, data, self._timeout, True)
                parsed = _parse(reply)
                if parsed.header.id == query.header.id and parsed.q == query.q:
                    return reply
            except (OSError, ValueError, struct.error) as error:
                log.debug("dns: upstream %s: %s", server, error)
            except Exception as error:  # noqa: BLE001 - dnslib's parse errors
                log.debug("dns: upstream %s sent garbage: %s", server, error)
        return _servfail(query)

    def _accept(self, listener: socket.socket, cidr: str) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        if not self._tcp_slots.acquire(blocking=False):
            conn.close()
            return
        threading.Thread(target=self._tcp, args=(conn, cidr), name="dns-tcp", daemon=True).start()

    def _tcp(self, conn: socket.socket, cidr: str) -> None:
        deadline = time.monotonic() + TCP_DEADLINE
        try:
            conn.setblocking(True)
            while True:
                header = _recv_exactly(conn, 2, deadline)
                if header is None:
                    return
                data = _recv_exactly(conn, struct.unpack("!H", header)[0], deadline)
                if not data:
                    return
                reply = self._local(cidr, data)
                if reply == b"":
                    return
                if reply is None:
                    reply = self._forward(data, tcp=True)
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, ValueError) as error:
            log.debug("dns: tcp connection: %s", error)
        finally:
            conn.close()
            self._tcp_slots.release()


def _recv_exactly(conn: socket.socket, size: int, deadline: float) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        chunk = conn.recv(size - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> DNSRecord:
    """dnslib is imported with the first packet, not with the agent (~18 ms of CPU at every start,
    and a host serves DNS only once it has a network)."""
    from dnslib import DNSRecord  # noqa: PLC0415

    return DNSRecord.parse(data)


def _servfail(query: DNSRecord) -> bytes:
    from dnslib import RCODE  # noqa: PLC0415 - see _parse

    fail = query.reply()
    fail.header.rcode = RCODE.SERVFAIL
    return fail.pack()


def _fit(reply: bytes) -> bytes:
    """A UDP answer of at most UDP_MAX bytes: a longer one loses its records and gets TC set."""
    if len(reply) <= UDP_MAX:
        return reply
    from dnslib import DNSRecord  # noqa: PLC0415 - see _parse

    record = DNSRecord.parse(reply)
    truncated = DNSRecord(record.header, q=record.q)
    truncated.header.tc = 1
    return truncated.pack()


def _ask(server: str, port: int, data: bytes, timeout: float, tcp: bool) -> bytes:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    if tcp:
        with socket.create_connection((server, port), timeout=timeout) as conn:
            conn.sendall(struct.pack("!H", len(data)) + data)
            header = _recv_exactly(conn, 2, time.monotonic() + timeout)
            reply = _recv_exactly(conn, struct.unpack("!H", header)[0], time.monotonic() + timeout) if header else None
            if not reply:
                raise OSError("the upstream closed the connection")
            return reply
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))  # a connected socket only takes replies from the server
        sock.send(data)
        return sock.recv(65535)
