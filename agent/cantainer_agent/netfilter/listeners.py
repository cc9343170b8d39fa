"""Which ports the host's own processes listen on (``/proc/net/{tcp,udp}{,6}``), so a published port
never hides one (a DNAT rule wins over a local socket: ``-p 22:22`` would take sshd away).

``parse`` is pure (one file's text → ``(address, port)`` of its listening sockets: TCP in LISTEN,
every bound UDP socket); ``listening(protocol)`` reads this network namespace's files.
"""
from __future__ import annotations

import ipaddress
import struct

PROC_NET = "/proc/net"
TCP_LISTEN = "0A"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(struct.pack("<I", struct.unpack(">I", raw)[0])))
    words = struct.unpack("<4I", raw)  # four host-order 32-bit words
    address = ipaddress.IPv6Address(struct.pack(">4I", *words))
    return str(address.ipv4_mapped or address)


def parse(text: str, protocol: str) -> set[tuple[str, int]]:
    found = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        address, port = fields[1].rsplit(":", 1)
        if protocol == "tcp" and fields[3] != TCP_LISTEN:
            continue
        found.add((_address(address), int(port, 16)))
    return found


def listening(protocol: str, proc_net: str = PROC_NET) -> set[tuple[str, int]]:
    """(address, port) of this namespace's listening *protocol* sockets, IPv4 and IPv6."""
    found: set[tuple[str, int]] = set()
    for name in (protocol, protocol + "6"):
        try:
            with open(f"{proc_net}/{name}") as f:
                found |= parse(f.read(), protocol)
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
    return found


def holder(port: dict, sockets: set[tuple[str, int]], ignore: set[str] = frozenset()) -> str | None:
    """The ``address:port`` of a socket that publishing *port* would hide, if any; sockets bound to
    an address in *ignore* (the overlay's gateways: the DNAT never takes those) do not count."""
    wildcard = port["host_ip"] == "0.0.0.0"
    for address, number in sorted(sockets):
        if number != port["host_port"] or address in ignore:
            continue
        if wildcard or address in ("0.0.0.0", "::", port["host_ip"]):
            return f"[{address}]:{number}" if ":" in address else f"{address}:{number}"
    return None
