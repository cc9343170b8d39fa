"""The member list a node restarts with (``members.json``), and the files of a voter's raft state.

A node must restart with the *current* voters, never with the seeds it was configured with: a
bootstrap node restarted with ``[]`` elects itself alone (docs/design/raft.md, "restart").
The file is written atomically with fsync whenever the voters change.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .. import layout
from ..fsutil import atomic_write
from .errors import RaftError

ROLES = ("voter", "standby")


@dataclass(frozen=True)
class Members:
    cluster: str
    self_addr: str
    members: tuple[str, ...]  # the voters' raft addresses, sorted (self included when a voter)
    role: str = "voter"  # or "standby": a non-voting member (docs/design/raft.md, "roles")

    @property
    def partners(self) -> list[str]:
        return [m for m in self.members if m != self.self_addr]


def members_path(data_dir: str) -> str:
    return os.path.join(data_dir, layout.MEMBERS_NAME)


def journal_path(data_dir: str) -> str:
    return os.path.join(data_dir, layout.JOURNAL_NAME)


def voter_files(data_dir: str) -> tuple[str, str, str]:
    """The journal, the term/vote file and the snapshot of a voter."""
    return tuple(os.path.join(data_dir, name) for name in (layout.JOURNAL_NAME, layout.TERM_NAME, layout.DUMP_NAME))


def remove_voter_files(data_dir: str) -> None:
    for path in voter_files(data_dir):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def save_members(data_dir: str, cluster: str, self_addr: str, members: list[str] | set[str] | tuple[str, ...],
                 role: str = "voter") -> Members:
    if role not in ROLES:
        raise ValueError(f"unknown raft role {role!r}")
    allm = tuple(sorted(set(members) | {self_addr} if role == "voter" else set(members) - {self_addr}))
    body = {"version": 1, "cluster": cluster, "self": self_addr, "role": role, "members": list(allm)}
    atomic_write(members_path(data_dir), (json.dumps(body, indent=1) + "\n").encode(), 0o600)
    return Members(cluster, self_addr, allm, role)


def load_members(data_dir: str) -> Members | None:
    path = members_path(data_dir)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RaftError(f"{path} is unreadable ({exc}); move it away to rejoin through the seeds") from None
    try:
        members = data["members"]
        if not (isinstance(members, list) and all(isinstance(m, str) for m in members)):
            raise TypeError("members")
        role = data.get("role", "voter")
        if role not in ROLES:
            raise TypeError("role")
        return Members(str(data["cluster"]), str(data["self"]), tuple(sorted(members)), role)
    except (KeyError, TypeError):
        raise RaftError(f"{path} is malformed; move it away to rejoin through the seeds") from None
