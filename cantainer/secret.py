"""The cluster secret: made once on the workstation, kept 0600, never printed or logged."""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cantainer.errors import CantainerError


class SecretError(CantainerError):
    pass


def load_or_create_secret(path: Path) -> bytes:
    """The secret at `path`, created (0600, in a 0700 directory) when absent.

    A secret readable by group or others is refused rather than silently fixed: someone may have
    read it, so the operator must decide whether to rotate it.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(32).encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(value + b"\n")
        return value
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"cluster secret {path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):o})",
            f"run `chmod 600 {path}` (and rotate it if others may have read it)",
        )
    value = path.read_bytes().strip()
    if len(value) < 16:
        raise SecretError(f"cluster secret {path} is too short", "delete it to let `cantainer up` make a new one")
    return value
