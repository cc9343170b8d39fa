"""The workstation's image store: content-addressed blobs and the names that point at them.

Under ``images.cache_dir()`` (``~/.cache/cantainer/images``): ``blobs/sha256/<hex>`` holds every
manifest, index, config and layer blob, written once through a temporary file and renamed only
after its digest matched; ``tags.json`` maps a name (``app:1.0``, ``registry:5000/team/app:1.0``) to
the digest of an index or manifest. An index may have only some of its platforms here. ``gc`` keeps
what a tag reaches; ``lock`` serialises writers of ``tags.json`` across processes (flock).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cantainer.errors import CantainerError
from cantainer_agent.images.config import ImageConfig
from cantainer_agent.images.errors import ImageSourceError
from cantainer_agent.images.manifest import Index, Manifest, Platform, choose, parse
from cantainer_agent.images.reference import DIGEST_RE

_CHUNK = 1 << 20


class ImageError(CantainerError):
    """An image cannot be resolved, fetched, loaded or verified."""


class RegistryUnreachable(ImageError):
    """No connection to the registry at all."""


@dataclass(frozen=True)
class LayerBlob:
    digest: str           # of the blob as stored and pushed (compressed or not)
    diff_id: str          # of the uncompressed tar: what hosts key layers by
    size: int
    path: Path | None     # where the blob is on this workstation (None: hosts pull it themselves)


@dataclass(frozen=True)
class RunImage:
    """An image resolved for one `run`: what the host needs to start it."""

    reference: str        # as the user named it (shown in ps)
    digest: str           # what it resolved to: the index or manifest digest (or a tarball's sha256)
    config: ImageConfig
    layers: tuple[LayerBlob, ...]

    def params(self) -> dict:
        """The ``image`` object of the agent's ``container.run``."""
        return {"reference": self.reference, "digest": self.digest, "config": self.config.to_dict(),
                "layers": [layer.diff_id for layer in self.layers]}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"

    # -- blobs -----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
            raise ImageError(f"{digest!r} is not a sha256 digest")
        return self.blobs / digest[7:]

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"blob {digest[:19]}… is not in the image store {self.root}",
                             "pull or load the image again") from None

    def temp_path(self) -> Path:
        self.blobs.mkdir(parents=True, exist_ok=True)
        return self.blobs / f".tmp-{os.getpid()}-{os.urandom(4).hex()}"

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and actual != digest:
            raise ImageError(f"content has digest {actual[:19]}…, expected {digest[:19]}…")
        if not self.has(actual):
            temp = self.temp_path()
            temp.write_bytes(data)
            temp.replace(self.blob_path(actual))
        return actual

    def adopt(self, temp: Path, digest: str) -> None:
        """Move the verified file *temp* (from ``temp_path``) into place as blob *digest*."""
        temp.replace(self.blob_path(digest))

    # -- names -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "tags.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def tags(self) -> dict[str, dict]:
        try:
            data = json.loads((self.root / "tags.json").read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise ImageError(f"{self.root / 'tags.json'} is not valid JSON",
                             "remove it; `cantainer image ls` will then be empty") from None
        return data if isinstance(data, dict) else {}

    def _write_tags(self, tags: dict[str, dict]) -> None:
        temp = self.root / f".tags-{os.getpid()}.json"
        temp.write_text(json.dumps(tags, indent=1, sort_keys=True))
        temp.replace(self.root / "tags.json")

    def tag(self, name: str, digest: str, source: str) -> None:
        with self.lock():
            tags = self.tags()
            tags[name] = {"digest": digest, "source": source, "at": time.time()}
            self._write_tags(tags)

    def untag(self, name: str) -> bool:
        with self.lock():
            tags = self.tags()
            if tags.pop(name, None) is None:
                return False
            self._write_tags(tags)
            return True

    def lookup(self, name: str) -> str | None:
        entry = self.tags().get(name)
        return entry.get("digest") if isinstance(entry, dict) else None

    # -- images ----------------------------------------------------------------------------------
    def document(self, digest: str, what: str) -> Manifest | Index:
        try:
            return parse(self.read(digest), None, what)
        except ImageSourceError as error:
            raise ImageError(str(error)) from None

    def platforms(self, digest: str) -> list[str]:
        """The platforms of the image *digest* that this store can run (their manifests are here)."""
        document = self.document(digest, digest)
        if isinstance(document, Manifest):
            config = self.config(document, digest)
            return [str(Platform(config.os, config.architecture, config.variant))]
        return sorted(str(d.platform) for d in document.manifests if d.platform is not None and self.has(d.digest))

    def config(self, manifest: Manifest, what: str) -> ImageConfig:
        try:
            return ImageConfig.parse(self.read(manifest.config.digest), f"{what} config")
        except ImageSourceError as error:
            raise ImageError(str(error)) from None

    def image(self, reference: str, digest: str, platform: Platform) -> RunImage:
        """The image *digest* for *platform*, every blob of it here."""
        document = self.document(digest, reference)
        if isinstance(document, Index):
            try:
                chosen = choose(document, platform, reference)
            except ImageSourceError as error:
                raise ImageError(str(error)) from None
            if not self.has(chosen.digest):
                raise ImageError(f"{reference}: its {platform} manifest is not in the image store",
                                 f"pull it for that platform: cantainer image pull --platform {platform} REF")
            document = self.document(chosen.digest, reference)
            if isinstance(document, Index):
                raise ImageError(f"{reference}: an index inside an index is not supported")
        config = self.config(document, reference)
        from cantainer_agent.images.registry import check_layers  # not at import: http.client, ssl, email

        try:
            check_layers(reference, document, config)
        except ImageSourceError as error:
            raise ImageError(str(error)) from None
        layers = []
        for descriptor, diff_id in zip(document.layers, config.diff_ids, strict=True):
            if not self.has(descriptor.digest):
                raise ImageError(f"{reference}: layer {descriptor.digest[:19]}… is not in the image store",
                                 "pull or load the image again")
            layers.append(LayerBlob(descriptor.digest, diff_id, descriptor.size, self.blob_path(descriptor.digest)))
        return RunImage(reference, digest, config, tuple(layers))

    def reachable(self, digest: str) -> set[str]:
        """Every blob the image *digest* references that is here (itself included)."""
        if not self.has(digest):
            return set()
        seen = {digest}
        try:
            document = parse(self.read(digest))
        except ImageSourceError:
            return seen
        if isinstance(document, Index):
            for entry in document.manifests:
                seen |= self.reachable(entry.digest)
        else:
            seen.add(document.config.digest)
            seen.update(layer.digest for layer in document.layers)
        return seen

    def gc(self) -> tuple[int, int]:
        """Delete blobs no tag reaches (and stale temporary files); returns (count, bytes) freed."""
        with self.lock():
            keep: set[str] = set()
            for entry in self.tags().values():
                keep |= self.reachable(entry.get("digest", ""))
            count = size = 0
            for path in self.blobs.iterdir() if self.blobs.is_dir() else []:
                stale_temp = path.name.startswith(".tmp-") and time.time() - path.stat().st_mtime > 3600
                if stale_temp or (not path.name.startswith(".") and f"sha256:{path.name}" not in keep):
                    size += path.stat().st_size
                    path.unlink()
                    count += 1
            return count, size

    def size(self, digest: str) -> int:
        return sum(self.blob_path(d).stat().st_size for d in self.reachable(digest))
