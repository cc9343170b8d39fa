"""Manifests and indexes: both media-type families, refusals, and choosing the host's platform."""
from __future__ import annotations

import json

import pytest

from cantainer_agent.images.errors import DigestMismatch, ImageSourceError, NoMatchingPlatform, UnsupportedMediaType
from cantainer_agent.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    Platform,
    check_digest,
    choose,
    host_platform,
    parse,
    sha256_digest,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def manifest(media_type=OCI_MANIFEST, config_type=OCI_CONFIG,
             layer_type="application/vnd.oci.image.layer.v1.tar+gzip", **extra) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": {"mediaType": config_type, "digest": D1, "size": 10},
                       "layers": [{"mediaType": layer_type, "digest": D2, "size": 20, **extra}]}).encode()


def index(entries, media_type=OCI_INDEX) -> Index:
    body = {"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": platform}
        for digest, platform in entries]}
    result = parse(json.dumps(body).encode())
    assert isinstance(result, Index)
    return result


@pytest.mark.parametrize("kind, config_type, layer_type", [
    (OCI_MANIFEST, OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar+gzip"),
    (DOCKER_MANIFEST, DOCKER_CONFIG, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    (OCI_MANIFEST, OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar"),
])
def test_both_manifest_families_parse(kind, config_type, layer_type):
    result = parse(manifest(kind, config_type, layer_type))
    assert isinstance(result, Manifest) and result.media_type == kind
    assert result.config.digest == D1 and [layer.digest for layer in result.layers] == [D2]


def test_media_type_from_the_header_or_the_shape_when_the_body_has_none():
    body = json.loads(manifest())
    del body["mediaType"]
    assert isinstance(parse(json.dumps(body).encode(), DOCKER_MANIFEST + "; charset=utf-8"), Manifest)
    assert isinstance(parse(json.dumps(body).encode()), Manifest)
    assert isinstance(parse(json.dumps({"schemaVersion": 2, "manifests": []}).encode()), Index)
    assert parse(json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []}).encode()).media_type \
        == DOCKER_LIST


@pytest.mark.parametrize("body, error, fragment", [
    (json.dumps({"schemaVersion": 1, "name": "x"}).encode(), UnsupportedMediaType, "schema 1"),
    (manifest(config_type="application/vnd.cncf.helm.config.v1+json"), UnsupportedMediaType, "not an image config"),
    (manifest(layer_type="application/vnd.oci.image.layer.v1.tar+zstd"), UnsupportedMediaType, "zstd"),
    (manifest(layer_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), UnsupportedMediaType,
     "foreign"),
    (manifest(urls=["https://example.org/x"]), UnsupportedMediaType, "foreign"),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/json"}).encode(), UnsupportedMediaType, "media type"),
    (b"{not json", ImageSourceError, "not valid JSON"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG,
                 "digest": "md5:x", "size": 1}, "layers": []}).encode(), ImageSourceError, "digest"),
])
def test_refusals_are_one_clear_line(body, error, fragment):
    with pytest.raises(error, match=fragment) as caught:
        parse(body)
    assert "\n" not in str(caught.value)


def test_platform_choice_exact_then_no_variant_then_older_arm():
    entries = [(D1, {"os": "linux", "architecture": "amd64"}), (D2, {"os": "linux", "architecture": "arm64"}),
               (D3, {"os": "linux", "architecture": "arm", "variant": "v6"})]
    assert choose(index(entries), Platform("linux", "amd64")).digest == D1
    assert choose(index(entries), host_platform("aarch64")).digest == D2  # arm64 v8 takes the variant-less entry
    assert choose(index(entries), host_platform("armv7l")).digest == D3  # v7 runs v6
    with pytest.raises(NoMatchingPlatform, match=r"linux/s390x .*linux/amd64, linux/arm/v6, linux/arm64"):
        choose(index(entries), host_platform("s390x"))
    with pytest.raises(NoMatchingPlatform):
        choose(index([(D1, {"os": "windows", "architecture": "amd64"})]), Platform("linux", "amd64"))


def test_host_platform_names_and_parsing():
    assert str(host_platform("x86_64")) == "linux/amd64"
    assert str(host_platform("aarch64")) == "linux/arm64/v8"
    assert Platform.parse("linux/arm/v7") == Platform("linux", "arm", "v7")
    with pytest.raises(ImageSourceError, match="OS/ARCH"):
        Platform.parse("amd64")


def test_check_digest():
    check_digest("x", b"data", sha256_digest(b"data"))
    with pytest.raises(DigestMismatch, match="expected"):
        check_digest("x", b"data", D1)
