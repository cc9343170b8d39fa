"""Image store: sha256-pinned rootfs tarballs, verified and extracted once per host.

``<root>/<sha256>/rootfs/`` is the overlayfs lower dir of every container of that image; it appears
only complete (staging directory, syncfs, rename), so a crash leaves nothing or the whole image and
concurrent imports of one image both succeed. Extraction is our own loop: names relative and free
of ``..``; parents resolved inside the root (symlinks followed as if the root were ``/``), the final
component never followed; escaping symlinks and hard links refused; device nodes and fifos skipped;
modes, owners and mtimes kept. Details: docs/design/runtime.md ("Images").
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

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

DEFAULT_ROOT = layout.images_dir()
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_SYMLINK_HOPS = 40
_CHUNK = 1 << 20


@dataclass
class ExtractStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    skipped: list[str] = field(default_factory=list)  # device nodes, fifos, unknown types

    def to_dict(self) -> dict:
        return {"files": self.files, "directories": self.directories, "symlinks": self.symlinks,
                "hardlinks": self.hardlinks, "skipped": self.skipped}


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

    def finish_directories(self) -> None:
        for path in sorted(self.directories, key=lambda p: p.count("/"), reverse=True):
            member = self.directories[path]
            self._owner(member, path=path)
            os.chmod(path, member.mode & 0o7777)
            os.utime(path, (member.mtime, member.mtime))


def extract_tarball(fileobj: BinaryIO, dest: str, preserve_owner: bool = True) -> ExtractStats:
    """Safely extract the tar stream *fileobj* (any compression) into the existing directory *dest*."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            return _Extractor(dest, preserve_owner).extract(tar)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise InvalidTarball(f"not a valid tar archive: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # gzip.BadGzipFile and friends; real I/O errors carry an errno
            raise InvalidTarball(f"not a valid tar archive: {exc}") from None
        raise


# -- the store -----------------------------------------------------------------------------------
class ImageStore:
    def __init__(self, root: str = DEFAULT_ROOT, preserve_owner: bool = True):
        self.root = os.path.abspath(root)
        self.preserve_owner = preserve_owner
        self._lock = threading.Lock()

    @staticmethod
    def _check_sha(sha256: str) -> str:
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
            raise ImageError(f"image id {sha256!r} is not a sha256 (64 lowercase hex digits)")
        return sha256

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, self._check_sha(sha256))

    def has(self, sha256: str) -> bool:
        return os.path.isdir(os.path.join(self.path(sha256), "rootfs"))

    def rootfs_path(self, sha256: str) -> str:
        if not self.has(sha256):
            raise ImageNotFound(f"image {sha256[:12]} is not in the image store {self.root}")
        return os.path.join(self.path(sha256), "rootfs")

    def list(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if SHA256_RE.fullmatch(name) and self.has(name))

    def manifest(self, sha256: str) -> dict:
        with open(os.path.join(self.path(sha256), "manifest.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def import_tarball(self, path: str, sha256: str) -> str:
        """Verify *path* against *sha256* and extract it once; return the rootfs path.

        A no-op (no read of *path*) if the image is already present.
        """
        self._check_sha(sha256)
        if self.has(sha256):
            return self.rootfs_path(sha256)
        with self._lock:
            if self.has(sha256):
                return self.rootfs_path(sha256)
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self.cleanup_staging()
            try:
                handle = open(path, "rb")
            except OSError as exc:
                raise ImageError(f"cannot read image tarball {path}: {exc.strerror}") from None
            with handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise ImageError(f"image tarball {path} is not a regular file")
                actual = sha256_of(handle)  # hash and extract the same open file: no swap in between
                if actual != sha256:
                    raise ChecksumMismatch(path, sha256, actual)
                handle.seek(0)
                staging = os.path.join(self.root, f".staging-{os.getpid()}-{os.urandom(4).hex()}")
                os.mkdir(staging, 0o700)
                try:
                    rootfs = os.path.join(staging, "rootfs")
                    os.mkdir(rootfs, 0o755)
                    stats = extract_tarball(handle, rootfs, self.preserve_owner)
                    manifest = {"sha256": sha256, "source": os.path.basename(path),
                                "imported_at": time.time(), **stats.to_dict()}
                    with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as out:
                        json.dump(manifest, out, indent=1)
                    syncfs(staging)
                    try:
                        os.rename(staging, self.path(sha256))
                    except OSError:
                        if not self.has(sha256):  # lost a race with another importer: theirs is as good
                            raise
                        shutil.rmtree(staging, ignore_errors=True)
                    else:
                        _fsync_dir(self.root)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        return self.rootfs_path(sha256)

    def remove(self, sha256: str) -> None:
        """Delete an image. The caller makes sure no container uses it (it is their overlay lower dir)."""
        target = self.path(sha256)
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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
