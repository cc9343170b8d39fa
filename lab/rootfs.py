"""The base image every lab and test uses: the pinned Alpine minirootfs, or a busybox rootfs.

``base_image()`` is the one place that decides, in this order: the workstation's image cache (the
tarball verified against its sha256 pin), ``$CANTAINER_SHARED_IMAGES`` or ``../shared/images``
beside the checkout, a download from the pinned URL (checked; not tried with
``CANTAINER_OFFLINE=1``), and only then a busybox-static rootfs built here (deterministic bytes, so
a stable sha256 on one machine). Both carry ``/etc/os-release``: tests assert against what the
image says it is, never against one of them. Debian's busybox ``ping`` needs ``CAP_NET_RAW``, which
containers never get, so the busybox rootfs carries the workstation's iputils ``ping`` (ICMP
datagram sockets, as Alpine's busybox ``ping`` uses) with the shared objects it loads.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cantainer.images import ALPINE, ImageError, cache_dir, cached_path, download, file_sha256

BUSYBOX = Path("/bin/busybox")
PINGS = (Path("/usr/bin/ping"), Path("/bin/ping"))  # iputils-ping (make setup installs it)
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BaseImage:
    kind: str                 # "alpine" or "busybox"
    path: Path                # the tarball in the workstation's cache, verified
    sha256: str
    os_release: dict = field(default_factory=dict)  # ID and VERSION_ID, as /etc/os-release inside says

    @property
    def label(self) -> str:
        return f"{self.os_release['ID']} {self.os_release['VERSION_ID']}"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "path": str(self.path)})

    @classmethod
    def from_json(cls, text: str) -> "BaseImage":
        data = json.loads(text)
        return cls(data["kind"], Path(data["path"]), data["sha256"], data["os_release"])


ALPINE_RELEASE = {"ID": "alpine", "VERSION_ID": ALPINE.version}


def shared_images_dir() -> Path:
    return Path(os.environ.get("CANTAINER_SHARED_IMAGES", REPO_ROOT.parent / "shared" / "images"))


def seed_pinned_alpine(url: str | None = None) -> bool:
    """The verified Alpine tarball in the cache — from the cache itself, the shared images, or a
    download (*url*, default the pinned one); False when none of them has it."""
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
    if os.environ.get("CANTAINER_OFFLINE") == "1":
        return False
    try:
        download(ALPINE.name, url or ALPINE.url, ALPINE.sha256, timeout=10)
    except ImageError:
        return False
    return True


def base_image(url: str | None = None) -> BaseImage:
    """The pinned Alpine if any source has it, else the busybox rootfs (both in the cache)."""
    if seed_pinned_alpine(url):
        return BaseImage("alpine", cached_path(ALPINE.sha256), ALPINE.sha256, ALPINE_RELEASE)
    path, sha = build_busybox_image()
    return BaseImage("busybox", path, sha, busybox_release())


def busybox_release() -> dict:
    banner = subprocess.run([str(BUSYBOX)], capture_output=True, text=True).stdout
    match = re.search(r"BusyBox v(\d[\w.]*)", banner)
    return {"ID": "busybox", "VERSION_ID": match.group(1) if match else "unknown"}


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    info.linkname, info.size = link, len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def unprivileged_ping() -> dict[str, Path]:
    """The workstation's iputils ``ping`` and every shared object it loads, {path in the rootfs: file
    to copy}; empty when there is no such ping (the rootfs keeps busybox's, which needs NET_RAW)."""
    ping = next((p for p in PINGS if p.exists() and p.resolve() != BUSYBOX.resolve()), None)
    if ping is None:
        return {}
    listing = subprocess.run(["ldd", str(ping)], check=True, capture_output=True, text=True).stdout
    files = {"bin/ping": ping.resolve()}
    for line in listing.splitlines():  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-… (0x…)"
        match = re.search(r"(/\S+) \(0x[0-9a-f]+\)$", line.strip())
        if match:
            files[match.group(1).lstrip("/")] = Path(match.group(1)).resolve()
    return files


def busybox_rootfs_bytes() -> bytes:
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True).stdout.split()
    extra = unprivileged_ping()
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
            "mnt",  # FHS mount point (tests mount a tmpfs there, as on Alpine)
            "home",
            "opt",
            "srv",
        ):
            _add(tar, f"./{directory}", tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755)
        _add(tar, "./bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in sorted(applets):
            if applet != "bin/busybox" and applet not in extra:
                depth = applet.count("/")
                _add(tar, f"./{applet}", tarfile.SYMTYPE, 0o777, link="../" * depth + "bin/busybox")
        made = {"bin"}
        for name, source in sorted(extra.items()):
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    _add(tar, f"./{directory}", tarfile.DIRTYPE, 0o755)
            _add(tar, f"./{name}", tarfile.REGTYPE, 0o755, source.read_bytes())
        _add(
            tar,
            "./etc/passwd",
            tarfile.REGTYPE,
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        _add(tar, "./etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        release = busybox_release()
        _add(tar, "./etc/os-release", tarfile.REGTYPE, 0o644,
             f'ID={release["ID"]}\nVERSION_ID={release["VERSION_ID"]}\nNAME="busybox rootfs"\n'.encode())
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
