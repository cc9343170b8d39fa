"""Image references: ``HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`` (registry) and ``NAME[:TAG]`` (local store).

The grammar is the Distribution project's (``distribution/reference``): a registry reference starts
with a host — a first path component holding a ``.`` or a ``:``, or ``localhost``; repository
components are lowercase ``[a-z0-9]`` runs joined by ``.``, ``_``, ``__`` or ``-``; a tag is up to 128
of ``[A-Za-z0-9_.-]`` not starting with ``.`` or ``-``; a digest is ``sha256:`` and 64 hex digits
(other algorithms are refused). Without tag or digest the tag is ``latest``. Pure functions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadReference

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
HOST_RE = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]{{1,5}})?")
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_NAME = 255
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    registry: str          # "host[:port]", "" for a name in the local store
    repository: str        # "team/app"
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def reference(self) -> str:
        """What the registry's manifest endpoint takes: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def looks_like_registry(text: str) -> bool:
    """True if *text* names a registry host in its first component (``host.tld/…``, ``host:5000/…``)."""
    first, sep, _ = text.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _split(text: str) -> tuple[str, str | None, str | None]:
    name, at, digest = text.partition("@")
    if at and not DIGEST_RE.fullmatch(digest):
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9+._-]*:[0-9a-fA-F]+", digest):
            raise BadReference(f"image {text!r}: only sha256 digests are supported")
        raise BadReference(f"image {text!r}: {digest!r} is not a digest (sha256: and 64 lowercase hex digits)")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not TAG_RE.fullmatch(tag):
            raise BadReference(f"image {text!r}: {tag!r} is not a valid tag (letters, digits, _ . -; at most 128)")
    return name, tag, digest or None


def parse_reference(text: str) -> Reference:
    """A registry reference ``HOST[:PORT]/REPO[:TAG|@DIGEST]``; BadReference if it is not one."""
    if not isinstance(text, str) or not text or len(text) > MAX_NAME + 200 or text != text.strip():
        raise BadReference(f"image {text!r} is not a valid reference")
    if not looks_like_registry(text):
        raise BadReference(f"image {text!r} names no registry (HOST[:PORT]/REPO[:TAG])")
    name, tag, digest = _split(text)
    registry, _, repository = name.partition("/")
    if not HOST_RE.fullmatch(registry):
        raise BadReference(f"image {text!r}: {registry!r} is not a valid registry host[:port]")
    port = registry.rpartition(":")[2] if ":" in registry else None
    if port is not None and not 1 <= int(port) <= 65535:
        raise BadReference(f"image {text!r}: port {port} is out of range")
    _check_repository(text, repository, len(name))
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def parse_local(text: str) -> Reference:
    """A name in the workstation's store: ``NAME[:TAG]`` (NAME may hold ``/`` but no registry host)."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise BadReference(f"image {text!r} is not a valid name")
    if looks_like_registry(text):
        return parse_reference(text)
    name, tag, digest = _split(text)
    _check_repository(text, name, len(name))
    return Reference("", name, tag or (None if digest else DEFAULT_TAG), digest)


def _check_repository(text: str, repository: str, length: int) -> None:
    if not repository or not REPOSITORY_RE.fullmatch(repository):
        raise BadReference(f"image {text!r}: repository {repository!r} is invalid — use lowercase letters, "
                           f"digits and . _ - separated by /")
    if length > MAX_NAME:
        raise BadReference(f"image {text!r}: the name is longer than {MAX_NAME} characters")
