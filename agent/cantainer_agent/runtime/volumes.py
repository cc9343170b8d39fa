"""A container's volumes and bind mounts, made by its init (what is allowed: ../mounts.py).

Before pivot_root, while host paths are reachable, ``open_sources`` opens each source once
(O_PATH) and checks the path the kernel resolved — symlinks and ``..`` followed — against the
protected directories: by name (not one of them, not below, not above) and by identity (no
directory from the source up to / is one of them, so another path to the same directory, e.g. a
bind mount of it elsewhere, is refused too); then it takes a detached copy of that mount
(open_tree: not the mounts below it) and closes the descriptor. After pivot_root ``attach``
creates each target inside the container's root — where every symlink and ``..`` resolves inside
it — seeds an empty volume from the image's directory there (docker's copy-up: owner, mode and
content), attaches the copy (move_mount) and remounts it nosuid,nodev (and ro). Nothing of the
container runs yet, so nothing races these steps; every descriptor is closed before the working
directory is entered (runc CVE-2024-21626).
"""
from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass

from .. import mounts as policy
from . import linux
from .linux import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REMOUNT


class MountRefused(RuntimeError):
    """A mount the container may not have, or that cannot be made (one line: what, where)."""


@dataclass
class Opened:
    mount: dict  # the request's {kind, source, target, readonly, name, copy_up}
    tree: int  # the detached copy of the source's mount
    is_dir: bool

    @property
    def what(self) -> str:
        return f"volume {self.mount['name']}" if self.mount.get("kind") == policy.VOLUME else \
            f"bind mount {self.mount['source']}"


def _identities(paths) -> set[tuple[int, int]]:
    found = set()
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        found.add((info.st_dev, info.st_ino))
    return found


def _reaches_protected(real: str, is_dir: bool, protected: set[tuple[int, int]]) -> bool:
    """Whether *real* or a directory above it is one of the *protected* (dev, inode) pairs."""
    fd = os.open(real if is_dir else os.path.dirname(real) or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) in protected:
                return True
            parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            above = os.fstat(parent)
            os.close(fd)
            fd = parent
            if (above.st_dev, above.st_ino) == (info.st_dev, info.st_ino):  # the root
                return False
    finally:
        os.close(fd)


def open_sources(requested: list[dict], protected: list[str]) -> list[Opened]:
    """Open and check every source (host paths: call before pivot_root, in the new mount namespace)."""
    if not requested:  # nothing to check against the protected paths (~30 stat calls saved per start)
        return []
    names = sorted({os.path.realpath(p) for p in protected} | set(protected))
    identities = _identities(names)
    opened: list[Opened] = []
    try:
        for mount in requested:
            opened.append(_open_source(mount, tuple(names), identities))
    except BaseException:
        for item in opened:
            os.close(item.tree)
        raise
    return opened


def _open_source(mount: dict, names: tuple[str, ...], identities: set[tuple[int, int]]) -> Opened:
    source, kind = mount["source"], mount.get("kind")
    label = f"volume {mount.get('name')}" if kind == policy.VOLUME else f"bind mount source {source}"
    flags = os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if kind == policy.VOLUME else 0)
    try:
        fd = os.open(source, flags)
    except FileNotFoundError:
        raise MountRefused(f"{label}: {source} does not exist on this host — create it first") from None
    except OSError as error:
        raise MountRefused(f"{label}: cannot open {source}: {error.strerror}") from None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        info = os.fstat(fd)
        is_dir = stat.S_ISDIR(info.st_mode)
        if kind == policy.VOLUME:
            if real != source or not is_dir:
                raise MountRefused(f"{label}: {source} is not the volume's own directory")
        else:
            reason = policy.refusal(real, names)
            if reason is None and _reaches_protected(real, is_dir, identities):
                reason = "it is another path to cantainer's or the kernel's own files"
            if reason:
                shown = source if real == source else f"{source} (resolves to {real})"
                raise MountRefused(f"bind mount source {shown} is refused: {reason} — bind a directory of your own")
            if not (is_dir or stat.S_ISREG(info.st_mode) or stat.S_ISSOCK(info.st_mode)):
                raise MountRefused(f"{label} is a device or pipe: bind a directory, a file or a socket")
        return Opened(mount, linux.open_tree(fd), is_dir)
    finally:
        os.close(fd)


def attach(opened: list[Opened]) -> None:
    """Mount every opened source at its target, parents first (call after pivot_root); closes them all."""
    try:
        for item in sorted(opened, key=lambda o: o.mount["target"].count("/")):
            try:
                _attach(item)
            except OSError as error:
                raise MountRefused(f"{item.what} on {item.mount['target']}: {error.strerror or error}") from None
    finally:
        for item in opened:
            os.close(item.tree)


def _attach(item: Opened) -> None:
    target = _make_target(item)
    if item.mount.get("copy_up") and item.is_dir and os.path.isdir(target):
        seed = f"/proc/self/fd/{item.tree}"
        if not os.listdir(seed):
            copy_tree(target, seed)
    linux.move_mount(item.tree, target)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if item.mount.get("readonly") else 0)
    linux.mount(None, target, None, flags)
    linux.mount(None, target, None, MS_PRIVATE)  # no propagation to or from the host's copy


def _make_target(item: Opened) -> str:
    """The target inside the container's root (symlinks resolved there), created like the source."""
    target = os.path.realpath(item.mount["target"])
    for root in policy.KERNEL_DIRS:
        if target == root or target.startswith(root + "/"):
            raise MountRefused(f"{item.what}: target {item.mount['target']} leads into {root} in the image")
    if item.is_dir:
        if os.path.lexists(target) and not os.path.isdir(target):
            raise MountRefused(f"{item.what} is a directory, but {item.mount['target']} is a file in the image")
        os.makedirs(target, 0o755, exist_ok=True)
        return target
    os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
    if os.path.isdir(target):
        raise MountRefused(f"{item.what} is a file, but {item.mount['target']} is a directory in the image")
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
    return target


def copy_tree(source: str, target: str) -> None:
    """Copy the directory *source* into the empty directory *target*: content, owners, modes, times.
    Device nodes, pipes and sockets are not copied (the volume is nodev anyway)."""
    for entry in os.scandir(source):
        info = entry.stat(follow_symlinks=False)
        path = os.path.join(target, entry.name)
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(path, 0o700)
            copy_tree(entry.path, path)
        elif stat.S_ISREG(info.st_mode):
            shutil.copyfile(entry.path, path, follow_symlinks=False)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(entry.path), path)
        else:
            continue
        _copy_metadata(info, path, follow=False)
    _copy_metadata(os.lstat(source), target, follow=True)  # the target may be a /proc/self/fd link


def _copy_metadata(info: os.stat_result, path: str, follow: bool) -> None:
    os.chown(path, info.st_uid, info.st_gid, follow_symlinks=follow)
    if follow or not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode))  # after chown, which clears set-id bits
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=follow)
