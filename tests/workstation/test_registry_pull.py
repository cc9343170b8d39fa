"""Pulling from a real registry (Debian's docker-registry on loopback) into the workstation's store,
loading `docker save` and OCI archives, and the store's garbage collection. No lab needed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cantainer.image_archive import load
from cantainer.image_store import ImageError, Store
from cantainer.inventory import RegistrySettings
from cantainer.registries import pull
from cantainer_agent.images.manifest import Platform, host_platform
from cantainer_agent.images.reference import parse_reference
from tests.images.build import docker_archive, manifest_of, push, run
from tests.images.registry import Registry

AMD64 = Platform("linux", "amd64")
CREDS = ("tester", "s3cret-pass")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, oci_layout):
    with Registry(tmp_path_factory.mktemp("registry"), "127.0.0.1") as reg:
        reg.digests = {"app": push(oci_layout, "app", reg.host, "team/app"),
                       "multi": push(oci_layout, "multi", reg.host, "team/app", all_platforms=True),
                       "docker": push(oci_layout, "app", reg.host, "team/docker", docker_format=True)}
        yield reg


@pytest.fixture(scope="module")
def private(tmp_path_factory, oci_layout):
    with Registry(tmp_path_factory.mktemp("private"), "127.0.0.1", auth=CREDS) as reg:
        reg.digest = push(oci_layout, "app", reg.host, "team/app", creds=CREDS)
        yield reg


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, oci_layout):
    """A registry behind bearer-token auth, and its token server."""
    from tests.images.tokens import TokenServer

    base = tmp_path_factory.mktemp("tokens")
    server = TokenServer(base, *CREDS)
    try:
        with Registry(base / "registry", "127.0.0.1", token_auth=server.registry_config()) as reg:
            reg.digest = push(oci_layout, "app", reg.host, "team/app", creds=CREDS)
            yield reg, server
    finally:
        server.close()


def settings(registry, **extra) -> RegistrySettings:
    return RegistrySettings(registry.host, insecure=True, **extra)


def password_file(tmp_path: Path, password: str, mode: int = 0o600) -> Path:
    path = tmp_path / "password"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def test_pull_by_tag_resolves_once_and_keeps_everything_verified(tmp_path, registry, oci_layout):
    store = Store(tmp_path / "store")
    image = pull(store, parse_reference(f"{registry.host}/team/app:app"), settings(registry), AMD64)
    assert image.digest == registry.digests["app"]
    assert store.lookup(f"{registry.host}/team/app:app") == image.digest
    built = manifest_of(oci_layout, "app")
    assert [layer.digest for layer in image.layers] == [layer["digest"] for layer in built["layers"]]
    assert image.config.user == "web" and image.config.exposed_ports == ("8080/tcp",)
    assert image.config.entrypoint == ("/app/entry.sh",) and image.config.workdir == "/srv/www"
    for layer in image.layers:  # every blob here hashes to its name
        assert subprocess.run(["sha256sum", str(layer.path)], capture_output=True, text=True).stdout.split()[0] \
            == layer.digest[7:]
    before = {p.name: p.stat().st_mtime_ns for p in store.blobs.iterdir()}
    again = pull(store, parse_reference(f"{registry.host}/team/app:app"), settings(registry), AMD64)
    assert again.digest == image.digest
    assert {p.name: p.stat().st_mtime_ns for p in store.blobs.iterdir()} == before  # nothing fetched again


def test_pull_by_digest_and_docker_schema2(tmp_path, registry):
    store = Store(tmp_path / "store")
    pinned = pull(store, parse_reference(f"{registry.host}/team/app@{registry.digests['app']}"), settings(registry),
                  AMD64)
    assert pinned.digest == registry.digests["app"]
    assert store.lookup(f"{registry.host}/team/app@{registry.digests['app']}") == pinned.digest
    docker = pull(store, parse_reference(f"{registry.host}/team/docker:app"), settings(registry), AMD64)
    assert docker.digest == registry.digests["docker"] != pinned.digest
    assert store.document(docker.digest, "x").media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert [layer.diff_id for layer in docker.layers] == [layer.diff_id for layer in pinned.layers]


def test_an_index_gives_the_platform_asked_for(tmp_path, registry):
    store = Store(tmp_path / "store")
    reference = parse_reference(f"{registry.host}/team/app:multi")
    for platform, label in ((AMD64, "linux/amd64"), (host_platform("aarch64"), "linux/arm64"),
                            (host_platform("armv7l"), "linux/arm/v7")):
        image = pull(store, reference, settings(registry), platform)
        assert image.digest == registry.digests["multi"]
        marker = subprocess.run(["tar", "-xOf", str(image.layers[-1].path), "platform"], capture_output=True)
        assert marker.stdout.decode().strip() == label
    assert store.platforms(registry.digests["multi"]) == ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    with pytest.raises(ImageError, match=r"no manifest for platform linux/s390x \(the index offers"):
        pull(store, reference, settings(registry), host_platform("s390x"))


@pytest.mark.parametrize("ref, fragment", [("team/app:nope", "not found"), ("team/ghost:1", "not found"),
                                           (f"team/app@sha256:{'0' * 64}", "not found")])
def test_unknown_tag_and_repository(tmp_path, registry, ref, fragment):
    with pytest.raises(ImageError, match=fragment) as caught:
        pull(Store(tmp_path / "s"), parse_reference(f"{registry.host}/{ref}"), settings(registry), AMD64)
    assert "\n" not in str(caught.value)


def test_unreachable_and_tls_errors(tmp_path, registry):
    from tests.images.registry import free_port

    closed = f"127.0.0.1:{free_port('127.0.0.1')}"
    with pytest.raises(ImageError, match="unreachable"):
        pull(Store(tmp_path / "s"), parse_reference(f"{closed}/x:1"), RegistrySettings(closed), AMD64)
    with pytest.raises(ImageError, match="unreachable"):  # a plain-HTTP registry without insecure = true
        pull(Store(tmp_path / "s"), parse_reference(f"{registry.host}/team/app:app"), RegistrySettings(registry.host),
             AMD64)


def test_basic_auth(tmp_path, private):
    reference = parse_reference(f"{private.host}/team/app:app")
    with pytest.raises(ImageError, match="needs credentials"):
        pull(Store(tmp_path / "s"), reference, settings(private), AMD64)
    wrong = settings(private, username=CREDS[0], password_file=password_file(tmp_path, "wrong"))
    with pytest.raises(ImageError, match="authentication failed") as caught:
        pull(Store(tmp_path / "s"), reference, wrong, AMD64)
    assert "wrong" not in str(caught.value)  # the password never appears in an error
    right = settings(private, username=CREDS[0], password_file=password_file(tmp_path, CREDS[1]))
    assert pull(Store(tmp_path / "s"), reference, right, AMD64).digest == private.digest
    loose = settings(private, username=CREDS[0], password_file=password_file(tmp_path, CREDS[1], 0o644))
    with pytest.raises(ImageError, match="readable by others"):
        pull(Store(tmp_path / "s"), reference, loose, AMD64)


def test_bearer_token_auth(tmp_path, tokens, oci_layout):
    registry, server = tokens
    reference = parse_reference(f"{registry.host}/team/app:app")
    with pytest.raises(ImageError, match="needs credentials"):
        pull(Store(tmp_path / "s"), reference, settings(registry), AMD64)
    with pytest.raises(ImageError, match="authentication failed"):
        pull(Store(tmp_path / "s"), reference, settings(registry, username=CREDS[0],
                                                         password_file=password_file(tmp_path, "wrong")), AMD64)
    assert server.refused >= 1
    server.issued.clear()
    right = settings(registry, username=CREDS[0], password_file=password_file(tmp_path, CREDS[1]))
    image = pull(Store(tmp_path / "s"), reference, right, AMD64)
    assert image.digest == registry.digest and len(image.layers) == len(manifest_of(oci_layout, "app")["layers"])
    assert server.issued == ["repository:team/app:pull"]  # one token for the whole pull, pull access only


def test_docker_save_archive_loads_with_the_same_layers(tmp_path, registry, oci_layout):
    store = Store(tmp_path / "store")
    archive = docker_archive(oci_layout, "app", tmp_path / "app.tar", "team/app:v1")
    [(name, digest)] = load(store, archive)
    assert name == "team/app:v1"  # docker.io/library/ and docker.io/ are shortened as docker shows them
    loaded = store.image(name, digest, AMD64)
    pulled = pull(store, parse_reference(f"{registry.host}/team/app:app"), settings(registry), AMD64)
    assert [layer.diff_id for layer in loaded.layers] == [layer.diff_id for layer in pulled.layers]
    assert loaded.config == pulled.config
    assert all(layer.digest == layer.diff_id for layer in loaded.layers)  # docker save keeps layers uncompressed


def test_oci_archive_loads_every_tag(tmp_path, oci_layout):
    archive = tmp_path / "bundle.tar"
    run("skopeo", "copy", "--quiet", f"oci:{oci_layout}:app", f"oci-archive:{archive}:shop/web:2.0")
    store = Store(tmp_path / "store")
    [(name, digest)] = load(store, archive)
    assert name == "shop/web:2.0" and store.image(name, digest, AMD64).config.user == "web"


@pytest.mark.parametrize("content, fragment", [(b"not a tar at all" * 64, "not a readable tar archive"),
                                               (None, "neither a `docker save` archive")])
def test_bad_archives(tmp_path, content, fragment):
    path = tmp_path / "bad.tar"
    if content is None:
        run("tar", "-cf", str(path), "-C", str(tmp_path), "--files-from", "/dev/null")
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=fragment):
        load(Store(tmp_path / "store"), path)


def test_gc_keeps_what_a_name_reaches(tmp_path, registry, oci_layout):
    store = Store(tmp_path / "store")
    pull(store, parse_reference(f"{registry.host}/team/app:app"), settings(registry), AMD64)
    pull(store, parse_reference(f"{registry.host}/team/app:multi"), settings(registry), AMD64)
    shared = manifest_of(oci_layout, "app")["layers"][0]["digest"]
    assert store.untag(f"{registry.host}/team/app:multi")
    count, _ = store.gc()
    assert count > 0 and store.has(shared) and store.has(registry.digests["app"])
    assert not store.has(registry.digests["multi"])
    store.untag(f"{registry.host}/team/app:app")
    store.gc()
    assert [p for p in store.blobs.iterdir()] == []


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CANTAINER_CACHE": str(cache)}
    env.pop("CANTAINER_INVENTORY", None)
    return subprocess.run([sys.executable, "-m", "cantainer.cli", "image", *args], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_image_commands_and_their_one_line_errors(tmp_path, registry, oci_layout):
    from tests.labcli import ok, one_line_error

    cache = tmp_path / "cache"
    archive = docker_archive(oci_layout, "app", tmp_path / "app.tar", "app:v1")
    assert ok(cli("load", str(archive), cache=cache)).startswith("loaded app:v1 sha256:")
    one_line_error(cli("pull", f"{registry.host}/team/app:app", cache=cache), "unreachable")  # no insecure = true
    listing = ok(cli("ls", cache=cache))
    assert "app:v1" in listing and "linux/amd64" in listing
    one_line_error(cli("rm", "ghost:1", cache=cache), "no image named ghost:1")
    one_line_error(cli("load", str(tmp_path / "missing.tar"), cache=cache), "is not a file")
    one_line_error(cli("pull", "not-a-ref", cache=cache), "names no registry")
    one_line_error(cli("pull", f"{registry.host}/team/app:app", "--platform", "arm64", cache=cache), "OS/ARCH")
    assert "removed app:v1" in ok(cli("rm", "app:v1", cache=cache))
    assert ok(cli("ls", "--json", cache=cache)).strip() == "[]"
