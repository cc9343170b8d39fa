"""Layer store: each image layer verified and extracted once per host, shared by every image that has it.

``<root>/layers/<diff_id>/fs`` is one layer (keyed by the digest of its uncompressed tar, so a layer
pushed gzip'd and the same layer from a ``docker save`` archive are one); a container's overlay
lower dirs are its image's layers in order. A layer appears only complete (staging directory, syncfs,
rename): a crash leaves nothing or the whole layer, and concurrent imports both succeed. The blob's
digest and the diff_id are both checked in the one pass that extracts it. OCI whiteouts become
overlayfs whiteouts: ``.wh.NAME`` a 0/0 character device, ``.wh..wh..opq`` the ``trusted.overlay.opaque``
xattr on its directory. Images deeper than one mount option can hold are flattened once into
``<root>/flat/<chain id>/fs``. Extraction is our own loop: names relative and free of ``..``; parents
resolved inside the root, the final component never followed; escaping symlinks and hard links
refused; device nodes and fifos from the tar skipped; modes, owners and mtimes kept.
Details: docs/design/runtime.md ("Images").
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from .. import layout
from .errors import (
    AbsolutePathError,
    ChecksumMismatch,
    HardlinkEscapeError,
    ImageError,
    ImageNotFound,
    InvalidTarball,
    PathTraversalError,
    SymlinkEscapeError,
    UnsafeTarball,
)
from .linux import syncfs

if TYPE_CHECKING:  # tarfile is imported with the first image, not at every agent start (~10 ms of CPU)
    import tarfile

DEFAULT_ROOT = layout.images_dir()
SHA256_RE = re.compile(r"[0-9a-f]{64}")
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# The whole overlay option string (lowerdir=…,upperdir=…,workdir=…) must fit in one page; beyond
# this many bytes of lower dirs an image is flattened (the rest is left for upper and work dirs).
MAX_LOWER_BYTES = 3000
MAX_SYMLINK_HOPS = 40
_CHUNK = 1 << 20


@dataclass
class ExtractStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    whiteouts: int = 0
    opaque: int = 0
    skipped: list[str] = field(default_factory=list)  # device nodes, fifos, unknown types

    def to_dict(self) -> dict:
        return {"files": self.files, "directories": self.directories, "symlinks": self.symlinks,
                "hardlinks": self.hardlinks, "whiteouts": self.whiteouts, "opaque": self.opaque,
                "skipped": self.skipped}


def sha256_of(fileobj: BinaryIO) -> str:
    digest = hashlib.sha256()
    while True:
        chunk = fileobj.read(_CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


# -- safe extraction -----------------------------------------------------------------------------
def _split_name(name: str, member: str, absolute: type[UnsafeTarball], traversal: type[UnsafeTarball]) -> list[str]:
    if name.startswith("/"):
        raise absolute(member, f"absolute path {name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise traversal(member, f"'..' in path {name!r}")
    return parts


class _Extractor:
    def __init__(self, root: str, preserve_owner: bool):
        self.root = root
        self.preserve_owner = preserve_owner
        self.stats = ExtractStats()
        self.directories: dict[str, tarfile.TarInfo] = {}  # real path -> member, attributes set last
        self.skipped_paths: set[str] = set()

    def _path(self, parts: list[str]) -> str:
        return os.path.join(self.root, *parts)

    def resolve_dir(self, parts: list[str], member: str, create: bool) -> list[str]:
        """Real (symlink-free) component list of directory *parts*, resolved inside the root."""
        real: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if real:
                    real.pop()
                continue
            path = self._path(real + [part])
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise InvalidTarball(f"tar member {member!r}: {'/'.join(real + [part])} does not exist") from None
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)
                real.append(part)
                continue
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeTarball(member, "too many levels of symbolic links")
                target = os.readlink(path)
                if target.startswith("/"):
                    real = []
                todo = target.split("/") + todo
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise InvalidTarball(f"tar member {member!r}: {'/'.join(real + [part])} is not a directory")
            real.append(part)
        return real

    def _clear(self, path: str, member: str, is_dir: bool) -> bool:
        """Make room at *path* (never following it). True if a directory already exists there."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(info.st_mode):
            if is_dir:
                return True
            raise InvalidTarball(f"tar member {member!r} would replace a directory")
        os.unlink(path)
        return False

    def _owner(self, member: tarfile.TarInfo, path: str | None = None, fd: int | None = None) -> None:
        if not self.preserve_owner:
            return
        if fd is not None:
            os.fchown(fd, member.uid, member.gid)
        else:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)

    def extract(self, tar: tarfile.TarFile) -> ExtractStats:
        for member in tar:
            self.member(tar, member)
        self.finish_directories()
        return self.stats

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = _split_name(name, name, AbsolutePathError, PathTraversalError)
        if not parts:  # the root entry ("./"): only its attributes matter
            if member.isdir():
                self.directories[self.root] = member
            return
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, name)
            return
        if member.ischr() or member.isblk() or member.isfifo() or not (
            member.isfile() or member.isdir() or member.issym() or member.islnk()
        ):
            self.stats.skipped.append(name)
            self.skipped_paths.add("/".join(parts))
            return
        parent = self.resolve_dir(parts[:-1], name, create=True)
        real_parts = parent + [parts[-1]]
        path = self._path(real_parts)
        mode = member.mode & 0o7777

        if member.isdir():
            if not self._clear(path, name, is_dir=True):
                os.mkdir(path, 0o700)
            self.directories[path] = member
            self.stats.directories += 1
        elif member.isfile():
            self._clear(path, name, is_dir=False)
            source = tar.extractfile(member)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if source is not None:
                    while True:
                        chunk = source.read(_CHUNK)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                self._owner(member, fd=fd)
                os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
            self.stats.files += 1
        elif member.issym():
            target = member.linkname
            if "\x00" in target or not target:
                raise SymlinkEscapeError(name, "empty or invalid target")
            if not target.startswith("/"):
                depth = len(parent)
                for part in target.split("/"):
                    if part == "..":
                        depth -= 1
                        if depth < 0:
                            raise SymlinkEscapeError(name, f"target {target!r} points outside the root")
                    elif part not in ("", "."):
                        depth += 1
            self._clear(path, name, is_dir=False)
            os.symlink(target, path)
            self._owner(member, path=path)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            self.stats.symlinks += 1
        else:  # hard link
            link_parts = _split_name(member.linkname, name, HardlinkEscapeError, HardlinkEscapeError)
            if not link_parts:
                raise HardlinkEscapeError(name, "link target is the root")
            if "/".join(link_parts) in self.skipped_paths:
                self.stats.skipped.append(name)
                self.skipped_paths.add("/".join(parts))
                return
            try:
                source_parts = self.resolve_dir(link_parts[:-1], name, create=False) + [link_parts[-1]]
            except InvalidTarball:
                raise HardlinkEscapeError(name, f"link target {member.linkname!r} is not an earlier member") from None
            source = self._path(source_parts)
            try:
                info = os.lstat(source)
            except FileNotFoundError:
                raise HardlinkEscapeError(name, f"link target {member.linkname!r} is not an earlier member") from None
            if stat.S_ISDIR(info.st_mode):
                raise HardlinkEscapeError(name, f"link target {member.linkname!r} is a directory")
            if source == path:
                return
            self._clear(path, name, is_dir=False)
            os.link(source, path, follow_symlinks=False)
            self.stats.hardlinks += 1

    def whiteout(self, parts: list[str], member: str) -> None:
        """``.wh..wh..opq``: the directory hides what lower layers have in it (opaque xattr);
        ``.wh.NAME``: NAME of lower layers is deleted (a 0/0 character device, overlayfs' whiteout)."""
        parent = self.resolve_dir(parts[:-1], member, create=True)
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(self._path(parent), OPAQUE_XATTR, b"y", follow_symlinks=False)
            self.stats.opaque += 1
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):  # other AUFS metadata (.wh..wh.plnk …)
            self.stats.skipped.append(member)
            return
        target = base[len(WHITEOUT_PREFIX):]
        if not target or target in (".", ".."):
            raise UnsafeTarball(member, "whiteout of no name")
        path = self._path(parent + [target])
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                self.directories = {p: m for p, m in self.directories.items()
                                    if p != path and not p.startswith(path + "/")}
            else:
                os.unlink(path)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self.stats.whiteouts += 1

    def finish_directories(self) -> None:
        for path in sorted(self.directories, key=lambda p: p.count("/"), reverse=True):
            member = self.directories[path]
            self._owner(member, path=path)
            os.chmod(path, member.mode & 0o7777)
            os.utime(path, (member.mtime, member.mtime))


def extract_tarball(fileobj: BinaryIO, dest: str, preserve_owner: bool = True) -> ExtractStats:
    """Safely extract the tar stream *fileobj* (any compression) into the existing directory *dest*."""
    import tarfile  # noqa: PLC0415 - see TYPE_CHECKING above

    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            return _Extractor(dest, preserve_owner).extract(tar)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise InvalidTarball(f"not a valid tar archive: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends; real I/O errors carry an errno
            raise InvalidTarball(f"not a valid tar archive: {exc}") from None
        raise


# -- reading a blob: compression by magic, digests of both streams -------------------------------
class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _decompressor(raw: _Hashing, head: bytes) -> BinaryIO:
    import bz2
    import gzip

    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, "rb")  # type: ignore[arg-type]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, "rb")  # type: ignore[arg-type]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise InvalidTarball("zstd-compressed layers are not supported (push the image gzip-compressed)")
    return raw  # type: ignore[return-value]


class _Prefixed:
    """*head* (already read to sniff the compression) followed by the rest of *raw*."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.raw.read(size)


def extract_layer(fileobj: BinaryIO, dest: str, preserve_owner: bool = True) -> tuple[ExtractStats, str, str]:
    """Extract a layer blob (tar, gzip, xz or bzip2) into *dest*, whiteouts as overlayfs ones.

    Returns (stats, digest of the blob, digest of the uncompressed tar = its diff_id): both streams
    are read to the end and hashed in the same pass as the extraction."""
    import tarfile  # noqa: PLC0415 - see TYPE_CHECKING above

    head = fileobj.read(6)
    raw = _Hashing(_Prefixed(head, fileobj))  # type: ignore[arg-type]
    try:
        plain = _Hashing(_decompressor(raw, head))
        with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[arg-type]
            stats = _Extractor(dest, preserve_owner).extract(tar)
        plain.drain()  # the tar's end blocks and padding belong to the diff_id too
        raw.drain()
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise InvalidTarball(f"not a valid tar archive: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends; real I/O errors carry an errno
            raise InvalidTarball(f"not a valid tar archive: {exc}") from None
        raise
    return stats, raw.digest, plain.digest


# -- the store -----------------------------------------------------------------------------------
def _hex(digest: str, what: str = "layer") -> str:
    match = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ImageError(f"{what} {digest!r} is not a digest (sha256: and 64 lowercase hex digits)")
    return match.group(1)


def chain_id(diff_ids: list[str]) -> str:
    """The OCI ChainID of a layer stack: what a flattened copy of exactly these layers is named by."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


class LayerStore:
    """Layers of one host under *root* (``layers/``, ``flat/``, ``incoming/``). Thread-safe."""

    def __init__(self, root: str = DEFAULT_ROOT, preserve_owner: bool = True, max_lower_bytes: int = MAX_LOWER_BYTES):
        self.root = os.path.abspath(root)
        self.preserve_owner = preserve_owner
        self.max_lower_bytes = max_lower_bytes
        self._lock = threading.Lock()

    def _dir(self, diff_id: str) -> str:
        return os.path.join(self.root, "layers", _hex(diff_id))

    def has(self, diff_id: str) -> bool:
        return os.path.isdir(os.path.join(self._dir(diff_id), "fs"))

    def path(self, diff_id: str) -> str:
        """The extracted layer (an overlayfs lower dir)."""
        if not self.has(diff_id):
            raise ImageNotFound(f"layer {diff_id[:19]}… is not in the layer store {self.root}")
        return os.path.join(self._dir(diff_id), "fs")

    def missing(self, diff_ids: list[str]) -> list[str]:
        return [d for d in diff_ids if not self.has(d)]

    def info(self, diff_id: str) -> dict:
        with open(os.path.join(self._dir(diff_id), "layer.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def list(self) -> list[str]:
        """diff_ids of every complete layer."""
        try:
            names = os.listdir(os.path.join(self.root, "layers"))
        except FileNotFoundError:
            return []
        return sorted(f"sha256:{n}" for n in names if SHA256_RE.fullmatch(n) and self.has(f"sha256:{n}"))

    def import_layer(self, path: str, digest: str, diff_id: str) -> str:
        """Verify the blob at *path* (its *digest*, and *diff_id* of its uncompressed tar) and extract
        it once; return the layer's directory. A no-op, without reading *path*, if the layer is here."""
        _hex(digest, "blob")
        if self.has(diff_id):
            return self.path(diff_id)
        with self._lock:
            if self.has(diff_id):
                return self.path(diff_id)
            os.makedirs(os.path.join(self.root, "layers"), mode=0o700, exist_ok=True)
            self.cleanup_staging()
            try:
                handle = open(path, "rb")
            except OSError as exc:
                raise ImageError(f"cannot read layer blob {path}: {exc.strerror}") from None
            with handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise ImageError(f"layer blob {path} is not a regular file")
                staging = self._staging()
                try:
                    fs = os.path.join(staging, "fs")
                    os.mkdir(fs, 0o755)
                    stats, actual_digest, actual_diff_id = extract_layer(handle, fs, self.preserve_owner)
                    if actual_digest != digest:
                        raise ChecksumMismatch(f"layer blob {os.path.basename(path)}", digest, actual_digest)
                    if actual_diff_id != diff_id:
                        raise ChecksumMismatch(f"layer {digest[:19]}… (uncompressed)", diff_id, actual_diff_id)
                    record = {"diff_id": diff_id, "digest": digest, "size": os.fstat(handle.fileno()).st_size,
                              "imported_at": time.time(), **stats.to_dict()}
                    self._publish(staging, record, self._dir(diff_id))
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        return self.path(diff_id)

    def _staging(self) -> str:
        staging = os.path.join(self.root, f".staging-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(staging, 0o700)
        return staging

    def _publish(self, staging: str, record: dict, target: str) -> None:
        with open(os.path.join(staging, "layer.json"), "w", encoding="utf-8") as out:
            json.dump(record, out, indent=1)
        syncfs(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not os.path.isdir(os.path.join(target, "fs")):  # lost a race with another importer: theirs is as good
                raise
            shutil.rmtree(staging, ignore_errors=True)
        else:
            _fsync_dir(os.path.dirname(target))

    def lower_dirs(self, diff_ids: list[str]) -> list[str]:
        """The overlay lower dirs of an image with these layers, bottom first: one per layer, or one
        flattened copy when their paths would not fit in the mount options."""
        paths = self.lower_dirs_unflattened(diff_ids)
        if sum(len(p) + 1 for p in paths) <= self.max_lower_bytes:
            return paths
        return [self.flatten(diff_ids)]

    def lower_dirs_unflattened(self, diff_ids: list[str]) -> list[str]:
        if not diff_ids:
            raise ImageError("an image needs at least one layer")
        return [self.path(d) for d in diff_ids]

    def flatten(self, diff_ids: list[str]) -> str:
        """One directory holding the merged view of *diff_ids* (whiteouts applied), made once.
        Regular files are hard links into the layers: the copy costs inodes, not data."""
        target = os.path.join(self.root, "flat", _hex(chain_id(diff_ids)))
        if os.path.isdir(os.path.join(target, "fs")):
            return os.path.join(target, "fs")
        with self._lock:
            if not os.path.isdir(os.path.join(target, "fs")):
                os.makedirs(os.path.join(self.root, "flat"), mode=0o700, exist_ok=True)
                staging = self._staging()
                try:
                    fs = os.path.join(staging, "fs")
                    os.mkdir(fs, 0o755)
                    for diff_id in diff_ids:
                        if _is_opaque(self.path(diff_id)):
                            _clear_dir(fs)
                        _merge_layer(self.path(diff_id), fs)
                    self._publish(staging, {"diff_ids": list(diff_ids), "flattened_at": time.time()}, target)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        return os.path.join(target, "fs")

    def flattened(self) -> dict[str, list[str]]:
        """Flattened copies: their directory -> the layers they were made of."""
        out = {}
        base = os.path.join(self.root, "flat")
        for name in os.listdir(base) if os.path.isdir(base) else []:
            try:
                with open(os.path.join(base, name, "layer.json"), encoding="utf-8") as handle:
                    out[os.path.join(base, name, "fs")] = json.load(handle)["diff_ids"]
            except (OSError, ValueError, KeyError):
                continue
        return out

    def layers_in_use(self, lower_dirs: set[str]) -> set[str]:
        """diff_ids of the layers behind *lower_dirs* (containers' lower dirs, flattened or not)."""
        used = {f"sha256:{os.path.basename(os.path.dirname(p))}" for p in lower_dirs
                if os.path.dirname(os.path.dirname(p)) == os.path.join(self.root, "layers")}
        for fs, layers in self.flattened().items():
            if fs in lower_dirs:
                used.update(layers)  # the data its hard links share
        return used

    def prune(self, in_use: set[str]) -> list[str]:
        """Remove every layer and flattened copy not behind *in_use* (the lower dirs of this host's
        containers); returns the removed diff_ids."""
        keep = self.layers_in_use(in_use)
        for fs in self.flattened():
            if fs not in in_use:
                self._remove_dir(os.path.dirname(fs))
        removed = [d for d in self.list() if d not in keep]
        for diff_id in removed:
            self._remove_dir(self._dir(diff_id))
        return removed

    def remove(self, diff_id: str) -> None:
        """Delete a layer. The caller makes sure no container uses it (it is their lower dir)."""
        self._remove_dir(self._dir(diff_id))

    def _remove_dir(self, target: str) -> None:
        if not os.path.exists(target):
            return
        trash = os.path.join(self.root, f".staging-{os.getpid()}-{os.urandom(4).hex()}")
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def cleanup_staging(self) -> None:
        """Remove staging directories of imports whose process is gone (a crash mid-import)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            match = re.fullmatch(r"\.staging-(\d+)-[0-9a-f]+", name)
            if match and int(match.group(1)) != os.getpid() and not os.path.exists(f"/proc/{match.group(1)}"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _clear_dir(path: str) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _remove_any(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _copy_meta(info: os.stat_result, path: str) -> None:
    os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _merge_layer(src: str, dst: str) -> None:
    """Apply the extracted layer *src* onto the directory *dst* as overlayfs would show it."""
    for entry in os.scandir(src):
        source, target = entry.path, os.path.join(dst, entry.name)
        info = entry.stat(follow_symlinks=False)
        if _is_whiteout(info):
            _remove_any(target)
        elif stat.S_ISDIR(info.st_mode):
            if os.path.lexists(target) and not (os.path.isdir(target) and not os.path.islink(target)):
                os.unlink(target)
            if not os.path.lexists(target):
                os.mkdir(target, 0o700)
            elif _is_opaque(source):
                _clear_dir(target)
            _merge_layer(source, target)
            _copy_meta(info, target)
        else:
            _remove_any(target)
            if stat.S_ISREG(info.st_mode):
                try:
                    os.link(source, target, follow_symlinks=False)
                except OSError:  # too many links or another filesystem: a real copy
                    shutil.copy2(source, target, follow_symlinks=False)
                    _copy_meta(info, target)
            elif stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(source), target)
                _copy_meta(info, target)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
