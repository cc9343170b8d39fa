"""The container's user: docker's ``--user`` (``name|uid[:group|gid]``) resolved against the image's
/etc/passwd and /etc/group, as runc does (libcontainer/user.GetExecUser).

A name must exist in /etc/passwd; a numeric uid need not (gid 0, home ``/``). An explicit group
sets the primary gid (a name must exist in /etc/group) and no supplementary groups; without one the
supplementary groups are every group listing the user's name. ``""`` is root. Pure, apart from
``read_small``, which reads the image's files without following them onto something that blocks.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

MAX_FILE = 1 << 20  # an /etc/passwd larger than this is not one we parse
MAX_ID = 2**32 - 2


class UserError(ValueError):
    pass


@dataclass(frozen=True)
class ExecUser:
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    home: str = "/"


def read_small(path: str) -> str:
    """The text of a regular file (at most MAX_FILE bytes), or "" if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, MAX_FILE).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _number(text: str) -> int | None:
    if text.isdigit() and len(text) < 11:
        value = int(text)
        if value <= MAX_ID:
            return value
    return None


def _entries(text: str, fields: int) -> list[list[str]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            out.append(parts)
    return out


def resolve(spec: str, passwd: str, group: str) -> ExecUser:
    """*spec* (``name|uid[:group|gid]``; "" = root) against the text of /etc/passwd and /etc/group."""
    user_part, sep, group_part = (spec or "").partition(":")
    if sep and not group_part:
        raise UserError(f"user {spec!r}: empty group after ':'")
    users = _entries(passwd, 7)
    uid, gid, home, name = 0, 0, "/", ""
    if user_part:
        numeric = _number(user_part)
        match = next((u for u in users if (u[0] == user_part if numeric is None else _number(u[2]) == numeric)), None)
        if match is None and numeric is None:
            raise UserError(f"user {user_part!r} is not in the image's /etc/passwd")
        if match is not None:
            uid, gid, home, name = _number(match[2]) or 0, _number(match[3]) or 0, match[5] or "/", match[0]
        else:
            uid = numeric  # type: ignore[assignment]
    else:
        root = next((u for u in users if _number(u[2]) == 0), None)
        if root is not None:
            gid, home, name = _number(root[3]) or 0, root[5] or "/", root[0]
    groups = _entries(group, 4)
    supplementary: tuple[int, ...] = ()
    if group_part:
        numeric = _number(group_part)
        found = next((g for g in groups if g[0] == group_part or (numeric is not None and _number(g[2]) == numeric)),
                     None)
        if found is not None:
            gid = _number(found[2]) or 0
        elif numeric is not None:
            gid = numeric
        else:
            raise UserError(f"group {group_part!r} is not in the image's /etc/group")
    elif name:
        supplementary = tuple(_number(g[2]) or 0 for g in groups if name in g[3].split(","))
    return ExecUser(uid, gid, supplementary, home)


def switch(user: ExecUser) -> None:
    """setgroups, setgid, setuid — in that order, as the last privileged step before execve.
    Leaving uid 0 clears the permitted and effective capabilities (no SECBIT_KEEP_CAPS)."""
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
