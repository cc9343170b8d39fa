"""A pinned tarball is hashed once per change of the file, not on every `run`; a changed file is hashed
again and refused if it no longer matches its pin."""
from __future__ import annotations

import hashlib

import pytest

from cantainer import images
from cantainer.images import ImageError, resolve_image
from cantainer.inventory import ImageSource


@pytest.fixture
def tarball(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "rootfs.tar.gz"
    path.write_bytes(b"pretend this is a rootfs" * 1000)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_verified_once_then_remembered_and_a_changed_file_is_checked_again(tarball, monkeypatch):
    path, sha = tarball
    source = {"mine": ImageSource("mine", sha, path, None)}
    hashed = []
    real = images.file_sha256
    monkeypatch.setattr(images, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert resolve_image("mine", source).path == path
    assert resolve_image("mine", source).path == path
    assert len(hashed) == 1
    path.write_bytes(b"something else entirely" * 1000)  # a new mtime (and size): hashed again, refused
    with pytest.raises(ImageError, match="sha256 mismatch"):
        resolve_image("mine", source)
    assert len(hashed) == 2
