"""A container's mounts — named volumes and bind mounts — as data, and what is allowed (pure).

``-v NAME:/path[:ro]`` mounts the named volume NAME (its data lives on one host, under
layout.volumes_dir); ``-v /host/path:/path[:ro]`` binds a host path. A mount is the dict
``{type: volume|bind, source, target, readonly}``: the CLI parses it, the state machine and the
runtime check it with the same rules. A bind source may not be, lie below, or contain a
*protected* directory (the agent's data, config, run and log dirs, /proc, /sys, /dev): checked here
on the path as written (``..`` normalised) and again by the container's init on the path the
kernel resolved (runtime/volumes.py), which is the check that counts. A target is absolute, has no
``..``, is not / and not below /proc, /sys or /dev. Both kinds are mounted nosuid,nodev.
"""
from __future__ import annotations

import posixpath
import re
from typing import Any

from . import layout

VOLUME, BIND = "volume", "bind"
KINDS = (VOLUME, BIND)
# Dots are allowed (a service's per-slot volume is NAME.SLOT); a leading dot never (trash names).
VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
KERNEL_DIRS = ("/proc", "/sys", "/dev")
MAX_MOUNTS = 32
MAX_PATH = 4096
OPTIONS = ("ro", "rw")


class MountError(ValueError):
    """A mount that is not allowed: one line saying what and how to fix it."""


def protected_dirs(data_dir: str = layout.DATA_DIR, run_dir: str = layout.RUN_DIR,
                   log_dir: str = layout.LOG_DIR, config_dir: str = layout.CONFIG_DIR) -> tuple[str, ...]:
    """The host directories no bind mount may reach: the agent's (as configured and as laid out) and
    the kernel's."""
    dirs = {data_dir, run_dir, log_dir, config_dir, layout.DATA_DIR, layout.RUN_DIR, layout.LOG_DIR,
            layout.CONFIG_DIR, *KERNEL_DIRS}
    return tuple(sorted(posixpath.normpath(d) for d in dirs))


PROTECTED = protected_dirs()


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def refusal(path: str, protected: tuple[str, ...] = PROTECTED) -> str | None:
    """Why a bind mount of the (absolute, normalised) host *path* is refused, or None."""
    for root in protected:
        if _under(path, root):
            return f"it is {'' if path == root else 'inside '}{root}"
        if _under(root, path):
            return f"it contains {root}"
    return None


def _clean_path(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise MountError(f"{what} must be a path")
    if "\x00" in value or "\n" in value or len(value) > MAX_PATH:
        raise MountError(f"{what} {value[:80]!r} is not a usable path (NUL, newline or longer than {MAX_PATH})")
    if not value.startswith("/"):
        raise MountError(f"{what} {value!r} is not an absolute path — write it from the root, like /srv/data")
    return value


def check_target(target: Any) -> str:
    """The container path a mount goes to, normalised; MountError if it is not allowed."""
    target = _clean_path("mount target", target)
    if ".." in target.split("/"):
        raise MountError(f"mount target {target!r} contains '..' — give the path inside the container directly")
    target = posixpath.normpath(target).replace("//", "/")
    if target == "/":
        raise MountError("mount target / would hide the image — mount below it, like /data")
    for root in KERNEL_DIRS:
        if _under(target, root):
            raise MountError(f"mount target {target} is inside {root}, which the container's kernel "
                             "file systems own — pick another path")
    return target


def check_bind_source(source: Any, protected: tuple[str, ...] = PROTECTED) -> str:
    """A bind mount's host path, normalised (``..`` resolved as written); MountError if refused."""
    source = posixpath.normpath(_clean_path("bind mount source", source)).replace("//", "/")
    reason = refusal(source, protected)
    if reason:
        raise MountError(f"bind mount source {source} is refused: {reason} (cantainer's or the kernel's own "
                         "files must not be reachable from a container) — bind a directory of your own")
    return source


def check_volume_dir(path: Any) -> str:
    """A volume's directory on its host, as the agent made it (no '..', normalised)."""
    path = _clean_path("volume directory", path)
    if ".." in path.split("/"):
        raise MountError(f"volume directory {path!r} contains '..'")
    return posixpath.normpath(path)


def check_volume_name(name: Any) -> str:
    if not isinstance(name, str) or not VOLUME_NAME_RE.fullmatch(name):
        raise MountError(f"volume name {name!r} is invalid — use 1-128 letters, digits, '_', '.' and '-', "
                         "starting with a letter or digit")
    return name


def check(mount: Any, protected: tuple[str, ...] = PROTECTED) -> dict:
    """One mount dict, checked and normalised."""
    if not isinstance(mount, dict) or set(mount) - {"type", "source", "target", "readonly"}:
        raise MountError("a mount is {type, source, target, readonly}")
    kind = mount.get("type")
    if kind not in KINDS:
        raise MountError(f"mount type {kind!r} must be volume or bind")
    readonly = mount.get("readonly", False)
    if not isinstance(readonly, bool):
        raise MountError("mount readonly must be true or false")
    source = (check_volume_name(mount.get("source")) if kind == VOLUME
              else check_bind_source(mount.get("source"), protected))
    return {"type": kind, "source": source, "target": check_target(mount.get("target")), "readonly": readonly}


def check_all(mounts: Any, protected: tuple[str, ...] = PROTECTED) -> list[dict]:
    """A container's mounts, checked: at most MAX_MOUNTS, each target once, a volume once."""
    if mounts is None:
        return []
    if not isinstance(mounts, list) or len(mounts) > MAX_MOUNTS:
        raise MountError(f"mounts must be a list of at most {MAX_MOUNTS}")
    checked = [check(mount, protected) for mount in mounts]
    targets = [m["target"] for m in checked]
    for target in targets:
        if targets.count(target) > 1:
            raise MountError(f"two mounts go to {target} — give each its own target")
    names = volume_names(checked)
    for name in names:
        if names.count(name) > 1:
            raise MountError(f"volume {name} is mounted twice — mount it once")
    return checked


def volume_names(mounts: list[dict]) -> list[str]:
    return [m["source"] for m in mounts if m.get("type") == VOLUME]


def parse(text: str, label: str = "") -> dict:
    """``-v`` syntax — ``NAME:/path[:ro|rw]`` or ``/host/path:/path[:ro|rw]`` — to a checked mount.
    *label* names it in messages (default: ``-v 'TEXT'``)."""
    label = label or f"-v {text!r}"
    parts = text.split(":")
    if len(parts) == 3 and parts[2] in OPTIONS:
        source, target, readonly = parts[0], parts[1], parts[2] == "ro"
    elif len(parts) == 2:
        source, target, readonly = parts[0], parts[1], False
    elif len(parts) == 3:
        raise MountError(f"{label}: unknown option {parts[2]!r} — use ro or rw")
    else:
        raise MountError(f"{label} is not NAME:/path[:ro] or /host/path:/path[:ro]")
    if not source:
        raise MountError(f"{label} has no source — name a volume (data:/path) or a host path (/srv:/path)")
    if source.startswith("/"):
        return check({"type": BIND, "source": source, "target": target, "readonly": readonly})
    if source.startswith(".") or "/" in source or "~" in source:
        raise MountError(f"{label}: bind mount source {source!r} is not an absolute path — write it from "
                         "the root, like /srv/data")
    return check({"type": VOLUME, "source": source, "target": target, "readonly": readonly})


def text(mount: dict) -> str:
    """The ``-v`` spelling of a mount."""
    return f"{mount['source']}:{mount['target']}{':ro' if mount.get('readonly') else ''}"
