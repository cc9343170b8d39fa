"""Make an image available offline: seed the workstation cache from ../shared/images, or build one.

The pinned Alpine tarball is copied into the cache only when its sha256 matches the pin. Without it
the lab builds a small busybox-static rootfs (deterministic bytes, so its sha256 is stable) and the
lab inventory points the `alpine` image at it.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from cantainer.images import ALPINE, cache_dir, cached_path, file_sha256

BUSYBOX = Path("/bin/busybox")
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_images_dir() -> Path:
    return Path(os.environ.get("CANTAINER_SHARED_IMAGES", REPO_ROOT.parent / "shared" / "images"))


def seed_pinned_alpine() -> bool:
    """Copy the verified Alpine tarball into the cache; False when it is absent or does not match."""
    target = cached_path(ALPINE.sha256)
    if target.exists() and file_sha256(target) == ALPINE.sha256:
        return True
    for candidate in sorted(shared_images_dir().glob(f"alpine-minirootfs-{ALPINE.version}-*.tar.gz")):
        if file_sha256(candidate) == ALPINE.sha256:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copyfile(candidate, partial)
            os.replace(partial, target)
            return True
    return False


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname, info.size = link, len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def busybox_rootfs_bytes() -> bytes:
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True).stdout.split()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in (
            "bin",
            "sbin",
            "usr",
            "usr/bin",
            "usr/sbin",
            "etc",
            "proc",
            "sys",
            "dev",
            "tmp",
            "root",
            "var",
            "run",
        ):
            _add(tar, f"./{directory}", tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755)
        _add(tar, "./bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in sorted(applets):
            if applet != "bin/busybox":
                depth = applet.count("/")
                _add(tar, f"./{applet}", tarfile.SYMTYPE, 0o777, link="../" * depth + "bin/busybox")
        _add(
            tar,
            "./etc/passwd",
            tarfile.REGTYPE,
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        _add(tar, "./etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def build_busybox_image() -> tuple[Path, str]:
    """Build the fallback rootfs into the cache; return (path, sha256)."""
    data = busybox_rootfs_bytes()
    staging = cache_dir() / "busybox-rootfs.partial"
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.write_bytes(data)
    sha = file_sha256(staging)
    target = cached_path(sha)
    os.replace(staging, target)
    return target, sha
