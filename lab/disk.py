"""A lab's disk: one sparse ext4 image per lab, loop-mounted at ``NAME/hosts``.

``attach(lab_dir)`` makes (once) and mounts ``lab_dir/disk.img`` on ``lab_dir/hosts``, where every
host's own directories live; ``detach(lab_dir)`` unmounts it. The mount is a shared peer group, so
host mount namespaces made afterwards (slaves of it) see the unmount and hold nothing of it. Where
no loop device can be had (a container without /dev/loop-control, say), ``hosts`` stays a plain
directory of the machine's file system and ``attach`` says so in one line.

Why: hosts of a real fleet each have their own disk. Sharing the machine's, a lab host paid for
every other lab's churn: on an ext4 without a journal, as this machine's is, creating a file in a
block group where many were deleted in the last minutes scans past each of them, so a host's first
`run` unpacked the Alpine layer in 300-650 ms instead of ~70. The image has no journal either, like
the file system the hosts had before, so an fsync costs what it did. docs/design/lab.md, "Disks".
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess
from pathlib import Path

from lab.fullos import is_mounted

IMAGE = "disk.img"
MOUNTPOINT = "hosts"
SIZE = 64 << 30  # sparse: only what the hosts write takes space; room for MAX_HOSTS hosts' images
BLOCK_SIZE = 4096  # the loop device's sector size: the image's file system's, so direct I/O stays aligned
# <linux/loop.h>: LOOP_CONFIGURE takes struct loop_config {u32 fd, block_size; struct loop_info64
# (…, u32 lo_flags at byte 52, …: 232 bytes); u64 reserved[8]}
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
_LOOP_CONFIG = "=II52xI176x64x"
MS_SHARED = 1 << 20
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


class DiskError(Exception):
    """The lab's disk cannot be made, mounted or unmounted; the message says why and what to do."""


def image_of(lab_dir: Path) -> Path:
    return lab_dir / IMAGE


def mountpoint_of(lab_dir: Path) -> Path:
    return lab_dir / MOUNTPOINT


def attach(lab_dir: Path, report=print) -> bool:
    """Mount the lab's disk on ``hosts`` (made on first use); True if it is mounted, False if
    ``hosts`` is a plain directory (no loop device here, or a lab made before disks existed)."""
    image, target = image_of(lab_dir), mountpoint_of(lab_dir)
    target.mkdir(parents=True, exist_ok=True)
    if is_mounted(target):
        return True
    if not image.exists():
        if any(target.iterdir()):  # a lab from before disks: its hosts' data stays where it is
            return False
        if not os.path.exists("/dev/loop-control"):
            report("lab: no loop devices here (/dev/loop-control): the hosts' disks are directories of the "
                   "machine's file system")
            return False
        _make(image)
    _mount_loop(image, target)
    if _libc.mount(None, str(target).encode(), None, MS_SHARED, None) != 0:
        error = os.strerror(ctypes.get_errno())
        detach(lab_dir)
        raise DiskError(f"cannot make {target} a shared mount: {error}")
    return True


def detach(lab_dir: Path) -> None:
    """Unmount the lab's disk (every mount stacked on ``hosts``); nothing to do if it is not mounted.
    The loop device goes with the last unmount (``mount -o loop`` sets it to clear itself)."""
    target = mountpoint_of(lab_dir)
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), 0) != 0:
            busy = ctypes.get_errno()
            # something of the machine still has a file open on it: detach now, freed when it closes
            if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
                error = os.strerror(ctypes.get_errno())
                raise DiskError(f"cannot unmount {target}: {os.strerror(busy)}, then {error} — check what "
                                "still uses it, then run down again")


def _mount_loop(image: Path, target: Path) -> None:
    """Mount *image* on *target* through a free loop device that reads and writes the image with
    direct I/O (one page cache, the disk's, as a real disk has) and clears itself at the unmount."""
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
    finally:
        os.close(control)
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        device = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        os.close(backing)
        raise DiskError(f"cannot open /dev/loop{number}: {error.strerror}") from None
    try:
        config = struct.pack(_LOOP_CONFIG, backing, BLOCK_SIZE, LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO)
        try:
            fcntl.ioctl(device, LOOP_CONFIGURE, config)
        except OSError as error:  # EBUSY: another process took it first (the next `up` tries again)
            raise DiskError(f"cannot attach {image} to /dev/loop{number}: {error.strerror}") from None
        if _libc.mount(f"/dev/loop{number}".encode(), str(target).encode(), b"ext4", 0, b"noinit_itable") != 0:
            raise DiskError(f"mount failed: /dev/loop{number} ({image}) on {target}: "
                            f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(device)  # the mount holds the device now; without one, this detaches it
        os.close(backing)


def _make(image: Path) -> None:
    partial = image.with_suffix(".partial")
    try:
        with open(partial, "wb") as handle:
            handle.truncate(SIZE)
        # lazy inode tables: a fresh sparse file reads as zeros, nothing to write now
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard",
              "-L", "cantainer-lab", str(partial)], "mkfs.ext4")
        os.replace(partial, image)
    finally:
        partial.unlink(missing_ok=True)


def _run(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DiskError(f"{what} failed: {error}") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise DiskError(f"{what} failed: {detail}")
