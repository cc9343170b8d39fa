"""Linux capabilities by name, the containers' default set, and ``--cap-add``/``--cap-drop`` (pure).

A leaf module (no I/O, no ctypes): the runtime, the container spec and the workstation's CLI share
it. Names are accepted as ``NET_RAW``, ``net_raw`` or ``CAP_NET_RAW`` and kept as ``CAP_NET_RAW``;
``ALL`` means every capability. ``effective`` applies docker's rules: with ``ALL`` added, every
capability minus the dropped ones; with ``ALL`` dropped, only the added ones; else the defaults plus
the added minus the dropped.
"""
from __future__ import annotations

from typing import Iterable

CAPABILITIES = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}
ALL = "ALL"

DOCKER_DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
# Docker's set without CAP_MKNOD (device nodes: docs/security.md) and CAP_NET_RAW (raw sockets let a
# container forge any frame on its network: ARP, spoofed sources, VXLAN aimed at the host). `ping`
# needs neither: Linux's unprivileged ICMP sockets serve it (net.ipv4.ping_group_range, see below).
DEFAULT_CAPS = tuple(cap for cap in DOCKER_DEFAULT_CAPS if cap not in ("CAP_MKNOD", "CAP_NET_RAW"))


class CapabilityError(ValueError):
    """An unknown capability name (the message names it and says where the list is)."""


def canonical(name: str, option: str = "capability") -> str:
    """'net_raw' -> 'CAP_NET_RAW'; 'all' -> 'ALL'. Raises CapabilityError for unknown names."""
    if not isinstance(name, str):
        raise CapabilityError(f"{option}: {name!r} is not a capability name")
    upper = name.strip().upper()
    if upper == ALL:
        return ALL
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in CAPABILITIES:
        raise CapabilityError(f"{option}: unknown capability {name!r} (names as in capabilities(7), e.g. NET_RAW)")
    return full


def normalize(names: Iterable[str], option: str = "capability") -> tuple[str, ...]:
    """Canonical, de-duplicated, sorted names."""
    return tuple(sorted({canonical(name, option) for name in names}))


def effective(add: Iterable[str] = (), drop: Iterable[str] = (),
              default: Iterable[str] = DEFAULT_CAPS) -> tuple[str, ...]:
    """The capability set of a container started with *add* and *drop* (docker's rules)."""
    added, dropped = set(normalize(add, "cap-add")), set(normalize(drop, "cap-drop"))
    if ALL in added:
        chosen = set(CAPABILITIES) - dropped
    elif ALL in dropped:
        chosen = added
    else:
        chosen = (set(default) | added) - dropped
    return tuple(sorted(chosen - {ALL}, key=CAPABILITIES.__getitem__))


def mask(names: Iterable[str]) -> int:
    value = 0
    for name in names:
        value |= 1 << CAPABILITIES[name]
    return value


def names_of(value: int) -> tuple[str, ...]:
    return tuple(name for name, bit in sorted(CAPABILITIES.items(), key=lambda item: item[1]) if value >> bit & 1)
