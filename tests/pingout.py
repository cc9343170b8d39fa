"""Reading ping's output in either image: Alpine's busybox ping or the iputils ping the busybox
fallback rootfs carries (lab/rootfs.py). Sequence numbers are counted from 0 as busybox counts them
(iputils' icmp_seq starts at 1); a summary is (transmitted, received). Anything else is no match."""
from __future__ import annotations

import re

_SUMMARY = re.compile(r"^(\d+) packets transmitted, (\d+) (?:packets )?received", re.MULTILINE)


def replies(log: str, ip: str | None = None) -> set[int]:
    """The sequence numbers of the echo replies in *log* (from *ip* only, when given)."""
    source = re.escape(ip) if ip else r"[\d.]+"
    # busybox: "64 bytes from 10.0.0.3: seq=0 …"; iputils: "… from 10.0.0.3: icmp_seq=1 …" or, for a
    # target given by name, "… from db (10.0.0.3): icmp_seq=1 …"
    found = re.findall(rf"bytes from (?:\S+ \()?{source}\)?: (icmp_)?seq=(\d+) ", log)
    return {int(seq) - (1 if iputils else 0) for iputils, seq in found}


def summary(log: str) -> tuple[int, int] | None:
    """(transmitted, received) from the statistics line, None when *log* has none."""
    match = _SUMMARY.search(log)
    return (int(match[1]), int(match[2])) if match else None


def all_answered(log: str, count: int) -> bool:
    """The statistics line says *count* requests went out and *count* replies came back."""
    return summary(log) == (count, count)
