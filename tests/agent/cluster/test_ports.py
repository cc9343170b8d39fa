"""Published ports: docker's -p syntax, the checks a request meets, and which publications clash (pure)."""
from __future__ import annotations

import pytest

from cantainer_agent.cluster import ports


def port(host_port=8080, container_port=80, protocol="tcp", host_ip="0.0.0.0") -> dict:
    return {"host_ip": host_ip, "host_port": host_port, "container_port": container_port, "protocol": protocol}


@pytest.mark.parametrize("text, expected", [
    ("8080:80", port()),
    ("8080:80/tcp", port()),
    ("5353:53/udp", port(5353, 53, "udp")),
    ("127.0.0.1:8080:80", port(host_ip="127.0.0.1")),
    (" 198.18.0.2:1:65535/udp ", port(1, 65535, "udp", "198.18.0.2")),
])
def test_parse(text, expected):
    assert ports.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "-p needs a value"),
    ("80", "give the host port too"),
    ("80/tcp", "give the host port too"),
    ("8080:80/sctp", "protocol 'sctp' is not tcp or udp"),
    ("8080-8081:80-81", "port ranges are not supported"),
    ("0:80", "host port '0' is not a port number from 1 to 65535"),
    ("65536:80", "host port '65536' is not a port number"),
    ("8080:http", "container port 'http' is not a port number"),
    ("8080:", "container port '' is not a port number"),
    ("localhost:8080:80", "'localhost' is not an IPv4 address"),
    ("[::1]:8080:80", "IPv6 host addresses are not supported"),
    ("224.0.0.1:8080:80", "224.0.0.1 is not a unicast address"),
    ("255.255.255.255:8080:80", "is not a unicast address"),
    ("1.2.3.4.5:8080:80", "'1.2.3.4.5' is not an IPv4 address"),
])
def test_parse_errors_say_what_and_how(text, message):
    with pytest.raises(ports.PortError, match=message) as caught:
        ports.parse(text)
    assert "\n" not in str(caught.value)


def test_check_sorts_and_refuses_duplicates():
    assert ports.check([port(9000, 90, "udp"), port(8080)]) == [port(8080), port(9000, 90, "udp")]
    assert ports.check([port(8080), port(8080, protocol="udp")]) == [port(8080), port(8080, protocol="udp")]
    with pytest.raises(ports.PortError, match="host port 8080/tcp is published twice"):
        ports.check([port(8080, 80), port(8080, 81)])
    with pytest.raises(ports.PortError, match="published twice"):
        ports.check([port(8080, host_ip="127.0.0.1"), port(8080)])


@pytest.mark.parametrize("value, message", [
    ("8080:80", "must be a list"),
    ([port()] * 65, "at most 64"),
    ([["8080:80"]], "exactly host_ip, host_port"),
    ([{**port(), "extra": 1}], "exactly host_ip"),
    ([port(protocol="icmp")], "protocol 'icmp'"),
    ([port(host_port="8080")], "host_port '8080' is not a port number"),
    ([port(container_port=True)], "container_port True is not a port number"),
    ([port(host_ip=1)], "host_ip 1 is not an IPv4 address"),
    ([port(host_ip="::1")], "is not an IPv4 address"),
])
def test_check_refuses_malformed_requests(value, message):
    with pytest.raises(ports.PortError, match=message):
        ports.check(value)


def test_clash():
    assert ports.clash(port(), port(container_port=81))
    assert ports.clash(port(), port(host_ip="127.0.0.1"))  # every address includes localhost
    assert not ports.clash(port(host_ip="127.0.0.1"), port(host_ip="198.18.0.2"))
    assert not ports.clash(port(), port(protocol="udp"))
    assert not ports.clash(port(), port(8081))


def test_formats():
    assert ports.format_port(port()) == "0.0.0.0:8080->80/tcp"
    assert ports.describe(port()) == "8080/tcp"
    assert ports.describe(port(53, 53, "udp", "127.0.0.1")) == "127.0.0.1:53/udp"
