"""Small durable-file helpers (atomic replace with fsync)."""

from __future__ import annotations

import os


def fsync_path(path: str, directory: bool = False) -> None:
    """fsync a file, or a directory (so a rename inside it survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fsync_path(path, directory=True)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write *data* to *path* atomically: temp file, fsync, rename, fsync directory."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def ensure_dir(path: str, mode: int) -> None:
    """Create *path* (and parents) if missing; set *mode* on the leaf when we create it."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)
