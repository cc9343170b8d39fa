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
    ImageStore,
    InvalidTarball,
    PathTraversalError,
    SymlinkEscapeError,
    UnsafeTarball,
)
from cantainer_agent.runtime.images import extract_tarball

from .conftest import ALPINE_SHA256, ALPINE_TARBALL

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


# -- the store -----------------------------------------------------------------------------------
def test_store_checksum_mismatch_leaves_nothing(tmp_path):
    tarball = tmp_path / "t.tar.gz"
    make_tar(tarball, [member("f", data=b"x")])
    store = ImageStore(str(tmp_path / "store"))
    with pytest.raises(ChecksumMismatch) as caught:
        store.import_tarball(str(tarball), "0" * 64)
    assert "expected " + "0" * 64 in str(caught.value)
    assert not store.has("0" * 64)
    assert [p for p in (tmp_path / "store").iterdir()] == []


def test_store_unsafe_tarball_leaves_nothing(tmp_path):
    tarball = tmp_path / "t.tar.gz"
    sha = make_tar(tarball, [member("ok", data=b"x"), member("../evil", data=b"x")])
    store = ImageStore(str(tmp_path / "store"))
    with pytest.raises(UnsafeTarball):
        store.import_tarball(str(tarball), sha)
    assert not store.has(sha)
    assert list((tmp_path / "store").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_store_import_once_and_idempotent(tmp_path):
    tarball = tmp_path / "t.tar.xz"
    sha = make_tar(tarball, [member("etc/", tarfile.DIRTYPE, mode=0o755), member("etc/os", data=b"v1")], "xz")
    store = ImageStore(str(tmp_path / "store"))
    rootfs = store.import_tarball(str(tarball), sha)
    assert rootfs == os.path.join(store.root, sha, "rootfs")
    assert Path(rootfs, "etc/os").read_bytes() == b"v1"
    assert store.has(sha) and store.list() == [sha]
    assert store.manifest(sha)["files"] == 1
    tarball.unlink()  # a second import must not even read the file
    assert store.import_tarball(str(tarball), sha) == rootfs
    store.remove(sha)
    assert not store.has(sha)
    with pytest.raises(ImageNotFound):
        store.rootfs_path(sha)


def test_store_rejects_bad_ids_and_files(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    with pytest.raises(ImageError):
        store.has("../../etc")
    with pytest.raises(ImageError):
        store.import_tarball(str(tmp_path / "missing.tar.gz"), "a" * 64)
    with pytest.raises(ImageError):
        store.import_tarball(str(tmp_path), "a" * 64)  # a directory


def test_store_cleans_stale_staging(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    os.makedirs(tmp_path / "store" / ".staging-999999999-abcd" / "rootfs")
    store.cleanup_staging()
    assert list((tmp_path / "store").iterdir()) == []


@pytest.mark.skipif(not ALPINE_TARBALL.exists(), reason="Alpine tarball missing")
def test_alpine_import(tmp_path):
    store = ImageStore(str(tmp_path / "store"), preserve_owner=ROOT)
    rootfs = Path(store.import_tarball(str(ALPINE_TARBALL), ALPINE_SHA256))
    assert (rootfs / "etc/alpine-release").read_text().strip() == "3.20.3"
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE(rootfs.stat().st_mode) == 0o755
    assert store.manifest(ALPINE_SHA256)["skipped"] == []
