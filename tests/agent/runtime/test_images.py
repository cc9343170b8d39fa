"""Image store: checksum, atomic import, and safe extraction against crafted tarballs."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cantainer_agent.runtime import (
    AbsolutePathError,
    ChecksumMismatch,
    HardlinkEscapeError,
    ImageError,
    ImageNotFound,
    InvalidTarball,
    LayerStore,
    PathTraversalError,
    SymlinkEscapeError,
    UnsafeTarball,
)
from cantainer_agent.runtime.images import OPAQUE_XATTR, chain_id, extract_tarball

from .conftest import base, diff_id_of, os_release

ROOT = os.geteuid() == 0


# -- helpers -------------------------------------------------------------------------------------
def member(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644, uid=0, gid=0, devmajor=0, devminor=0):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.linkname = linkname
    info.mtime = 1_700_000_000
    info.devmajor, info.devminor = devmajor, devminor
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info, (io.BytesIO(data) if info.size else None)


def make_tar(path: Path, members, compression="gz") -> str:
    with tarfile.open(path, f"w:{compression}") as tar:
        for info, data in members:
            tar.addfile(info, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract(tmp_path: Path, members) -> tuple[Path, object]:
    tarball = tmp_path / "t.tar.gz"
    make_tar(tarball, members)
    dest = tmp_path / "root"
    dest.mkdir()
    with open(tarball, "rb") as handle:
        stats = extract_tarball(handle, str(dest), preserve_owner=ROOT)
    return dest, stats


@pytest.fixture
def outside(tmp_path):
    """A directory next to the extraction root; nothing may ever be written there."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("original")
    yield path
    assert sorted(p.name for p in path.iterdir()) == ["victim"]
    assert (path / "victim").read_text() == "original"


# -- malicious tarballs --------------------------------------------------------------------------
def test_absolute_path_refused(tmp_path, outside):
    with pytest.raises(AbsolutePathError):
        extract(tmp_path, [member(f"{outside}/evil", data=b"x")])


@pytest.mark.parametrize("name", ["../outside/evil", "a/../../outside/evil", "./../evil", "a/b/../../../evil"])
def test_dotdot_refused(tmp_path, outside, name):
    with pytest.raises(PathTraversalError):
        extract(tmp_path, [member("a/", tarfile.DIRTYPE, mode=0o755), member(name, data=b"x")])


@pytest.mark.parametrize("target", ["../outside", "../../outside/victim", "a/../../x", "../"])
def test_escaping_relative_symlink_refused(tmp_path, outside, target):
    with pytest.raises(SymlinkEscapeError):
        extract(tmp_path, [member("link", tarfile.SYMTYPE, linkname=target)])


def test_escaping_symlink_measured_from_its_real_location(tmp_path, outside):
    # "d" is a symlink to the root: "d/x -> ../outside" would sit at the root, one level higher
    # than its name suggests, and point outside.
    with pytest.raises(SymlinkEscapeError):
        extract(tmp_path, [member("d", tarfile.SYMTYPE, linkname="/"),
                           member("d/x", tarfile.SYMTYPE, linkname="../outside")])


def test_write_through_absolute_symlink_stays_inside(tmp_path, outside):
    # An absolute symlink to the host directory must resolve inside the root, not on the host.
    dest, _ = extract(tmp_path, [member("evil", tarfile.SYMTYPE, linkname=str(outside)),
                                 member("evil/victim", data=b"owned")])
    inside = dest / str(outside).lstrip("/") / "victim"
    assert inside.read_bytes() == b"owned"
    assert os.readlink(dest / "evil") == str(outside)


def test_write_through_relative_symlink_chain_stays_inside(tmp_path, outside):
    dest, _ = extract(tmp_path, [
        member("a/", tarfile.DIRTYPE, mode=0o755),
        member("a/up", tarfile.SYMTYPE, linkname=".."),  # -> root: allowed
        member("a/up/b", data=b"in root"),
    ])
    assert (dest / "b").read_bytes() == b"in root"


def test_existing_symlink_is_replaced_not_followed(tmp_path, outside):
    dest, _ = extract(tmp_path, [member("f", tarfile.SYMTYPE, linkname=f"{outside}/victim"),
                                 member("f", data=b"new file")])
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_bytes() == b"new file"


@pytest.mark.parametrize("linkname", ["../outside/victim", "/etc/passwd", "a/../../outside/victim"])
def test_hardlink_escape_refused(tmp_path, outside, linkname):
    with pytest.raises(HardlinkEscapeError):
        extract(tmp_path, [member("a/", tarfile.DIRTYPE, mode=0o755),
                           member("h", tarfile.LNKTYPE, linkname=linkname)])


def test_hardlink_through_symlink_resolves_inside(tmp_path, outside):
    # "s" points at the host directory; a hard link to "s/victim" must look inside the root
    # (where nothing exists) instead of linking the host's file into the image.
    with pytest.raises(HardlinkEscapeError):
        extract(tmp_path, [member("s", tarfile.SYMTYPE, linkname=str(outside)),
                           member("h", tarfile.LNKTYPE, linkname="s/victim")])


def test_hardlink_to_directory_refused(tmp_path):
    with pytest.raises(HardlinkEscapeError):
        extract(tmp_path, [member("d/", tarfile.DIRTYPE, mode=0o755), member("h", tarfile.LNKTYPE, linkname="d")])


def test_device_nodes_and_fifos_skipped(tmp_path):
    dest, stats = extract(tmp_path, [
        member("dev/", tarfile.DIRTYPE, mode=0o755),
        member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        member("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1),
        member("fifo", tarfile.FIFOTYPE),
        member("mem-link", tarfile.LNKTYPE, linkname="dev/mem"),
        member("ok", data=b"fine"),
    ])
    assert sorted(p.name for p in dest.iterdir()) == ["dev", "ok"]
    assert list((dest / "dev").iterdir()) == []
    assert sorted(stats.skipped) == ["dev/mem", "dev/sda", "fifo", "mem-link"]


# -- faithful extraction -------------------------------------------------------------------------
def test_modes_owners_and_hardlinks_kept(tmp_path):
    dest, stats = extract(tmp_path, [
        member("bin/", tarfile.DIRTYPE, mode=0o755),
        member("bin/su", data=b"#!/bin/true\n", mode=0o4755, uid=0, gid=0),
        member("bin/su2", tarfile.LNKTYPE, linkname="bin/su"),
        member("home/", tarfile.DIRTYPE, mode=0o755),
        member("home/user/", tarfile.DIRTYPE, mode=0o700, uid=1234, gid=2345),
        member("home/user/f", data=b"secret", mode=0o600, uid=1234, gid=2345),
        member("ro/", tarfile.DIRTYPE, mode=0o555),
        member("ro/inner", data=b"x", mode=0o444),
        member("tmp/", tarfile.DIRTYPE, mode=0o1777),
        member("sh", tarfile.SYMTYPE, linkname="/bin/su"),
    ])
    su = dest / "bin/su"
    assert stat.S_IMODE(su.stat().st_mode) == 0o4755
    assert os.path.samefile(su, dest / "bin/su2") and su.stat().st_nlink == 2
    assert stat.S_IMODE((dest / "home/user").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(dest / "sh") == "/bin/su"
    assert (dest / "home/user/f").stat().st_mtime == 1_700_000_000
    if ROOT:
        assert ((dest / "home/user/f").stat().st_uid, (dest / "home/user/f").stat().st_gid) == (1234, 2345)
        assert (dest / "home/user").stat().st_uid == 1234
    assert (stats.files, stats.hardlinks, stats.symlinks) == (3, 1, 1)


def test_missing_parent_directories_created(tmp_path):
    dest, _ = extract(tmp_path, [member("a/b/c/file", data=b"deep")])
    assert (dest / "a/b/c/file").read_bytes() == b"deep"


def test_not_a_tarball(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a tar archive at all" * 100)
    (tmp_path / "root").mkdir()
    with open(junk, "rb") as handle, pytest.raises(InvalidTarball):
        extract_tarball(handle, str(tmp_path / "root"))


def test_truncated_tarball(tmp_path):
    tarball = tmp_path / "t.tar.gz"
    make_tar(tarball, [member("big", data=os.urandom(200_000))])
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(tarball.read_bytes()[:50_000])
    (tmp_path / "root").mkdir()
    with open(truncated, "rb") as handle, pytest.raises(InvalidTarball):
        extract_tarball(handle, str(tmp_path / "root"))


# -- layers: whiteouts ---------------------------------------------------------------------------
def layer(tmp_path: Path, name: str, members, compression="gz") -> tuple[Path, str, str]:
    """A layer blob: (path, its digest, its diff_id)."""
    raw = tmp_path / f"{name}.tar"
    make_tar(raw, members, "")
    diff_id = "sha256:" + hashlib.sha256(raw.read_bytes()).hexdigest()
    if not compression:
        return raw, diff_id, diff_id
    import bz2
    import gzip
    import lzma

    blob = tmp_path / f"{name}.tar.{compression}"
    blob.write_bytes({"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}[compression](raw.read_bytes()))
    return blob, "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest(), diff_id


@pytest.mark.skipif(not ROOT, reason="whiteouts are character devices and trusted xattrs: root only")
def test_whiteouts_become_overlayfs_whiteouts(tmp_path):
    store = LayerStore(str(tmp_path / "store"))
    blob, digest, diff_id = layer(tmp_path, "l", [
        member("etc/", tarfile.DIRTYPE, mode=0o755),
        member("etc/.wh.motd"),
        member("var/cache/", tarfile.DIRTYPE, mode=0o755),
        member("var/cache/.wh..wh..opq"),
        member("var/cache/new", data=b"fresh"),
        member(".wh..wh.plnk"),  # AUFS metadata: ignored
    ])
    fs = Path(store.import_layer(str(blob), digest, diff_id))
    motd = os.lstat(fs / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert os.getxattr(fs / "var/cache", OPAQUE_XATTR) == b"y"
    assert (fs / "var/cache/new").read_bytes() == b"fresh"
    assert sorted(p.name for p in fs.iterdir()) == ["etc", "var"]
    info = store.info(diff_id)
    assert (info["whiteouts"], info["opaque"], info["skipped"]) == (1, 1, [".wh..wh.plnk"])


@pytest.mark.parametrize("name", ["../.wh.outside", "a/.wh..", "/.wh.x", "a/../../.wh.victim"])
def test_whiteout_names_cannot_escape(tmp_path, outside, name):
    with pytest.raises(UnsafeTarball):
        extract(tmp_path, [member(name)])


# -- the store -----------------------------------------------------------------------------------
def test_store_digest_and_diff_id_are_both_checked_and_a_mismatch_leaves_nothing(tmp_path):
    blob, digest, diff_id = layer(tmp_path, "l", [member("f", data=b"x")])
    store = LayerStore(str(tmp_path / "store"))
    with pytest.raises(ChecksumMismatch) as caught:
        store.import_layer(str(blob), "sha256:" + "0" * 64, diff_id)
    assert "expected sha256:" + "0" * 64 in str(caught.value)
    with pytest.raises(ChecksumMismatch) as caught:
        store.import_layer(str(blob), digest, "sha256:" + "1" * 64)
    assert "uncompressed" in str(caught.value)
    assert not store.has(diff_id) and store.list() == []
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["layers"]
    assert list((tmp_path / "store" / "layers").iterdir()) == []


def test_store_unsafe_layer_leaves_nothing(tmp_path):
    blob, digest, diff_id = layer(tmp_path, "l", [member("ok", data=b"x"), member("../evil", data=b"x")])
    store = LayerStore(str(tmp_path / "store"))
    with pytest.raises(UnsafeTarball):
        store.import_layer(str(blob), digest, diff_id)
    assert not store.has(diff_id)
    assert list((tmp_path / "store" / "layers").iterdir()) == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("compression", ["", "gz", "xz", "bz2"])
def test_store_import_once_and_idempotent(tmp_path, compression):
    blob, digest, diff_id = layer(tmp_path, "l", [member("etc/", tarfile.DIRTYPE, mode=0o755),
                                                  member("etc/os", data=b"v1")], compression)
    store = LayerStore(str(tmp_path / "store"))
    fs = store.import_layer(str(blob), digest, diff_id)
    assert fs == os.path.join(store.root, "layers", diff_id[7:], "fs") == store.path(diff_id)
    assert Path(fs, "etc/os").read_bytes() == b"v1"
    assert store.has(diff_id) and store.list() == [diff_id] and store.missing([diff_id, "sha256:" + "2" * 64]) == [
        "sha256:" + "2" * 64]
    assert store.info(diff_id)["files"] == 1 and store.info(diff_id)["digest"] == digest
    blob.unlink()  # a second import must not even read the file
    assert store.import_layer(str(blob), digest, diff_id) == fs
    store.remove(diff_id)
    assert not store.has(diff_id)
    with pytest.raises(ImageNotFound):
        store.path(diff_id)


def test_store_rejects_bad_ids_and_files(tmp_path):
    store = LayerStore(str(tmp_path / "store"))
    with pytest.raises(ImageError):
        store.has("sha256:../../etc")
    with pytest.raises(ImageError):
        store.has("a" * 64)  # no algorithm
    with pytest.raises(ImageError):
        store.import_layer(str(tmp_path / "missing.tar.gz"), "sha256:" + "a" * 64, "sha256:" + "b" * 64)
    with pytest.raises(ImageError):
        store.import_layer(str(tmp_path), "sha256:" + "a" * 64, "sha256:" + "b" * 64)  # a directory


def test_store_refuses_zstd_with_a_clear_error(tmp_path):
    blob = tmp_path / "l.tar.zst"
    blob.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    store = LayerStore(str(tmp_path / "store"))
    with pytest.raises(InvalidTarball, match="zstd"):
        store.import_layer(str(blob), "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest(), "sha256:" + "b" * 64)


def test_store_cleans_stale_staging(tmp_path):
    store = LayerStore(str(tmp_path / "store"))
    os.makedirs(tmp_path / "store" / ".staging-999999999-abcd" / "fs")
    store.cleanup_staging()
    assert list((tmp_path / "store").iterdir()) == []


def test_base_image_import(tmp_path):
    image = base()
    store = LayerStore(str(tmp_path / "store"), preserve_owner=ROOT)
    diff_id = diff_id_of(image.path)
    rootfs = Path(store.import_layer(str(image.path), f"sha256:{image.sha256}", diff_id))
    assert os_release((rootfs / "etc/os-release").read_text()) == image.os_release
    assert os.path.basename(os.readlink(rootfs / "bin/sh")) == "busybox"
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE(rootfs.stat().st_mode) == 0o755
    assert store.info(diff_id)["skipped"] == []


# -- deep images: flattening ----------------------------------------------------------------------
def test_chain_id_is_the_oci_one():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_id([a]) == a
    assert chain_id([a, b]) == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()


def tree(root: Path) -> dict:
    """path -> (type and mode, uid, gid, content or link target) of everything below *root*."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = os.lstat(path)
            body = os.readlink(path) if stat.S_ISLNK(info.st_mode) else (
                path.read_bytes().decode() if stat.S_ISREG(info.st_mode) else "")
            out[str(path.relative_to(root))] = (oct(info.st_mode), info.st_uid, info.st_gid, body)
    return out


_OVERLAY_VIEW = r"""
import json, os, stat, sys
from pathlib import Path
from tests.agent.runtime.test_images import tree
target = Path(sys.argv[1])
rc = os.system(f"mount -t overlay overlay -o lowerdir={sys.argv[2]} {target}")
assert rc == 0, rc
print(json.dumps(tree(target)))
"""


def overlay_view(tmp_path: Path, lowers: list[str]) -> dict:
    """tree() of a read-only overlayfs of *lowers* (bottom first), mounted in a throw-away mount namespace."""
    import json
    import subprocess
    import sys

    mountpoint = tmp_path / "merged"
    mountpoint.mkdir()
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _OVERLAY_VIEW,
                             str(mountpoint), ":".join(reversed(lowers))], capture_output=True, text=True,
                            cwd=Path(__file__).parents[3])
    assert result.returncode == 0, result.stderr
    return {k: tuple(v) for k, v in json.loads(result.stdout).items()}


@pytest.mark.skipif(not ROOT, reason="whiteouts need root")
def test_lower_dirs_flatten_when_they_would_not_fit_and_whiteouts_apply(tmp_path):
    store = LayerStore(str(tmp_path / "store"), max_lower_bytes=10 ** 6)
    ids = []
    specs = [
        [member("etc/", tarfile.DIRTYPE, mode=0o755), member("etc/motd", data=b"hello"),
         member("etc/keep", data=b"kept"), member("cache/", tarfile.DIRTYPE, mode=0o700),
         member("cache/old", data=b"old"), member("link", tarfile.SYMTYPE, linkname="etc/keep")],
        [member("etc/.wh.motd"), member("cache/.wh..wh..opq"), member("cache/new", data=b"new"),
         member("etc/keep", data=b"changed", mode=0o600)],
        [member("etc/motd", data=b"back", mode=0o640)],
        [member(".wh.link"), member("dir-then-file", tarfile.DIRTYPE, mode=0o755)],
        [member("dir-then-file", data=b"a file now")],
    ]
    for index, members in enumerate(specs):
        blob, digest, diff_id = layer(tmp_path, f"l{index}", members)
        store.import_layer(str(blob), digest, diff_id)
        ids.append(diff_id)
    assert store.lower_dirs(ids) == [store.path(d) for d in ids]
    store.max_lower_bytes = 50  # as if the mount options could not hold them
    [flat] = store.lower_dirs(ids)
    root = Path(flat)
    assert (root / "etc/motd").read_bytes() == b"back" and stat.S_IMODE((root / "etc/motd").stat().st_mode) == 0o640
    assert (root / "etc/keep").read_bytes() == b"changed"
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["new"]
    assert overlay_view(tmp_path, store.lower_dirs_unflattened(ids)) == tree(root)  # what the kernel shows
    assert not os.path.lexists(root / "link")
    assert (root / "dir-then-file").read_bytes() == b"a file now"
    assert os.path.samefile(root / "etc/keep", Path(store.path(ids[1])) / "etc/keep")  # hard links, no copies
    assert store.lower_dirs(ids) == [flat]  # made once
    # prune: the flattened copy is in use, so are the layers it links to; the rest goes
    blob, digest, unused = layer(tmp_path, "unused", [member("u", data=b"u")])
    store.import_layer(str(blob), digest, unused)
    assert store.prune({flat}) == [unused]
    assert all(store.has(d) for d in ids) and Path(flat).is_dir()
    assert sorted(store.prune(set())) == sorted(ids) and store.list() == [] and not Path(flat).exists()
