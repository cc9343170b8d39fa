"""IP address management and VNI allocation, as pure deterministic functions.

They run inside replicated commands: every node computes the same answer from the same state, so
two containers can never get one address and no lock is needed.

Rules (documented in the README):
- a network is an IPv4 CIDR between /8 and /30, written without host bits, of unicast addresses
  (not 0/8, loopback, link-local, multicast or the reserved 240/4: no host can use those);
- the first host address (network + 1) is the network's gateway, reserved: the address its bridge
  holds on every host (docs/design/networking.md); networks recorded before gateways existed have
  none, and every host address is a container's there;
- allocation takes the lowest free host address; a released address is reused by the next run;
- VNIs are allocated from 4096 upwards (docker's range), lowest unused first.
"""
from __future__ import annotations

import ipaddress

from ..errors import Conflict, StateError

MIN_PREFIX = 8
MAX_PREFIX = 30
FIRST_VNI = 4096
MAX_VNI = (1 << 24) - 1
# Ranges whose addresses a container cannot have as its own unicast address.
_NOT_UNICAST = tuple((ipaddress.ip_network(cidr), kind) for cidr, kind in (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved (240.0.0.0/4)")))


class IpamError(StateError):
    """A CIDR or allocation request that cannot be honoured; the message says how to fix it."""


class IpamConflict(IpamError, Conflict):
    """A valid request that collides with the state: an overlap, a full network, no VNI left."""


def parse_cidr(text: object) -> ipaddress.IPv4Network:
    if not isinstance(text, str) or not text.strip():
        raise IpamError(f"network {text!r} is not a CIDR — write it like 10.0.0.0/24")
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            fixed = ipaddress.ip_network(text.strip(), strict=False)
            raise IpamError(f"network {text} has host bits set — did you mean {fixed}?") from None
        raise IpamError(f"network {text!r} is not a valid CIDR ({error}) — write it like 10.0.0.0/24") from None
    if network.version != 4:
        raise IpamError(f"network {text} is IPv6 — only IPv4 networks are supported")
    if "/" not in text:
        raise IpamError(f"network {text!r} has no prefix length — write it like {text}/24")
    if network.prefixlen > MAX_PREFIX:
        raise IpamError(
            f"network {text} is too small (/{network.prefixlen}) — use a prefix of /{MAX_PREFIX} or shorter"
        )
    if network.prefixlen < MIN_PREFIX:
        raise IpamError(f"network {text} is too large (/{network.prefixlen}) — use a prefix of /{MIN_PREFIX} or longer")
    return network


def check_unicast(network: ipaddress.IPv4Network) -> None:
    """Refuse a new network of addresses no host can have (checked on creation only, so a network
    recorded before this rule can still be used and removed)."""
    for special, kind in _NOT_UNICAST:
        if network.overlaps(special):
            raise IpamError(f"network {network} is {kind} address space, not usable by containers — "
                            "use a private range such as 10.0.0.0/24")


def check_no_overlap(network: ipaddress.IPv4Network, existing: list[str]) -> None:
    for other in existing:
        if network.overlaps(ipaddress.ip_network(other)):
            raise IpamConflict(f"network {network} overlaps existing network {other} — pick a CIDR outside it")


def gateway_address(network: ipaddress.IPv4Network) -> str:
    return str(network.network_address + 1)


def lowest_free_address(network: ipaddress.IPv4Network, used: set[str]) -> str:
    first, last = int(network.network_address) + 1, int(network.broadcast_address) - 1
    for value in range(first, last + 1):
        candidate = str(ipaddress.IPv4Address(value))
        if candidate not in used:
            return candidate
    raise IpamConflict(f"network {network} is full ({last - first + 1} addresses in use) — remove containers "
                    "or use a larger network")


def lowest_free_vni(used: set[int]) -> int:
    for vni in range(FIRST_VNI, MAX_VNI + 1):
        if vni not in used:
            return vni
    raise IpamConflict("no VXLAN network identifier left")

