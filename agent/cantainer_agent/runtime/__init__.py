"""cantainer_agent.runtime — the host's container runtime (stdlib only, Python >= 3.10, root).

Public API::

    LayerStore(root)                      images.py: image layers, verified, safely extracted, once per host
    ContainerSpec, Limits, parse_bytes    spec.py: what to run
    Runtime(state_dir, run_dir, cgroup_parent, on_exit=...)      container.py
        .start(spec, lower_dirs, before_exec=None) -> ContainerInfo
        .stop(id, timeout) / .kill(id, sig) / .remove(id, force=False) / .wait(id, timeout)
        .inspect(id) / .list() -> ContainerInfo(s) / .logs(id) -> path / .exec(id, argv) -> exit code
    CgroupManager, detect_cgroups         cgroups.py: v1 and v2

Names are imported lazily (PEP 562) so that the fork server, which imports only what a container
start needs, stays small: every fork copies its page tables.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "cgroups": ("CgroupLayout", "CgroupManager"),
    "container": ("DEFAULT_CAPS", "DEFAULT_RUN_DIR", "DEFAULT_STATE_DIR", "DOCKER_DEFAULT_CAPS", "Runtime"),
    "errors": (
        "AbsolutePathError", "CgroupError", "ChecksumMismatch", "CommandFailed", "ContainerError", "ContainerExists",
        "ContainerNotFound", "ContainerNotRunning", "ContainerRunning", "HardlinkEscapeError", "ImageError",
        "ImageNotFound", "InvalidTarball", "PathTraversalError", "RuntimeFailure", "SpecError", "StartError",
        "SymlinkEscapeError", "UnsafeTarball",
    ),
    "images": ("LayerStore",),
    "spec": ("ContainerSpec", "Limits", "parse_bytes"),
    "records": ("CREATED", "DEAD", "EXITED", "RUNNING", "ContainerInfo"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_WHERE["detect_cgroups"] = "cgroups"

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), "detect" if name == "detect_cgroups" else name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
