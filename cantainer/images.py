"""Pinned rootfs tarballs (``alpine``, the inventory's ``[images.NAME]``) and the image cache's place.

Such an image is one rootfs tarball pinned by sha256, run as a one-layer image (run_image.py). The
cache keeps each tarball once, as ``<cache>/<sha256>.tar.gz``, so it is fetched (or seeded) once; the
same directory holds the store of OCI images (image_store.py).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cantainer.errors import CantainerError


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


class ImageError(CantainerError):
    """An image cannot be resolved, fetched or verified."""


@dataclass(frozen=True)
class ResolvedImage:
    name: str
    sha256: str
    path: Path  # a local tarball whose sha256 has been verified


def _verified(name: str, path: Path, sha256: str) -> ResolvedImage:
    """The tarball, once its sha256 matched: hashed once per change of the file (its path, inode, size
    and mtime are remembered beside the cache), not on every `run` (~8 ms of CPU for Alpine)."""
    try:
        info = path.stat()
        seen = f"{path.resolve()}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}\n"
    except OSError:
        seen = ""
    memo = cache_dir() / f"{sha256}.verified"
    try:
        if seen and memo.read_text() == seen:
            return ResolvedImage(name, sha256, path)
    except OSError:
        pass
    actual = file_sha256(path)
    if actual != sha256:
        raise ImageError(f"image {name!r}: sha256 mismatch for {path} (expected {sha256[:16]}…, got {actual[:16]}…)",
                         "the file is corrupt or not the pinned image; fix the path or the sha256 in the inventory")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(seen)
    except OSError:
        pass  # a read-only cache: hashed again next time
    return ResolvedImage(name, sha256, path)


def download(name: str, url: str, sha256: str, timeout: float = 30) -> Path:
    """Fetch *url* into the cache under its pinned *sha256* (verified before it lands there)."""
    import urllib.request

    target = cached_path(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".download")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ImageError(f"image {name!r}: cannot download {url} ({error})",
                         f"put the tarball at {target} (it is checked against sha256 {sha256[:16]}…)") from None
    if file_sha256(partial) != sha256:
        partial.unlink(missing_ok=True)
        raise ImageError(f"image {name!r}: sha256 mismatch for the download from {url}",
                         "the pin or the mirror is wrong; check the sha256 in the inventory")
    partial.replace(target)
    return target


def resolve_image(name: str, overrides: dict) -> ResolvedImage:
    """The inventory's [images.NAME] wins over the built-in catalog; the cache avoids re-fetching."""
    source = overrides.get(name)
    if source is not None:
        if source.path is not None:
            if not source.path.exists():
                raise ImageError(
                    f"image {name!r}: file {source.path} does not exist", "fix `path` in the inventory's [images]"
                )
            return _verified(name, source.path, source.sha256)
        url, sha256 = source.url, source.sha256
    elif name in CATALOG:
        url, sha256 = CATALOG[name].url, CATALOG[name].sha256
    else:
        from cantainer.inventory import IMAGE_NAME

        known = ", ".join(sorted(set(CATALOG) | set(overrides)))
        if not IMAGE_NAME.fullmatch(name):  # then no [images.NAME] can define it either
            raise ImageError(f"unknown image {name!r}: not a valid image name", f"use one of: {known}")
        raise ImageError(f"unknown image {name!r}", f"use one of: {known}, or add [images.{name}] to the inventory")
    cached = cached_path(sha256)
    if cached.exists():
        return _verified(name, cached, sha256)
    return ResolvedImage(name, sha256, download(name, url, sha256))
