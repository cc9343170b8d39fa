"""The agent bundle: everything a host needs besides python3, in one zip archive named by its hash.

Contents: the `cantainer_agent` package, pysyncobj, pyroute2 and dnslib — pure Python, so one bundle
serves every CPU and Python (the raft transport's cipher is the libcrypto the host's Python links:
no compiled package is pushed; until 2026-11-30 hosts without python3-cryptography got one).

A bundle for a host whose Python is the workstation's minor version and magic number also carries
the bytecode of every module, and of the libraries only that (``Bundle.magic`` names its
interpreter): the host keeps the zip as it is and runs it (``python3 BUNDLE``), importing from it,
with nothing unpacked or compiled. Any other bundle is
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
LIBRARY_PREFIXES = tuple(f"{name}/" for name in PURE_PACKAGES if name != "cantainer_agent")
FORMAT = b"zip+deflate9 v4"  # part of the cache key: a change of the archive format rebuilds
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: entries carry no build time
# Built bundles kept in the cache, most recently used first: every upgrade (or edit, in a checkout)
# makes a new one, and they are 0.9-2.8 MB each. Enough for the two kinds (with and without bytecode)
# of a few versions or checkouts in use at once; an evicted one is rebuilt (a second) when needed again.
KEEP_CACHED = 8


class BundleError(CantainerError):
    """The bundle for a host's platform cannot be built."""


@dataclass(frozen=True)
class Platform:
    """A host's CPU architecture, CPython minor version and bytecode magic number (hex; None: not
    reported, taken to be its minor version's): a bundle with bytecode needs both to match ours."""

    machine: str
    python: tuple[int, int]
    magic: str | None = None

    @property
    def tag(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}-{self.machine}"

    @classmethod
    def local(cls) -> "Platform":
        return cls(platform.machine(), sys.version_info[:2], importlib.util.MAGIC_NUMBER.hex())



@dataclass(frozen=True)
class Bundle:
    digest: str  # sha256 of the archive bytes; names the bundle on hosts
    data: bytes = field(repr=False)  # megabytes: never in a repr (asyncio formats task reprs)
    platform: Platform = field(default_factory=Platform.local)
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



def _bytecode(arcname: str, source: bytes) -> bytes:
    """A .pyc for *source* as zipimport reads it beside its .py: hash-based and unchecked (the zip
    is immutable and named by its hash), for this interpreter (PEP 552 header + marshalled code)."""
    code = compile(source, arcname, "exec", dont_inherit=True, optimize=0)  # asserts kept, whatever -O
    flags = (1).to_bytes(4, "little")  # hash-based, check_source off
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)


def _archive(entries: list[tuple[str, bytes, int]], bytecode: bool) -> bytes:
    """Deflate -9, once per change of the inputs (the result is cached): the bundle is 3 MB of
    sources -> 0.9 MB, or 2.2 MB with its bytecode (which saves the host unpacking ~380 files and
    compiling what the agent imports at its first start). With bytecode, the libraries' sources
    stay home (0.5 MB less to push to every host; their frames in a traceback show no source
    line); the agent's own stay, for its tracebacks."""
    if bytecode:
        compiled = [(f"{name}c", _bytecode(name, data), 0o644) for name, data, _ in entries
                    if name.endswith(".py") and name != "__main__.py"]
        entries = [entry for entry in entries if not entry[0].startswith(LIBRARY_PREFIXES)] + compiled
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for arcname, data, mode in sorted(entries):
            info = zipfile.ZipInfo(arcname, ZIP_TIME)
            info.external_attr = (0o100000 | mode) << 16  # a regular file and its permission bits
            info.create_system = 3  # unix: the mode above is meaningful
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return packed.getvalue()


def _fingerprint(paths: list[Path], bytecode: bool) -> str:
    """Cheap identity of the inputs (names, sizes, mtimes) so an unchanged bundle is not rebuilt."""
    kind = b"pure" + (importlib.util.MAGIC_NUMBER if bytecode else b"")
    digest = hashlib.sha256(FORMAT + kind + BUNDLE_MAIN)
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


# `python3 BUNDLE ...` runs this; the bundle (zip file or unpacked directory) is the import root. From a
# zip, every module is read once, not twice (cantainer_agent/bundleimport.py).
BUNDLE_MAIN = (b"import sys\n\nfrom cantainer_agent.bundleimport import install\n\ninstall(sys.path[0])\n\n"
               b"from cantainer_agent.__main__ import main\n\nsys.exit(main())\n")


def carries_bytecode(target: Platform) -> bool:
    """Does the bundle for *target* carry bytecode: for a host on this interpreter's minor version
    and magic number (a pre-release has its own; the host checks again before it runs the zip)."""
    local = Platform.local()
    return target.python == local.python and target.magic in (None, local.magic)


def bundle_key(target: Platform) -> bool:
    """Hosts whose bundles are the same file: one for the hosts that get bytecode, one (sources
    only) for every other Python."""
    return carries_bytecode(target)


def build_bundle(target: Platform) -> Bundle:
    """The bundle for `target`, with bytecode when it runs this interpreter's minor version — from
    the bundle cache when its inputs are unchanged."""
    bytecode = carries_bytecode(target)
    local = _local_sources(PURE_PACKAGES)
    key = _fingerprint([p for _, p in local], bytecode)
    cached = cache_root() / "bundles" / f"{key}.zip"
    try:
        data = cached.read_bytes()
        os.utime(cached)  # used: the eviction below keeps the most recently used
    except FileNotFoundError:  # not built yet, or evicted by another `up` a moment ago
        data = _archive(_read_local(local) + [("__main__.py", BUNDLE_MAIN, 0o644)], bytecode)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{key}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, cached)
        _evict(cached.parent, KEEP_CACHED)
    return Bundle(hashlib.sha256(data).hexdigest(), data, target,
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
