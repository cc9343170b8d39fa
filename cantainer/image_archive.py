"""``cantainer image load FILE``: a ``docker save`` archive or an OCI image layout tar, every tag in it.

A ``docker save`` tar has ``manifest.json`` (``Config``, ``RepoTags``, ``Layers`` as paths in the tar);
its layers are plain tars whose digest must equal the config's diff_ids; gzip'd ones are hashed
uncompressed too. An OCI layout tar (``oci-layout``, ``index.json``, ``blobs/sha256/…``, e.g. from
``skopeo copy … oci-archive:``) is copied blob by blob, each verified; a tag comes from the
``io.containerd.image.name`` or ``org.opencontainers.image.ref.name`` annotation (a bare tag is given
the file's name). Docker Hub names are shortened as docker shows them (``docker.io/library/x`` → ``x``).
Any compression of the outer tar is read; nothing is extracted to disk but blobs into the store.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
from pathlib import Path

from cantainer.image_store import ImageError, Store
from cantainer_agent.images.config import ImageConfig
from cantainer_agent.images.errors import ImageSourceError
from cantainer_agent.images.manifest import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Index,
    Manifest,
    parse,
    sha256_digest,
)
from cantainer_agent.images.reference import DIGEST_RE, parse_local

_CHUNK = 1 << 20
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def short_name(name: str) -> str:
    """docker's familiar form: ``docker.io/library/x:t`` → ``x:t``, ``docker.io/o/x:t`` → ``o/x:t``."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _tag_name(text: str, where: str) -> str:
    name = short_name(text)
    try:
        reference = parse_local(name)
    except ImageSourceError as error:
        raise ImageError(f"{where}: tag {text!r} is not an image name ({error})") from None
    return f"{reference.name}:{reference.tag}" if reference.tag else name


def _clean(name: str) -> str:
    return name[2:] if name.startswith("./") else name


class _Archive:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {_clean(m.name): m for m in self.tar.getmembers()}
        except (OSError, tarfile.TarError, EOFError) as error:
            raise ImageError(f"{path} is not a readable tar archive ({error})",
                             "give a `docker save` or OCI archive file") from None

    def open(self, name: str):
        member = self.members.get(_clean(name))
        if member is None or not member.isfile():
            raise ImageError(f"{self.path}: the archive has no file {name!r}", "the archive is incomplete or corrupt")
        handle = self.tar.extractfile(member)
        assert handle is not None
        return handle

    def read(self, name: str, limit: int = 16 << 20) -> bytes:
        data = self.open(name).read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{self.path}: {name} is larger than {limit >> 20} MiB")
        return data

    def copy_blob(self, store: Store, name: str, digest: str | None = None) -> tuple[str, str, int]:
        """Copy file *name* into the store; (digest, digest of its content uncompressed, size)."""
        source = self.open(name)
        temp = store.temp_path()
        blob, size = hashlib.sha256(), 0
        with open(temp, "wb") as out:
            head = b""
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                if not head:
                    head = chunk[:2]
                blob.update(chunk)
                size += len(chunk)
                out.write(chunk)
        actual = "sha256:" + blob.hexdigest()
        if digest is not None and actual != digest:
            temp.unlink()
            raise ImageError(f"{self.path}: {name} has digest {actual[:19]}…, expected {digest[:19]}…",
                             "the archive is corrupt")
        plain = actual
        if head == b"\x1f\x8b":
            inner = hashlib.sha256()
            with gzip.open(temp, "rb") as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    inner.update(chunk)
            plain = "sha256:" + inner.hexdigest()
        store.adopt(temp, actual)
        return actual, plain, size


def load(store: Store, path: Path) -> list[tuple[str, str]]:
    """Load every image of the archive at *path*; returns [(name:tag, digest)] in archive order."""
    if not path.is_file():
        raise ImageError(f"{path} is not a file", "give the path of a `docker save` or OCI archive")
    archive = _Archive(path)
    if "manifest.json" in archive.members:
        return _load_docker(store, archive)
    if "index.json" in archive.members and "oci-layout" in archive.members:
        return _load_oci(store, archive)
    raise ImageError(f"{path} is neither a `docker save` archive (manifest.json) nor an OCI layout (index.json)",
                     "make one with `docker save IMAGE -o FILE` or `skopeo copy … oci-archive:FILE`")


def _load_docker(store: Store, archive: _Archive) -> list[tuple[str, str]]:
    try:
        entries = json.loads(archive.read("manifest.json"))
    except ValueError:
        raise ImageError(f"{archive.path}: manifest.json is not valid JSON", "the archive is corrupt") from None
    if not isinstance(entries, list):
        raise ImageError(f"{archive.path}: manifest.json is not a list of images", "the archive is corrupt")
    loaded = []
    for number, entry in enumerate(entries):
        where = f"{archive.path} image {number + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ImageError(f"{where}: manifest.json entry lacks Config or Layers", "the archive is corrupt")
        config_bytes = archive.read(entry["Config"])
        try:
            config = ImageConfig.parse(config_bytes, f"{where} config")
        except ImageSourceError as error:
            raise ImageError(str(error)) from None
        if len(config.diff_ids) != len(entry["Layers"]):
            raise ImageError(f"{where}: {len(entry['Layers'])} layers but the config lists {len(config.diff_ids)}",
                             "the archive is corrupt")
        config_digest = store.put_bytes(config_bytes)
        layers = []
        for index, (name, diff_id) in enumerate(zip(entry["Layers"], config.diff_ids, strict=True)):
            match = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", str(name))
            digest, plain, size = archive.copy_blob(store, str(name), f"sha256:{match.group(1)}" if match else None)
            if plain != diff_id:
                raise ImageError(f"{where}: layer {index + 1} ({name}) does not match the config's diff_id "
                                 f"{diff_id[:19]}…", "the archive is corrupt")
            layers.append({"mediaType": OCI_LAYER_GZIP if plain != digest else OCI_LAYER_TAR,
                           "digest": digest, "size": size})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
            "mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)}, "layers": layers},
            separators=(",", ":")).encode()
        digest = store.put_bytes(manifest)
        tags = entry.get("RepoTags") or []
        for tag in tags:
            name = _tag_name(str(tag), where)
            store.tag(name, digest, f"loaded from {archive.path.name}")
            loaded.append((name, digest))
        if not tags:
            name = f"{archive.path.name.split('.')[0]}@{digest}"
            store.tag(name, digest, f"loaded from {archive.path.name}")
            loaded.append((name, digest))
    return loaded


def _copy_tree(store: Store, archive: _Archive, digest: str, media_type: str | None, where: str) -> None:
    """Copy the manifest or index *digest* and everything it references that the archive has."""
    body = archive.read(f"blobs/sha256/{digest[7:]}")
    if sha256_digest(body) != digest:
        raise ImageError(f"{where}: blob {digest[:19]}… does not match its digest", "the archive is corrupt")
    try:
        document = parse(body, media_type, where)
    except ImageSourceError as error:
        raise ImageError(str(error)) from None
    if isinstance(document, Index):
        for entry in document.manifests:
            if f"blobs/sha256/{entry.digest[7:]}" in archive.members:  # an archive may hold some platforms only
                _copy_tree(store, archive, entry.digest, entry.media_type, where)
    else:
        assert isinstance(document, Manifest)
        for blob in (document.config, *document.layers):
            if not store.has(blob.digest):
                archive.copy_blob(store, f"blobs/sha256/{blob.digest[7:]}", blob.digest)
    store.put_bytes(body, digest)


def _load_oci(store: Store, archive: _Archive) -> list[tuple[str, str]]:
    try:
        index = parse(archive.read("index.json"), None, f"{archive.path} index.json")
    except ImageSourceError as error:
        raise ImageError(str(error)) from None
    if not isinstance(index, Index):
        raise ImageError(f"{archive.path}: index.json is not an image index", "the archive is corrupt")
    stem = archive.path.name.split(".")[0]
    loaded = []
    for entry in index.manifests:
        if not DIGEST_RE.fullmatch(entry.digest):
            continue
        where = f"{archive.path} {entry.digest[:19]}…"
        _copy_tree(store, archive, entry.digest, entry.media_type, where)
        annotations = entry.annotations or {}
        full = annotations.get("io.containerd.image.name")
        ref = annotations.get("org.opencontainers.image.ref.name")
        if full:
            name = _tag_name(full, where)
        elif ref and (":" in ref.rpartition("/")[2] or "/" in ref):
            name = _tag_name(ref, where)
        elif ref:
            name = _tag_name(f"{stem}:{ref}", where)
        else:
            name = f"{stem}@{entry.digest}"
        store.tag(name, entry.digest, f"loaded from {archive.path.name}")
        loaded.append((name, entry.digest))
    return loaded
