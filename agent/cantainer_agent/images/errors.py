"""Errors of image handling. Every message is one line naming the image and the cause."""
from __future__ import annotations

from ..errors import AgentError


class ImageSourceError(AgentError):
    """An image reference, manifest, config or registry answer is unusable (the user's to fix)."""


class BadReference(ImageSourceError):
    """Not a valid image reference."""


class RegistryError(ImageSourceError):
    """The registry could not be reached or answered with an error."""


class Unreachable(RegistryError):
    """No connection to the registry at all (refused, no route, name not known, timeout)."""


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    """The repository, tag or digest does not exist in the registry."""


class DigestMismatch(ImageSourceError):
    pass


class UnsupportedMediaType(ImageSourceError):
    pass


class NoMatchingPlatform(ImageSourceError):
    pass
