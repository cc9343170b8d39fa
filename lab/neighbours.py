"""The machine's ARP table, sized for the labs' hosts (they all share this one kernel's).

Linux keeps one neighbour table for every network namespace, with one limit (``gc_thresh3``,
1024 by default). A real host has its own, and needs an entry for each peer it talks to; N lab
hosts that all talk to each other need ~N² entries of the one table. Past the limit the kernel
logs "neighbor table overflow" and resolves no new address: connections hang in SYN-SENT and time
out. ``ensure(total_hosts, record)`` raises ``gc_thresh2``/``gc_thresh3`` when the labs need more
(never lowers them), remembering the machine's values in *record*; ``settle(total_hosts, record)``, after
a ``down``, lowers them again as far as the labs still running allow: to the machine's own values
once the last lab is gone. docs/design/lab.md, "Neighbour table".
"""
from __future__ import annotations

import json
from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4/neigh/default")
KEYS = ("gc_thresh2", "gc_thresh3")


def needed(total_hosts: int) -> dict[str, int]:
    """The limits for *total_hosts* lab hosts: each with an entry for every other and for the
    workstation (N·(N+1)), doubled for headroom; gc_thresh2 (where the kernel starts to reclaim
    within 5 s) at half of the hard limit, as in the kernel's defaults."""
    hard = 2 * total_hosts * (total_hosts + 1)
    return {"gc_thresh2": hard // 2, "gc_thresh3": hard}


def _read(sysctl: Path) -> dict[str, int]:
    return {key: int((sysctl / key).read_text()) for key in KEYS}


def ensure(total_hosts: int, record: Path, sysctl: Path | None = None) -> bool:
    """Raise the limits where *total_hosts* need more; True if anything was raised. The machine's
    own values are recorded (once) in *record* before the first change."""
    sysctl = sysctl or SYSCTL
    have, want = _read(sysctl), needed(total_hosts)
    raise_ = {key: value for key, value in want.items() if value > have[key]}
    if not raise_:
        return False
    if not record.exists():
        record.write_text(json.dumps(have))
    for key in ("gc_thresh3", "gc_thresh2"):  # the hard limit first: thresh2 must stay below it
        if key in raise_:
            (sysctl / key).write_text(str(raise_[key]))
    return True


def settle(total_hosts: int, record: Path, sysctl: Path | None = None) -> None:
    """After a lab is gone: the limits go back to the machine's own (*record*), or as far toward
    them as the *total_hosts* of the labs still running allow; the record goes with the last step."""
    if not record.exists():
        return
    sysctl = sysctl or SYSCTL
    saved, want = json.loads(record.read_text()), needed(total_hosts)
    target = {key: max(int(saved[key]), want[key]) for key in KEYS}
    for key in ("gc_thresh2", "gc_thresh3"):  # lowering: the soft limit first, then the hard one
        (sysctl / key).write_text(str(target[key]))
    if target == {key: int(saved[key]) for key in KEYS}:
        record.unlink()
