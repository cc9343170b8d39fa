"""Known images and the workstation's content-addressed image cache.

An image is an Alpine-style rootfs tarball pinned by sha256. The cache keeps each tarball once, as
``<cache>/<sha256>.tar.gz``, so a tarball is fetched (or seeded) once and pushed to hosts from there.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PinnedImage:
    name: str
    version: str
    url: str
    sha256: str


ALPINE = PinnedImage(
    name="alpine",
    version="3.20.3",
    url="https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/x86_64/alpine-minirootfs-3.20.3-x86_64.tar.gz",
    sha256="d4e6fd67dcf75e40c451560ac7265166c2b72a0f38ddc9aae756a7de3d1efa0c",
)

CATALOG = {ALPINE.name: ALPINE}


def cache_dir() -> Path:
    """$CANTAINER_CACHE, else $XDG_CACHE_HOME/cantainer/images, else ~/.cache/cantainer/images."""
    if os.environ.get("CANTAINER_CACHE"):
        return Path(os.environ["CANTAINER_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cantainer" / "images"


def cached_path(sha256: str) -> Path:
    return cache_dir() / f"{sha256}.tar.gz"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
