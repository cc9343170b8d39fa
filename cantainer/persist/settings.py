"""Where the connection process lives and whether it is used: the environment, the private directory,
the socket's name (it carries a fingerprint of the code, so each version has its own process)."""
from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

from cantainer.errors import CantainerError

ENV = "CANTAINER_PERSIST"  # "no" (or 0/off/false): off; a number: seconds the process outlives its last client
DEFAULT_IDLE = 300.0
OFF = ("no", "0", "off", "false")
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
SOCKET_NAME_LENGTH = len("/conn-0123456789abcdef.sock")


class PersistError(CantainerError):
    """The connection process cannot be used (an unsafe directory, a process that will not start)."""


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in OFF


def idle_seconds() -> float:
    value = os.environ.get(ENV, "").strip().lower()
    if not value or value in ("yes", "on", "true"):
        return DEFAULT_IDLE
    try:
        seconds = float(value)
    except ValueError:
        raise PersistError(f"{ENV}={value!r} is neither a number of seconds nor \"no\"",
                           f"set {ENV}=300 (seconds the connection process stays without a client) or {ENV}=no"
                           ) from None
    if not 0 < seconds <= 86400:
        raise PersistError(f"{ENV}={value} is out of range", "give 1 to 86400 seconds, or no")
    return seconds


def disable() -> None:
    """`--no-persist`: this process (and what it starts) connects by itself."""
    os.environ[ENV] = "no"


def check_private(path: Path) -> None:
    """*path* must be a directory (not a link) of this user with no group or other permissions."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise PersistError(f"{path} does not exist") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise PersistError(f"{path} is not a private directory of this user (owner uid {info.st_uid}, mode "
                           f"{stat.S_IMODE(info.st_mode):o}): the connection process will not put its socket there",
                           f"remove it or make it yours with mode 700, or set {ENV}=no")


def _candidates() -> list[Path]:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    places = [Path(runtime) / "cantainer"] if runtime and Path(runtime).is_dir() else []
    return places + [cache / "cantainer" / "control", Path(f"/tmp/cantainer-{os.geteuid()}")]


def control_dir() -> Path:
    """The private directory for the socket: $XDG_RUNTIME_DIR/cantainer (a tmpfs that goes with the
    session), else ~/.cache/cantainer/control, else /tmp/cantainer-UID when those paths are too long
    for a unix socket. Created 0700; an existing one must already be private."""
    for place in _candidates():
        if len(os.fsencode(str(place))) + SOCKET_NAME_LENGTH > MAX_SOCKET_PATH:
            continue
        try:
            place.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            place.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError:
            continue
        check_private(place)
        return place
    raise PersistError("no directory for the connection process's socket", f"set {ENV}=no")


def code_fingerprint(root: Path | None = None) -> str:
    """Identity of the code a connection process runs: this Python environment and the workstation
    package's files (size and mtime), so a changed CLI starts a process of its own."""
    import cantainer

    digest = hashlib.sha256(f"{sys.prefix}\0{sys.version}".encode())  # python or python3 of one venv: the same
    root = root or Path(cantainer.__file__).parent
    for folder in sorted({root, *[p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()]}):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                info = entry.stat()
                digest.update(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def socket_path() -> Path:
    """The socket of the process for this code and this home: the process reads ~/.ssh/config and
    known_hosts from its own $HOME, so a command run with another HOME (a second SSH set-up, as a
    bastion's ProxyJump config) must not be served by one started under the first."""
    name = hashlib.sha256(f"{code_fingerprint()}\0{Path.home()}".encode()).hexdigest()[:16]
    return control_dir() / f"conn-{name}.sock"
