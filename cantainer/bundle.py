"""The agent bundle: everything a host needs besides python3, in one zip archive named by its hash.

Contents: the `cantainer_agent` package, pysyncobj, pyroute2 and dnslib (pure Python), and — only
for a host without a usable cryptography of its own (``host_has_cryptography``; Ubuntu ships one) —
cryptography with cffi's `_cffi_backend` (compiled: they must match the host's CPU and Python).
When the host's platform equals the workstation's, they come from this environment; otherwise from
wheels in the wheel cache (``~/.cache/cantainer/wheels``), which the error message tells how to fill.

A pure bundle for a host whose Python is the workstation's minor version also carries the bytecode
of every module (``Bundle.magic`` names its interpreter): the host keeps the zip as it is and runs
it (``python3 BUNDLE``), importing from it, with nothing unpacked or compiled. Any other bundle is
unpacked into a directory of the same name on the host (``remote.APPLY`` decides, by the magic).

The archive is deterministic (sorted entries, fixed times, deflate -9; built once and cached), so the
same inputs give the same hash and `up` can skip hosts that already have it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import marshal
import os
import platform
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from cantainer.errors import CantainerError

PURE_PACKAGES = ("cantainer_agent", "pysyncobj", "pyroute2", "dnslib")
COMPILED_PACKAGES = ("cryptography", "cffi")
COMPILED_MODULES = ("_cffi_backend",)
# The oldest cryptography PySyncObj's encryption works with that a supported host ships (Ubuntu
# 22.04: 3.4.8): Fernet and PBKDF2HMAC with default_backend.
MIN_HOST_CRYPTOGRAPHY = (3, 4)
FORMAT = b"zip+deflate9 v3"  # part of the cache key: a change of the archive format rebuilds
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: entries carry no build time
# Built bundles kept in the cache, most recently used first: every upgrade (or edit, in a checkout)
# makes a new one, and they are 0.7-6 MB each. Enough for a pure and a compiled bundle of a few
# versions or checkouts in use at once; an evicted one is rebuilt (a second) when needed again.
KEEP_CACHED = 8


class BundleError(CantainerError):
    """The bundle for a host's platform cannot be built."""


@dataclass(frozen=True)
class Platform:
    """What a compiled extension must match: CPU architecture and CPython minor version."""

    machine: str
    python: tuple[int, int]

    @property
    def tag(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}-{self.machine}"

    @classmethod
    def local(cls) -> "Platform":
        return cls(platform.machine(), sys.version_info[:2])


def host_has_cryptography(version: str | None) -> bool:
    """Is the host's own cryptography (its version as the probe read it) one the agent can use?"""
    if not version:
        return False
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            return False
        parts.append(int(digits))
    return tuple(parts) >= MIN_HOST_CRYPTOGRAPHY


@dataclass(frozen=True)
class Bundle:
    digest: str  # sha256 of the archive bytes; names the bundle on hosts
    data: bytes = field(repr=False)  # megabytes: never in a repr (asyncio formats task reprs)
    platform: Platform = field(default_factory=Platform.local)
    compiled: bool = True  # carries cryptography and cffi (else the host's own cryptography is used)
    magic: str | None = None  # hex importlib.util.MAGIC_NUMBER of the bytecode it carries (None: sources only)

    @property
    def short(self) -> str:
        return self.digest[:16]


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cantainer"


def _package_files(name: str) -> list[tuple[str, Path]]:
    """(archive name, file) for an importable package or single-file module of this environment."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise BundleError(f"python package {name!r} is missing from the workstation environment",
                          "reinstall cantainer (`make setup`)")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:
        root = origin.parent
        return [(f"{name}/{path.relative_to(root).as_posix()}", path) for path in sorted(root.rglob("*"))
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"]
    return [(origin.name, origin)]


def _local_sources(names: tuple[str, ...]) -> list[tuple[str, Path]]:
    return [entry for name in names for entry in _package_files(name)]


def _read_local(sources: list[tuple[str, Path]]) -> list[tuple[str, bytes, int]]:
    return [(arcname, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644) for arcname, path in sources]


def _wheel_sources(target: Platform) -> list[Path]:
    wheel_dir = cache_root() / "wheels" / target.tag
    wanted = {"cryptography", "cffi"}
    wheels = [w for w in sorted(wheel_dir.glob("*.whl")) if w.name.split("-")[0].lower() in wanted]
    if {w.name.split("-")[0].lower() for w in wheels} != wanted:
        py = f"{target.python[0]}.{target.python[1]}"
        raise BundleError(
            f"no cryptography/cffi wheels for {target.tag} (the host's platform differs from this workstation's)",
            f"run: pip download --only-binary=:all: --platform manylinux2014_{target.machine} "
            f"--python-version {py} -d {wheel_dir} cryptography cffi",
        )
    return wheels


def _read_wheels(wheels: list[Path]) -> list[tuple[str, bytes, int]]:
    """Compiled packages for another platform, unpacked from cached wheels."""
    entries = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                top = info.filename.split("/")[0]
                if info.is_dir() or top.endswith((".dist-info", ".data")):
                    continue
                entries.append((info.filename, archive.read(info), (info.external_attr >> 16) & 0o777 or 0o644))
    return entries


def _bytecode(arcname: str, source: bytes) -> bytes:
    """A .pyc for *source* as zipimport reads it beside its .py: hash-based and unchecked (the zip
    is immutable and named by its hash), for this interpreter (PEP 552 header + marshalled code)."""
    code = compile(source, arcname, "exec", dont_inherit=True, optimize=0)  # asserts kept, whatever -O
    flags = (1).to_bytes(4, "little")  # hash-based, check_source off
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)


def _archive(entries: list[tuple[str, bytes, int]], bytecode: bool) -> bytes:
    """Deflate -9, once per change of the inputs (the result is cached): the pure bundle is 3 MB of
    sources -> 0.9 MB, or 2.8 MB with its bytecode (which saves the host unpacking ~380 files and
    compiling what the agent imports at its first start)."""
    if bytecode:
        entries = entries + [(f"{name}c", _bytecode(name, data), 0o644) for name, data, _ in entries
                             if name.endswith(".py") and name != "__main__.py"]
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for arcname, data, mode in sorted(entries):
            info = zipfile.ZipInfo(arcname, ZIP_TIME)
            info.external_attr = (0o100000 | mode) << 16  # a regular file and its permission bits
            info.create_system = 3  # unix: the mode above is meaningful
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return packed.getvalue()


def _fingerprint(paths: list[Path], target: Platform, compiled: bool, bytecode: bool) -> str:
    """Cheap identity of the inputs (names, sizes, mtimes) so an unchanged bundle is not rebuilt."""
    kind = target.tag.encode() if compiled else b"pure" + (importlib.util.MAGIC_NUMBER if bytecode else b"")
    digest = hashlib.sha256(FORMAT + kind + BUNDLE_MAIN)
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


# `python3 BUNDLE ...` runs this; the bundle (zip file or unpacked directory) is the import root.
BUNDLE_MAIN = b"import sys\n\nfrom cantainer_agent.__main__ import main\n\nsys.exit(main())\n"


def carries_bytecode(target: Platform, compiled: bool) -> bool:
    """Does the bundle for *target* carry bytecode: pure, for a host on this interpreter's minor version
    (whose magic number it almost always shares; the host checks before it runs the zip)."""
    return not compiled and target.python == Platform.local().python


def bundle_key(target: Platform, compiled: bool) -> tuple:
    """Hosts whose bundles are the same file: one per platform when compiled, else one for the hosts
    that get bytecode and one (sources only) for every other Python."""
    return (target, True) if compiled else ("pure", carries_bytecode(target, compiled))


def build_bundle(target: Platform, compiled: bool = True) -> Bundle:
    """The bundle for `target` — with cryptography and cffi for it, or (*compiled* False: the host
    has its own) pure Python, with bytecode when *target* runs this interpreter's minor version —
    from the bundle cache when its inputs are unchanged."""
    bytecode = carries_bytecode(target, compiled)
    local = _local_sources(PURE_PACKAGES)
    wheels: list[Path] = []
    if compiled and target == Platform.local():
        local += _local_sources(COMPILED_PACKAGES + COMPILED_MODULES)
    elif compiled:
        wheels = _wheel_sources(target)
    key = _fingerprint([p for _, p in local] + wheels, target, compiled, bytecode)
    cached = cache_root() / "bundles" / f"{key}.zip"
    try:
        data = cached.read_bytes()
        os.utime(cached)  # used: the eviction below keeps the most recently used
    except FileNotFoundError:  # not built yet, or evicted by another `up` a moment ago
        data = _archive(_read_local(local) + _read_wheels(wheels) + [("__main__.py", BUNDLE_MAIN, 0o644)],
                        bytecode)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{key}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, cached)
        _evict(cached.parent, KEEP_CACHED)
    return Bundle(hashlib.sha256(data).hexdigest(), data, target, compiled,
                  importlib.util.MAGIC_NUMBER.hex() if bytecode else None)


def _evict(folder: Path, keep: int) -> None:
    """Delete all but the *keep* most recently used bundles (and partial files a crash left)."""
    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
    built = sorted(folder.glob("*.zip"), key=used, reverse=True)
    stale = [p for p in folder.glob("*.partial") if used(p) < time.time() - 3600]
    stale += folder.glob("*.tar.gz")  # the archive format before zip: never read again
    for path in built[keep:] + stale:
        path.unlink(missing_ok=True)
