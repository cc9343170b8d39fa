"""The workstation's inventory: which hosts to drive over SSH, how, and the cluster settings.

The inventory is a TOML file (``inventory.example.toml`` at the repository root shows every key).
Validation is strict on purpose: a misspelt key is an error rather than an ignored line, because a typo
in, say, ``host_key_checking`` would otherwise silently fall back to a default the user never chose.

Every problem becomes one :class:`InventoryError` whose text is a single line naming the file, the line
(when it can be found), the key path and the problem, then how to fix it::

    inventory.toml:12: hosts[1].port: 70000 is not a valid port — use a number from 1 to 65535

Array indices in key paths count from 0, as in TOML tooling (``hosts[1]`` is the second ``[[hosts]]``).
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

from cantainer.errors import CantainerError
from cantainer.tomlcheck import describe, did_you_mean, quote
from cantainer_agent import layout

KeyPath = tuple[str | int, ...]

EXAMPLE_HINT = "see inventory.example.toml"


class InventoryError(CantainerError):
    """The inventory file is missing, unreadable, not valid TOML, or breaks the schema."""

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        # The CLI prints str(err) as the one line a user sees; values quoted into the message
        # (paths, TOML strings) must not be able to break it in two.
        super().__init__(_one_line(message), _one_line(hint))
        self.file = file
        self.line = line
        self.key = key


class UnknownHostError(CantainerError):
    """A command named a host that the inventory does not list."""


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    identity_file: Path | None
    known_hosts: Path | None
    host_key_checking: str
    become: bool
    python: str
    connect_timeout: float
    underlay_address: str | None
    labels: tuple[tuple[str, str], ...] = ()  # placement: --constraint label.KEY==VALUE


@dataclass(frozen=True)
class ImageSource:
    name: str
    sha256: str
    path: Path | None
    url: str | None


@dataclass(frozen=True)
class RegistrySettings:
    """``[registries."HOST:PORT"]``: how to reach one registry. The password stays in its file and
    is read only when a pull needs it."""

    host: str
    username: str | None = None
    password_file: Path | None = None
    insecure: bool = False  # plain HTTP, or HTTPS with a certificate nobody vouches for
    pull: str = "workstation"  # or "hosts": every host pulls for itself


@dataclass(frozen=True)
class Cluster:
    name: str
    raft_port: int
    join_port: int
    vxlan_port: int
    voters: int
    secret_file: Path
    reschedule_after: float | None = None  # None: the agent's default (layout.RESCHEDULE_AFTER)


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: Cluster
    hosts: tuple[Host, ...]
    images: dict[str, ImageSource]
    registries: dict[str, RegistrySettings] = field(default_factory=dict)

    def registry(self, host: str) -> RegistrySettings:
        """The settings for registry *host* ("host[:port]"); defaults if the inventory has none."""
        return self.registries.get(host) or RegistrySettings(host)

    def host(self, name: str) -> Host:
        """The host called ``name``; UnknownHostError (listing the known names) otherwise."""
        for host in self.hosts:
            if host.name == name:
                return host
        known = [host.name for host in self.hosts]
        raise UnknownHostError(
            f"unknown host {quote(name)}{did_you_mean(name, known)}: it is not in {self.path}",
            f"known hosts: {', '.join(known)}",
        )


# ------------------------------------------------------------------------------------------ loading


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate the inventory at ``path``; InventoryError on any problem."""
    named = Path(path)
    return parse_inventory(_read_text(named), named)


def parse_inventory(text: str, path: Path) -> Inventory:
    """Validate inventory ``text``; ``path`` names it in messages and anchors relative paths."""
    source = _Source(Path(path), text)
    document = _parse_document(source)
    _check_keys(source, (), document, _TOP_LEVEL_KEYS)
    ssh_defaults = _read_ssh_defaults(source, document.get("defaults", {}))
    return Inventory(
        path=source.path.expanduser().absolute(),
        cluster=_read_cluster(source, document.get("cluster", {})),
        hosts=_read_hosts(source, document.get("hosts"), ssh_defaults),
        images=_read_images(source, document.get("images", {})),
        registries=_read_registries(source, document.get("registries", {})),
    )


def _read_text(path: Path) -> str:
    file = path.expanduser()
    # Checked up front: opening a FIFO would block, and directories fail differently per platform.
    if file.is_dir():
        raise _error(path, None, (), "is a directory, not an inventory file",
                     "pass the TOML file itself, e.g. -i DIR/inventory.toml")
    if file.exists() and not file.is_file():
        raise _error(path, None, (), "is not a regular file", "pass a TOML file with -i PATH")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise _error(path, None, (), "no such inventory file",
                     f"pass the inventory with -i PATH or set CANTAINER_INVENTORY; {EXAMPLE_HINT}") from None
    except PermissionError:
        raise _error(path, None, (), "cannot be read: permission denied",
                     "make the file readable for your user, e.g. chmod u+r") from None
    except OSError as exc:
        raise _error(path, None, (), f"cannot be read: {exc.strerror or exc}",
                     "check the path given with -i") from None
    return _decode_utf8(path, data)


def _decode_utf8(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _error(path, line, (), f"not valid UTF-8 text (byte 0x{data[exc.start]:02x})",
                     "TOML files must be UTF-8; re-save the file as UTF-8") from None
    # Some editors prepend a byte-order mark, which TOML does not allow; it carries no meaning.
    return text.removeprefix("\ufeff")


_DECODE_POSITION = re.compile(
    r"(?P<reason>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)\s*"
)


def _parse_document(source: _Source) -> dict[str, Any]:
    if not source.text.strip():
        raise source.error((), "the file is empty",
                           f'add at least one [[hosts]] table with name and address; {EXAMPLE_HINT}')
    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(source, str(exc)) from exc


def _syntax_error(source: _Source, decode_message: str) -> InventoryError:
    """Turn tomllib's "reason (at line L, column C)" into our file:line form."""
    match = _DECODE_POSITION.fullmatch(decode_message)
    reason = match["reason"] if match else decode_message
    if match and match["line"]:
        line: int | None = int(match["line"])
        reason += f" (column {match['column']})"
    else:
        line = len(source.text.splitlines()) or None  # "end of document"
    defined_twice = any(word in reason for word in ("overwrite", "twice", "mutate"))
    hint = ("a key or table is defined twice; remove or rename the duplicate" if defined_twice else
            "fix the TOML syntax there: strings need double quotes, sections are [name], hosts are [[hosts]]")
    return _error(source.path, line, (), f"invalid TOML: {reason[:1].lower()}{reason[1:]}", hint)


# ------------------------------------------------------------------------------------------ errors


@dataclass(frozen=True)
class _Source:
    """The text being validated and the path that names it, so any check can report where it failed."""

    path: Path
    text: str

    @property
    def base_dir(self) -> Path:
        return self.path.expanduser().absolute().parent

    def error(self, key_path: KeyPath, problem: str, hint: str) -> InventoryError:
        return _error(self.path, _line_of(self.text, key_path), key_path, problem, hint)


def _error(path: Path, line: int | None, key_path: KeyPath, problem: str, hint: str) -> InventoryError:
    where = f"{path}:{line}" if line else str(path)
    key = format_key_path(key_path) if key_path else None
    message = f"{where}: {key}: {problem}" if key else f"{where}: {problem}"
    return InventoryError(message, hint, file=str(path), line=line, key=key)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key_path(key_path: Sequence[str | int]) -> str:
    """("hosts", 1, "port") -> "hosts[1].port"; keys that are not bare TOML keys get quoted."""
    text = ""
    for part in key_path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if _BARE_KEY.fullmatch(part) else quote(part)
        text += f".{name}" if text else name
    return text


# ------------------------------------------------------------------------------ locating key lines

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_KEY_PARTS = re.compile(_KEY_PART)
_KEY_ASSIGNMENT = re.compile(rf"({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_TABLE_HEADER = re.compile(r"\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?")
_ARRAY_HEADER = re.compile(r"\[\[\s*([^\[\]]+?)\s*\]\]\s*(?:#.*)?")


def find_key_line(text: str, key_path: Sequence[str | int]) -> int | None:
    """Best-effort 1-based line of ``key_path`` in TOML ``text``, or None.

    tomllib reports no positions for a valid document, so this re-reads the text the way a person
    would: follow the table headers ([cluster], the N-th [[hosts]], [images.x]) and match ``key =``
    lines under them. A path may also name a table itself, which yields its header line. Layouts it
    does not follow (inline tables, for one) yield None rather than a wrong line.
    """
    target = tuple(key_path)
    table: KeyPath = ()
    array_lengths: dict[KeyPath, int] = {}
    open_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if open_string:
            # Inside a multi-line string nothing is a key, whatever it looks like.
            if stripped.count(open_string) % 2:
                open_string = None
            continue
        if header := _ARRAY_HEADER.fullmatch(stripped):
            name = _split_dotted_key(header[1])
            array_lengths[name] = array_lengths.get(name, 0) + 1
            table = (*name, array_lengths[name] - 1)
            if table == target:
                return number
        elif header := _TABLE_HEADER.fullmatch(stripped):
            table = _split_dotted_key(header[1])
            if table == target:
                return number
        elif assignment := _KEY_ASSIGNMENT.match(stripped):
            if (*table, *_split_dotted_key(assignment[1])) == target:
                return number
            open_string = _opened_multiline_string(stripped[assignment.end():])
    return None


def _split_dotted_key(text: str) -> tuple[str, ...]:
    parts = _KEY_PARTS.findall(text)
    return tuple(part[1:-1] if part[0] in "\"'" else part for part in parts)


def _opened_multiline_string(value: str) -> str | None:
    for delimiter in ('"""', "'''"):
        if value.count(delimiter) % 2:
            return delimiter
    return None


def _line_of(text: str, key_path: KeyPath) -> int | None:
    # A missing key has no line of its own; its table's header is the next best place to point at.
    for length in range(len(key_path), 0, -1):
        line = find_key_line(text, key_path[:length])
        if line:
            return line
    return None


# -------------------------------------------------------------------------------- generic reading


@dataclass(frozen=True)
class _Field:
    """How to read one key: the TOML types it takes, an example for hints, and a check of the value."""

    types: tuple[type, ...]
    example: str
    check: Callable[[_Source, KeyPath, Any], Any]


_TYPE_NAMES = {(str,): "a string", (int,): "an integer", (bool,): "true or false", (int, float): "a number",
               (dict,): "a table"}


def _table(source: _Source, key_path: KeyPath, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise source.error(key_path, f"expected a table, got {describe(value)}",
                           f"write it as a [section] of key = value lines; {EXAMPLE_HINT}")
    return value


def _check_keys(source: _Source, key_path: KeyPath, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in table:
        if key not in allowed:
            raise source.error((*key_path, key), f"unknown key{did_you_mean(key, allowed)}",
                               f"allowed keys {_table_label(key_path)}: {', '.join(allowed)}")


def _table_label(key_path: KeyPath) -> str:
    if not key_path:
        return "at the top level"
    if key_path[0] == "hosts":
        return "in [[hosts]]"
    return f"in [{format_key_path(key_path)}]"


def _read_table(source: _Source, key_path: KeyPath, value: Any, fields: Mapping[str, _Field]) -> dict[str, Any]:
    """Validate a table's keys and values; returns only the keys present, converted."""
    table = _table(source, key_path, value)
    _check_keys(source, key_path, table, list(fields))
    return {key: _read_value(source, (*key_path, key), item, fields[key]) for key, item in table.items()}


def _read_value(source: _Source, key_path: KeyPath, value: Any, field: _Field) -> Any:
    # bool is a subclass of int in Python, but `port = true` is not a port.
    wrong_bool = isinstance(value, bool) and bool not in field.types
    if wrong_bool or not isinstance(value, field.types):
        raise source.error(key_path, f"expected {_TYPE_NAMES[field.types]}, got {describe(value)}",
                           f"write it like {key_path[-1]} = {field.example}")
    return field.check(source, key_path, value)


# --------------------------------------------------------------------------------- value checks


def _unchanged(source: _Source, key_path: KeyPath, value: Any) -> Any:
    return value


def _port(source: _Source, key_path: KeyPath, value: int) -> int:
    if not 1 <= value <= 65535:
        raise source.error(key_path, f"{value} is not a valid port", "use a number from 1 to 65535")
    return value


_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def _user_name(source: _Source, key_path: KeyPath, value: str) -> str:
    # Restricted to portable login names: the name ends up in sudo/ssh arguments on the host.
    if not _USER_NAME.fullmatch(value):
        raise source.error(key_path, f"{quote(value)} is not a valid user name",
                           'use a login name such as "root" or "deploy" (letters, digits, _ . -)')
    return value


def _local_path(source: _Source, key_path: KeyPath, value: str) -> Path:
    if not value:
        raise source.error(key_path, "the path is empty", "give a path, or leave the key out")
    # An absolute (or ~-expanded) path wins over the base directory when joined.
    return Path(os.path.normpath(source.base_dir / Path(value).expanduser()))


def _existing_file(source: _Source, key_path: KeyPath, value: str,
                   hint: str = "fix the path (relative paths start at the inventory's directory)") -> Path:
    path = _local_path(source, key_path, value)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise source.error(key_path, f"{path} {problem}", hint)
    return path


def _identity_file(source: _Source, key_path: KeyPath, value: str) -> Path:
    # Often the better fix than a new path: let ssh-agent and ~/.ssh/config pick the key.
    return _existing_file(source, key_path, value,
                          "fix the path, or leave identity_file out to use ssh-agent and ~/.ssh/config")


def _known_hosts(source: _Source, key_path: KeyPath, value: str) -> Path:
    path = _local_path(source, key_path, value)
    # It may not exist yet (accept-new creates it), but a directory can never work.
    if path.is_dir():
        raise source.error(key_path, f"{path} is a directory", "point it at a known_hosts file")
    return path


HOST_KEY_CHECKING_MODES = ("strict", "accept-new")


def _host_key_checking(source: _Source, key_path: KeyPath, value: str) -> str:
    if value not in HOST_KEY_CHECKING_MODES:
        raise source.error(key_path, f"{quote(value)} is not a host key checking mode",
                           'use "strict" (only known host keys) or "accept-new" (trust a new host\'s key once)')
    return value


_INTERPRETER = re.compile(r"/[A-Za-z0-9._+/-]*[A-Za-z0-9._+-]")


def _interpreter(source: _Source, key_path: KeyPath, value: str) -> str:
    # Plain path characters only: the path becomes part of the command run on the host over SSH.
    if not _INTERPRETER.fullmatch(value):
        raise source.error(key_path, f"{quote(value)} is not an absolute path to an interpreter",
                           'use an absolute path without spaces or shell characters, e.g. "/usr/bin/python3"')
    return value


def _timeout(source: _Source, key_path: KeyPath, value: int | float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise source.error(key_path, f"{value} is not a positive number of seconds",
                           "use a number of seconds greater than 0, e.g. 10")
    return float(value)


_HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _host_name(source: _Source, key_path: KeyPath, value: str) -> str:
    if not _HOST_NAME.fullmatch(value):
        raise source.error(key_path, f"{quote(value)} is not a valid host name",
                           "use lowercase letters, digits and '-', starting with a letter or digit (at most 63)")
    return value


# DNS labels, plus '_' because SSH config aliases (honoured by asyncssh) often use it. A leading '-'
# is excluded so an address can never be mistaken for an ssh option.
_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")
_IP_LOOKALIKE = re.compile(r"[0-9.]+|.*:.*")


def _ssh_address(source: _Source, key_path: KeyPath, value: str) -> str:
    if value.startswith("[") and value.endswith("]"):
        raise source.error(key_path, f"{quote(value)} is in brackets",
                           "write IPv6 addresses without brackets; the port goes in port =")
    ip = _ip_literal(value)
    if ip is not None:
        _check_unicast(source, key_path, ip)
    elif _IP_LOOKALIKE.fullmatch(value) or not _DNS_NAME.fullmatch(value):
        raise source.error(key_path, f"{quote(value)} is not a valid IP address or DNS name",
                           'use an IP address such as "10.20.0.11" or a host name such as "node1.example.com"')
    return value


def _underlay_address(source: _Source, key_path: KeyPath, value: str) -> str:
    ip = _ip_literal(value)
    if ip is None:
        raise source.error(key_path, f"{quote(value)} is not an IP address",
                           "use an IPv4 or IPv6 address, or leave underlay_address out to use address")
    _check_unicast(source, key_path, ip)
    return str(ip)


def _ip_literal(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _check_unicast(source: _Source, key_path: KeyPath, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if ip.is_unspecified or ip.is_multicast:
        raise source.error(key_path, f"{ip} cannot be a host's address", "use the host's own unicast address")


_CLUSTER_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


def _cluster_name(source: _Source, key_path: KeyPath, value: str) -> str:
    if not _CLUSTER_NAME.fullmatch(value):
        raise source.error(key_path, f"{quote(value)} is not a valid cluster name",
                           "use lowercase letters, digits and '-', starting with a letter (at most 32)")
    return value


def _voters(source: _Source, key_path: KeyPath, value: int) -> int:
    # An even count adds a member to every majority without tolerating one more failure.
    if value not in (1, 3, 5, 7):
        raise source.error(key_path, f"{value} is not a valid number of voters", "use 1, 3, 5 or 7")
    return value


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(source: _Source, key_path: KeyPath, value: str) -> str:
    if _SHA256.fullmatch(value):
        return value
    if _SHA256.fullmatch(value.lower()):
        raise source.error(key_path, "hex digits must be lowercase", "write the digest in lowercase")
    raise source.error(key_path, f"{quote(value)} is not a SHA-256 digest (64 hex digits)",
                       "compute it with: sha256sum FILE")


def _image_url(source: _Source, key_path: KeyPath, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise source.error(key_path, f"{quote(value)} is not an http(s) URL",
                           'use an http:// or https:// URL, or path = "..." for a local tarball')
    return value


# -------------------------------------------------------------------------------------- sections

_TOP_LEVEL_KEYS = ("defaults", "cluster", "images", "registries", "hosts")

_SSH_FIELDS = {
    "user": _Field((str,), '"root"', _user_name),
    "port": _Field((int,), "22", _port),
    "identity_file": _Field((str,), '"~/.ssh/id_ed25519"', _identity_file),
    "known_hosts": _Field((str,), '"~/.ssh/known_hosts"', _known_hosts),
    "host_key_checking": _Field((str,), '"strict"', _host_key_checking),
    "become": _Field((bool,), "true", _unchanged),
    "python": _Field((str,), '"/usr/bin/python3"', _interpreter),
    "connect_timeout": _Field((int, float), "10", _timeout),
}

_BUILTIN_SSH_DEFAULTS: dict[str, Any] = {
    "user": "root",
    "port": 22,
    "identity_file": None,
    "known_hosts": None,
    "host_key_checking": "strict",
    "become": False,
    "python": "/usr/bin/python3",
    "connect_timeout": 10.0,
}

def _labels(source: _Source, key_path: KeyPath, value: dict) -> tuple[tuple[str, str], ...]:
    from cantainer_agent.cluster.specs import LABEL_KEY_RE, LABEL_VALUE_RE

    for key, item in value.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise source.error((*key_path, key), f"{quote(key)} is not a valid label key",
                               "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit")
        if not isinstance(item, str) or not LABEL_VALUE_RE.fullmatch(item):
            raise source.error((*key_path, key), f"{describe(item)} is not a valid label value",
                               'use a string of 1-63 letters, digits, dots, underscores and hyphens, e.g. zone = "a"')
    if len(value) > 64:
        raise source.error(key_path, f"{len(value)} labels are too many", "give a host at most 64 labels")
    return tuple(sorted(value.items()))


def _reschedule_after(source: _Source, key_path: KeyPath, value: int | float) -> float:
    if not (math.isfinite(value) and 1 <= value <= 86400):
        raise source.error(key_path, f"{value} is not a number of seconds from 1 to 86400",
                           "use the seconds a host may be down before its service tasks move, e.g. 30")
    return float(value)


_HOST_FIELDS = {
    "name": _Field((str,), '"h1"', _host_name),
    "address": _Field((str,), '"10.20.0.11"', _ssh_address),
    "underlay_address": _Field((str,), '"10.20.0.11"', _underlay_address),
    **_SSH_FIELDS,
    "labels": _Field((dict,), '{ zone = "a" }', _labels),
}

_CLUSTER_FIELDS = {
    "name": _Field((str,), '"default"', _cluster_name),
    "raft_port": _Field((int,), str(layout.RAFT_PORT), _port),
    "join_port": _Field((int,), str(layout.JOIN_PORT), _port),
    "vxlan_port": _Field((int,), str(layout.VXLAN_PORT), _port),
    "voters": _Field((int,), "3", _voters),
    "secret_file": _Field((str,), '"~/.config/cantainer/default.secret"', _local_path),
    "reschedule_after": _Field((int, float), "30", _reschedule_after),
}

_CLUSTER_DEFAULTS: dict[str, Any] = {
    "name": "default",
    "raft_port": layout.RAFT_PORT,
    "join_port": layout.JOIN_PORT,
    "vxlan_port": layout.VXLAN_PORT,
    "voters": layout.VOTERS,
}

_IMAGE_FIELDS = {
    "path": _Field((str,), '"alpine.tar.gz"', _existing_file),
    "url": _Field((str,), '"https://example.org/rootfs.tar.gz"', _image_url),
    "sha256": _Field((str,), '"<64 lowercase hex digits>"', _sha256),
}

IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _pull_mode(source: _Source, key_path: KeyPath, value: str) -> str:
    if value not in ("workstation", "hosts"):
        raise source.error(key_path, f"{quote(value)} is not a pull mode",
                           'use "workstation" (pull here, push layers over SSH) or "hosts" (each host pulls)')
    return value


_REGISTRY_FIELDS = {
    "username": _Field((str,), '"deploy"', _unchanged),
    "password_file": _Field((str,), '"~/.config/cantainer/registry.password"', _existing_file),
    "insecure": _Field((bool,), "true", _unchanged),
    "pull": _Field((str,), '"hosts"', _pull_mode),
}


def _read_ssh_defaults(source: _Source, value: Any) -> dict[str, Any]:
    return {**_BUILTIN_SSH_DEFAULTS, **_read_table(source, ("defaults",), value, _SSH_FIELDS)}


def _read_cluster(source: _Source, value: Any) -> Cluster:
    given = _read_table(source, ("cluster",), value, _CLUSTER_FIELDS)
    settings = {**_CLUSTER_DEFAULTS, **given}
    if settings["join_port"] == settings["raft_port"]:
        # Point at whichever of the two the user actually wrote.
        clashing = "join_port" if "join_port" in given else "raft_port"
        raise source.error(
            ("cluster", clashing),
            f"raft_port and join_port are both {settings['raft_port']}",
            f"use two different ports, e.g. raft_port = {layout.RAFT_PORT} and join_port = {layout.JOIN_PORT}",
        )
    if "secret_file" not in settings:
        # Only named here; whoever needs the secret creates the file (0600), not the validator.
        settings["secret_file"] = Path(f"~/.config/cantainer/{settings['name']}.secret").expanduser()
    return Cluster(**settings)


def _read_images(source: _Source, value: Any) -> dict[str, ImageSource]:
    table = _table(source, ("images",), value)
    return {name: _read_image(source, name, entry) for name, entry in table.items()}


def _read_image(source: _Source, name: str, entry: Any) -> ImageSource:
    key_path: KeyPath = ("images", name)
    if not IMAGE_NAME.fullmatch(name):
        raise source.error(key_path, f"{quote(name)} is not a valid image name",
                           "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit")
    given = _read_table(source, key_path, entry, _IMAGE_FIELDS)
    if "path" in given and "url" in given:
        raise source.error((*key_path, "url"), "an image takes path or url, not both",
                           "keep path for a local tarball or url to download it, and remove the other")
    if "path" not in given and "url" not in given:
        raise source.error(key_path, "the image has neither path nor url",
                           'add path = "local.tar.gz" or url = "https://..."')
    if "sha256" not in given:
        raise source.error((*key_path, "sha256"), "missing; every image is pinned by its digest",
                           "add sha256 = \"...\"; compute it with: sha256sum FILE")
    return ImageSource(name=name, sha256=given["sha256"], path=given.get("path"), url=given.get("url"))


def _read_registries(source: _Source, value: Any) -> dict[str, RegistrySettings]:
    from cantainer_agent.images.reference import HOST_RE

    out = {}
    for host, entry in _table(source, ("registries",), value).items():
        key_path: KeyPath = ("registries", host)
        if not HOST_RE.fullmatch(host) or ("." not in host and ":" not in host and host != "localhost"):
            raise source.error(key_path, f"{quote(host)} is not a registry host",
                               'name it as image references do: [registries."registry.example.org:5000"]')
        given = _read_table(source, key_path, entry, _REGISTRY_FIELDS)
        if ("username" in given) != ("password_file" in given):
            missing = "password_file" if "username" in given else "username"
            raise source.error((*key_path, missing), "missing; credentials need a username and a password_file",
                               f"add {missing} = {_REGISTRY_FIELDS[missing].example}")
        out[host] = RegistrySettings(host, **given)
    return out


def _read_hosts(source: _Source, value: Any, ssh_defaults: Mapping[str, Any]) -> tuple[Host, ...]:
    if not value:
        raise source.error(("hosts",), "no hosts defined",
                           f'add a [[hosts]] table with name = "h1" and address = "..." per host; {EXAMPLE_HINT}')
    if not isinstance(value, list):
        raise source.error(("hosts",), f"expected [[hosts]] tables, got {describe(value)}",
                           "write each host as its own [[hosts]] table (double brackets)")
    hosts = tuple(_read_host(source, ("hosts", index), entry, ssh_defaults) for index, entry in enumerate(value))
    _check_hosts_distinct(source, hosts)
    return hosts


def _read_host(source: _Source, key_path: KeyPath, entry: Any, ssh_defaults: Mapping[str, Any]) -> Host:
    given = _read_table(source, key_path, entry, _HOST_FIELDS)
    for required in ("name", "address"):
        if required not in given:
            raise source.error((*key_path, required), "missing; every host needs a name and an address",
                               f"add {required} = {_HOST_FIELDS[required].example}")
    address_ip = _ip_literal(given["address"])
    return Host(
        name=given["name"],
        address=given["address"],
        # A DNS name stays unresolved here: resolving is the connecting side's job, at connect time.
        underlay_address=given.get("underlay_address", str(address_ip) if address_ip else None),
        labels=given.get("labels", ()),
        **{key: given.get(key, default) for key, default in ssh_defaults.items()},
    )


def _check_hosts_distinct(source: _Source, hosts: Sequence[Host]) -> None:
    names: dict[str, int] = {}
    endpoints: dict[tuple[str, int], int] = {}
    underlays: dict[str, int] = {}
    for index, host in enumerate(hosts):
        if (first := names.setdefault(host.name, index)) != index:
            raise source.error(("hosts", index, "name"), f"{quote(host.name)} is already the name of hosts[{first}]",
                               "give every host a unique name")
        endpoint = (_comparable_address(host.address), host.port)
        if (first := endpoints.setdefault(endpoint, index)) != index:
            raise source.error(("hosts", index, "address"),
                               f"{host.address} port {host.port} is already used by {_host_label(hosts, first)}",
                               "list every host once, each with its own address and port")
        if host.underlay_address and (first := underlays.setdefault(host.underlay_address, index)) != index:
            raise source.error(("hosts", index, "underlay_address"),
                               f"{host.underlay_address} is already used by {_host_label(hosts, first)}",
                               "raft and VXLAN need a distinct address per host: set underlay_address")


def _host_label(hosts: Sequence[Host], index: int) -> str:
    return f"hosts[{index}] ({hosts[index].name})"


def _comparable_address(address: str) -> str:
    ip = _ip_literal(address)
    return str(ip) if ip else address.lower().rstrip(".")
