"""OCI and Docker schema-2 manifests and indexes: parsing, validation and the host's platform.

``parse(body, media_type)`` returns a ``Manifest`` (config + layers) or an ``Index`` (one manifest
per platform); both Docker schema-2 and OCI media types are accepted, schema 1 and foreign layers
are refused with one line. ``choose(index, platform)`` picks the entry for ``linux/<arch>[/<variant>]``
the way containerd's default matcher does: same os and architecture, the exact variant first, then
an entry without a variant (arm64's default is v8), then, for 32-bit arm, an older variant.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from .errors import DigestMismatch, ImageSourceError, NoMatchingPlatform, UnsupportedMediaType
from .reference import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# Layer media types we can apply, and how each is compressed.
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
FOREIGN_LAYER_TYPES = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",)
MAX_MANIFEST = 4 * 1024 * 1024  # the Distribution registry's own limit
MAX_CONFIG = 8 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(what: str, data: bytes, expected: str) -> None:
    actual = sha256_digest(data)
    if actual != expected:
        raise DigestMismatch(f"{what}: content has digest {actual[:19]}…, expected {expected[:19]}…")


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ImageSourceError(f"platform {text!r} is not OS/ARCH[/VARIANT] (e.g. linux/arm64)")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


# uname -m -> (GOARCH, variant), as Go and the OCI image spec name them
_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"), "i386": ("386", None),
    "i686": ("386", None), "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}


def host_platform(machine: str | None = None) -> Platform:
    """The platform of a Linux host from its ``uname -m``."""
    machine = machine or os.uname().machine
    arch, variant = _MACHINES.get(machine, (machine, None))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: dict = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict:
        out = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture,
                               **({"variant": self.platform.variant} if self.platform.variant else {})}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


def _descriptor(where: str, value: object, default_type: str | None = None) -> Descriptor:
    if not isinstance(value, dict):
        raise ImageSourceError(f"{where}: a descriptor must be an object")
    media_type = value.get("mediaType", default_type)
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ImageSourceError(f"{where}: descriptor without mediaType")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ImageSourceError(f"{where}: digest {digest!r} is not sha256: and 64 hex digits")
    if type(size) is not int or size < 0:
        raise ImageSourceError(f"{where}: size {size!r} is not a byte count")
    platform = None
    raw = value.get("platform")
    if isinstance(raw, dict):
        if not isinstance(raw.get("os"), str) or not isinstance(raw.get("architecture"), str):
            raise ImageSourceError(f"{where}: platform needs os and architecture")
        variant = raw.get("variant")
        platform = Platform(raw["os"], raw["architecture"], variant if isinstance(variant, str) and variant else None)
    urls = value.get("urls") or ()
    annotations = value.get("annotations") or {}
    return Descriptor(media_type, digest, size, platform, tuple(str(u) for u in urls),
                      annotations if isinstance(annotations, dict) else {})


def parse(body: bytes, media_type: str | None = None, where: str = "manifest") -> Manifest | Index:
    """Parse a manifest or index. *media_type* is the Content-Type the registry sent, if any."""
    if len(body) > MAX_MANIFEST:
        raise ImageSourceError(f"{where}: larger than {MAX_MANIFEST // (1 << 20)} MiB")
    try:
        document = json.loads(body)
    except ValueError:
        raise ImageSourceError(f"{where}: not valid JSON") from None
    if not isinstance(document, dict):
        raise ImageSourceError(f"{where}: not a JSON object")
    declared = document.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else (media_type or "").split(";")[0].strip()
    if not kind:  # OCI allows leaving mediaType out: tell manifest from index by shape
        kind = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if kind in DOCKER_SCHEMA1 or document.get("schemaVersion") == 1:
        raise UnsupportedMediaType(f"{where}: Docker schema 1 manifests are not supported "
                                   f"(deprecated; push the image again with a current tool)")
    if document.get("schemaVersion") != 2:
        raise ImageSourceError(f"{where}: schemaVersion {document.get('schemaVersion')!r} is not 2")
    if kind in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise ImageSourceError(f"{where}: an index needs a manifests list")
        return Index(kind, tuple(_descriptor(f"{where} manifests[{i}]", entry) for i, entry in enumerate(entries)))
    if kind not in MANIFEST_TYPES:
        raise UnsupportedMediaType(f"{where}: media type {kind!r} is not an image manifest or index")
    config = _descriptor(f"{where} config", document.get("config"))
    if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
        raise UnsupportedMediaType(f"{where}: config media type {config.media_type!r} is not an image config "
                                   f"(an artifact, not a container image?)")
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageSourceError(f"{where}: a manifest needs a layers list")
    layers = tuple(_descriptor(f"{where} layers[{i}]", entry) for i, entry in enumerate(raw_layers))
    for layer in layers:
        check_layer_type(where, layer)
    return Manifest(kind, config, layers)


def check_layer_type(where: str, layer: Descriptor) -> str:
    """The compression of *layer* ("tar" or "gzip"); UnsupportedMediaType for anything else."""
    if layer.media_type in FOREIGN_LAYER_TYPES or layer.urls:
        raise UnsupportedMediaType(f"{where}: layer {layer.digest[:19]}… is a foreign layer (fetched from "
                                   f"{', '.join(layer.urls) or 'elsewhere'}); not supported")
    compression = LAYER_TYPES.get(layer.media_type)
    if compression is None:
        hint = " (zstd is not in Python's standard library; push it gzip-compressed)" if "zstd" in layer.media_type \
            else ""
        raise UnsupportedMediaType(f"{where}: layer media type {layer.media_type!r} is not supported{hint}")
    return compression


def choose(index: Index, platform: Platform, where: str = "image") -> Descriptor:
    """The index entry for *platform*; NoMatchingPlatform listing what the index offers."""
    candidates = [d for d in index.manifests if d.media_type in MANIFEST_TYPES and d.platform is not None
                  and d.platform.os == platform.os and d.platform.architecture == platform.architecture]

    def rank(descriptor: Descriptor) -> int | None:
        variant = descriptor.platform.variant  # type: ignore[union-attr]
        if variant == platform.variant:
            return 0
        if variant is None or (platform.architecture == "arm64" and variant == "v8" and platform.variant is None):
            return 1
        if platform.architecture == "arm" and platform.variant and variant < platform.variant:
            return 2 + (ord(platform.variant[-1]) - ord(variant[-1]))  # the newest older variant first
        return None

    ranked = sorted((r, i, d) for i, d in enumerate(candidates) if (r := rank(d)) is not None)
    if ranked:
        return ranked[0][2]
    offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None}) or ["none"]
    raise NoMatchingPlatform(f"{where}: no manifest for platform {platform} (the index offers "
                             f"{', '.join(offered)})")
