"""preconnect: TCP connections opened before asyncssh is imported, on loopback listeners."""
from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from cantainer.inventory import Host
from cantainer.preconnect import close_all, open_early, take
from tests.ports import closed_port


def host(name: str, port: int, address: str = "127.0.0.1") -> Host:
    return Host(name=name, address=address, port=port, user="root", identity_file=None, known_hosts=None,
                host_key_checking="strict", become=False, python="python3", connect_timeout=5.0,
                underlay_address=None)


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def settled(sock: socket.socket) -> None:
    """Wait for a non-blocking connect to finish either way (loopback: at once)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            sock.getpeername()
            return
        except OSError:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return
        time.sleep(0.01)


def test_an_established_connection_is_handed_over_and_reaches_the_host(listener):
    port = listener.getsockname()[1]
    early = open_early([host("h1", port)], limit=32)
    settled(early["h1"])
    sock = take(early, host("h1", port), "127.0.0.1", port, proxied=False)
    try:
        assert sock is not None and early == {}
        peer, _ = listener.accept()
        sock.setblocking(True)
        sock.sendall(b"SSH-2.0-test\r\n")
        assert peer.recv(64) == b"SSH-2.0-test\r\n"
        peer.close()
    finally:
        sock.close()


def test_names_are_not_resolved_here_and_the_limit_holds(listener):
    port = listener.getsockname()[1]
    hosts = [host("by-name", port, address="localhost"), host("h1", port), host("h2", port), host("h3", port)]
    early = open_early(hosts, limit=2)
    try:
        assert sorted(early) == ["h1", "h2"]  # no lookup for the name; the third address waits for the fanout
    finally:
        close_all(early)
    assert early == {}


@pytest.mark.parametrize("why", ["proxied", "other address", "other port", "refused"])
def test_a_connection_that_does_not_go_where_ssh_would_is_closed_and_not_used(listener, why):
    port = listener.getsockname()[1] if why != "refused" else closed_port()
    h1 = host("h1", port)
    early = open_early([h1], limit=32)
    sock = early["h1"]
    settled(sock)
    address, to_port = ("127.0.0.2", port) if why == "other address" else ("127.0.0.1", port)
    if why == "other port":
        to_port = port + 1
    assert take(early, h1, address, to_port, proxied=why == "proxied") is None
    assert sock.fileno() == -1 and early == {}  # closed


def test_a_host_without_an_early_connection_gets_none(listener):
    port = listener.getsockname()[1]
    early = open_early([host("h1", port)], limit=32)
    try:
        assert take(early, dataclasses.replace(host("h1", port), name="h2"), "127.0.0.1", port, False) is None
        assert list(early) == ["h1"]
    finally:
        close_all(early)
