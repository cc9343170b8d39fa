"""Exceptions of the runtime. Every message is one line naming the object and the cause."""

from __future__ import annotations

from ..errors import AgentError


class RuntimeFailure(AgentError):
    """Base class of every error the runtime raises on purpose."""


# -- images --------------------------------------------------------------------------------------
class ImageError(RuntimeFailure):
    """An image cannot be imported or found."""


class ImageNotFound(ImageError):
    pass


class ChecksumMismatch(ImageError):
    def __init__(self, path: str, expected: str, actual: str):
        super().__init__(f"{path}: sha256 is {actual}, expected {expected}")
        self.path, self.expected, self.actual = path, expected, actual


class InvalidTarball(ImageError):
    """The file is not a readable (gzip/xz/bz2/plain) tar archive, or has conflicting entries."""


class UnsafeTarball(ImageError):
    """A member would write outside the root or create something we refuse to create."""

    def __init__(self, member: str, reason: str):
        super().__init__(f"unsafe tar member {member!r}: {reason}")
        self.member = member


class AbsolutePathError(UnsafeTarball):
    pass


class PathTraversalError(UnsafeTarball):
    pass


class SymlinkEscapeError(UnsafeTarball):
    pass


class HardlinkEscapeError(UnsafeTarball):
    pass


# -- specs and cgroups ---------------------------------------------------------------------------
class SpecError(RuntimeFailure, ValueError):
    """A ContainerSpec field is invalid."""


class CgroupError(RuntimeFailure):
    """A cgroup cannot be created, configured, joined or removed."""


# -- containers ----------------------------------------------------------------------------------
class ContainerError(RuntimeFailure):
    pass


class ContainerNotFound(ContainerError):
    pass


class ContainerExists(ContainerError):
    pass


class ContainerRunning(ContainerError):
    """The operation needs a stopped container."""


class ContainerNotRunning(ContainerError):
    """The operation needs a running container."""


class CommandFailed(ContainerError):
    """The container's command could not be executed; *exit_code* is docker's: 127 not found, 126 not
    executable (a directory, no permission, not a binary)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StartError(ContainerError):
    """The container could not be started; nothing of it is left behind."""
