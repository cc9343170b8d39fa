"""The base image helper (lab/rootfs.py): cache, shared images, a checked download, busybox last."""
from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from cantainer.images import ALPINE, ImageError, cached_path, download, file_sha256
from lab import rootfs


@pytest.fixture
def empty(tmp_path, monkeypatch):
    """No cache and no shared images: every source but the one a test provides is empty."""
    monkeypatch.setenv("CANTAINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CANTAINER_SHARED_IMAGES", str(tmp_path / "shared"))
    monkeypatch.delenv("CANTAINER_OFFLINE", raising=False)  # a run made offline must still test the download
    (tmp_path / "shared").mkdir()
    return tmp_path


@pytest.fixture
def server(tmp_path):
    """An HTTP server on loopback serving files from a directory, counting requests."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_request(self, code="-", size="-"):
            hits.append(self.path)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_a_download_lands_in_the_cache_only_when_its_sha256_matches(empty, server):
    root, url, hits = server
    (root / "image.tar.gz").write_bytes(b"pinned bytes")
    sha = file_sha256(root / "image.tar.gz")
    assert download("demo", f"{url}/image.tar.gz", sha) == cached_path(sha) and cached_path(sha).exists()
    (root / "bad.tar.gz").write_bytes(b"other bytes")
    with pytest.raises(ImageError, match="sha256 mismatch"):
        download("demo", f"{url}/bad.tar.gz", "0" * 64)
    assert sorted(p.name for p in cached_path(sha).parent.iterdir()) == [cached_path(sha).name]  # nothing partial
    with pytest.raises(ImageError, match="cannot download"):
        download("demo", f"{url}/missing.tar.gz", "0" * 64)


@pytest.fixture(scope="session")
def alpine_copy() -> Path | None:
    """This machine's copy of the pinned Alpine tarball (found before a test empties the sources),
    to serve from loopback — never fetched from outside."""
    for candidate in [cached_path(ALPINE.sha256), *sorted(rootfs.shared_images_dir().glob("alpine-minirootfs-*"))]:
        if candidate.exists() and file_sha256(candidate) == ALPINE.sha256:
            return candidate
    return None


def test_the_pinned_alpine_is_downloaded_from_its_url_when_no_local_copy_exists(alpine_copy, server, monkeypatch,
                                                                                 tmp_path):
    source = alpine_copy
    if source is None:
        pytest.skip("no copy of the pinned Alpine tarball on this machine to serve from loopback")
    root, url, hits = server
    shutil.copyfile(source, root / "alpine.tar.gz")
    monkeypatch.setenv("CANTAINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CANTAINER_SHARED_IMAGES", str(tmp_path / "shared"))
    monkeypatch.delenv("CANTAINER_OFFLINE", raising=False)
    image = rootfs.base_image(url=f"{url}/alpine.tar.gz")
    assert (image.kind, image.sha256, image.os_release) == ("alpine", ALPINE.sha256, rootfs.ALPINE_RELEASE)
    assert hits == ["/alpine.tar.gz"] and image.path == cached_path(ALPINE.sha256)
    assert rootfs.base_image(url=f"{url}/alpine.tar.gz").kind == "alpine" and len(hits) == 1  # cached now


def test_shared_images_seed_the_cache_without_a_download(alpine_copy, empty, server):
    source = alpine_copy
    if source is None:
        pytest.skip("no copy of the pinned Alpine tarball on this machine")
    _, url, hits = server
    shutil.copyfile(source, empty / "shared" / f"alpine-minirootfs-{ALPINE.version}-x86_64.tar.gz")
    assert rootfs.base_image(url=f"{url}/alpine.tar.gz").kind == "alpine" and hits == []


def test_with_no_source_at_all_the_busybox_rootfs_is_built(empty, monkeypatch):
    monkeypatch.setenv("CANTAINER_OFFLINE", "1")  # and no download is tried
    image = rootfs.base_image()
    assert image.kind == "busybox" and image.os_release["ID"] == "busybox"
    assert image.os_release["VERSION_ID"][0].isdigit() and file_sha256(image.path) == image.sha256
    assert rootfs.base_image().sha256 == image.sha256  # deterministic bytes: the same image again


def test_a_failed_download_falls_back_to_busybox(empty, server):
    _, url, hits = server
    assert rootfs.base_image(url=f"{url}/nothing-here.tar.gz").kind == "busybox" and hits == ["/nothing-here.tar.gz"]


def test_the_busybox_rootfs_pings_without_net_raw_as_containers_must(empty, monkeypatch, tmp_path):
    """Containers never get CAP_NET_RAW: the fallback's ping must use an ICMP datagram socket (the
    runtime sets net.ipv4.ping_group_range for it), as Alpine's does. Run it in a chroot of the built
    image, in a fresh network namespace, with NET_RAW gone from every capability set."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, a network namespace)")  # `make test` runs as root
    monkeypatch.setenv("CANTAINER_OFFLINE", "1")
    image = rootfs.base_image()
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(image.path) as tar:
        assert not tar.getmember("./bin/ping").issym()  # not busybox's applet, which needs NET_RAW
        tar.extractall(root)
    script = ('ip link set lo up && sysctl -qw net.ipv4.ping_group_range="0 2147483647" && '
              f'exec setpriv --inh-caps -net_raw --bounding-set -net_raw chroot {root} /bin/ping -c 1 -W 2 127.0.0.1')
    result = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "1 received" in result.stdout, result.stdout + result.stderr
