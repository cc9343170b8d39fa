"""Agent configuration: a JSON file written by the workstation (mode 0600) -> frozen dataclass.

Keys (unknown keys are rejected so typos surface; defaults come from ``layout.py``)::

    cluster             str   required  cluster name
    node                str   required  this host's node name
    address             str   required  underlay IPv4 address the raft and join ports bind to
    secret_file         str   required  absolute path of the cluster secret (must exist, 0600 or stricter)
    raft_port           int   7480
    join_port           int   7481
    seeds               [str] []        "host:join_port" of other nodes (our own join address is ignored)
    bootstrap           bool  false     true only on the nodes that create the cluster
    initial_voters      [str] []        with bootstrap: "ip:raft_port" of every founding voter (this node's
                                        included), started together like etcd's initial-cluster; empty:
                                        this node founds a one-voter cluster
    data_dir            str   /var/lib/cantainer
    run_dir             str   /run/cantainer
    log_dir             str   /var/log/cantainer
    voters              int   3         odd, 1..7: at most this many raft voters, the others are standbys
    bundle              str   ""        content hash of the pushed agent bundle (reported in status)
    heartbeat_interval  float 2.0       seconds between heartbeats (0.1..60)
    vxlan_port          int   4789      UDP port of the overlay's VXLAN devices
    labels              {str: str} {}   this host's labels (placement constraints label.KEY==VALUE)
    reschedule_after    float 30.0      seconds a host is down before its service tasks move (1..86400)

Every error raised is a :class:`ConfigError` whose message names the file and the key. Once a node
has raft state the agent drops the founding keys from its file (``forget_founding``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import stat
from dataclasses import dataclass, replace
from typing import Any

from . import layout
from .cluster.specs import check_labels
from .errors import AgentError, StateError
from .fsutil import atomic_write
from .netaddr import split_hostport

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MIN_SECRET_BYTES = 16

DEFAULTS: dict[str, Any] = {
    "raft_port": layout.RAFT_PORT,
    "join_port": layout.JOIN_PORT,
    "seeds": [],
    "bootstrap": False,
    "initial_voters": [],
    "data_dir": layout.DATA_DIR,
    "run_dir": layout.RUN_DIR,
    "log_dir": layout.LOG_DIR,
    "voters": layout.VOTERS,
    "bundle": "",
    "heartbeat_interval": layout.HEARTBEAT_INTERVAL,
    "vxlan_port": layout.VXLAN_PORT,
    "labels": {},
    "reschedule_after": layout.RESCHEDULE_AFTER,
}
REQUIRED = ("cluster", "node", "address", "secret_file")
KNOWN_KEYS = frozenset(REQUIRED) | frozenset(DEFAULTS)
# Read only while a node has no raft state (it founds the cluster with these voters); once it has
# state they change nothing, so `up` neither restarts an agent for them nor tells two configs apart by them.
FOUNDING_KEYS = ("bootstrap", "initial_voters")


def identity(data: dict) -> str:
    """The sha256 of a config as an agent runs with it, founding keys aside: defaults filled in, so
    a key left out and the same key at its default are one config. `up` compares an agent's (from
    `hello`) with the config it planned, to tell an agent it would have started from someone else's."""
    kept = {key: value for key, value in {**DEFAULTS, **data}.items() if key not in FOUNDING_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


class ConfigError(AgentError, ValueError):
    """Invalid or unusable agent configuration (one clear line)."""


@dataclass(frozen=True)
class AgentConfig:
    cluster: str
    node: str
    address: str
    secret_file: str
    raft_port: int = layout.RAFT_PORT
    join_port: int = layout.JOIN_PORT
    seeds: tuple[str, ...] = ()
    bootstrap: bool = False
    initial_voters: tuple[str, ...] = ()
    data_dir: str = layout.DATA_DIR
    run_dir: str = layout.RUN_DIR
    log_dir: str = layout.LOG_DIR
    voters: int = layout.VOTERS
    bundle: str = ""
    heartbeat_interval: float = layout.HEARTBEAT_INTERVAL
    vxlan_port: int = layout.VXLAN_PORT
    labels: tuple[tuple[str, str], ...] = ()
    reschedule_after: float = layout.RESCHEDULE_AFTER
    identity: str = ""  # of the config it was parsed from (``identity``)
    path: str = ""  # the file it was read from ("" when parsed from data)

    @property
    def raft_addr(self) -> str:
        return f"{self.address}:{self.raft_port}"

    @property
    def join_addr(self) -> str:
        return f"{self.address}:{self.join_port}"

    @property
    def socket_path(self) -> str:
        return os.path.join(self.run_dir, layout.SOCKET_NAME)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, layout.PID_NAME)

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_dir, layout.LOG_NAME)


def _port(where: str, key: str, value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: {key!r} must be an integer port 1..65535, got {value!r}")
    return value


def _abs_path(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(f"{where}: {key!r} must be an absolute path, got {value!r}")
    return os.path.normpath(value)


def _initial_voters(where: str, value: Any, bootstrap: bool, own: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'initial_voters' must be a list of \"ip:raft_port\" strings")
    voters: list[str] = []
    for i, addr in enumerate(value):
        try:
            split_hostport(addr)
        except ValueError as exc:
            raise ConfigError(f"{where}: initial_voters[{i}]: {exc}") from None
        if addr not in voters:
            voters.append(addr)
    if voters and not bootstrap:
        raise ConfigError(f"{where}: 'initial_voters' is set but 'bootstrap' is false: only founding nodes use it")
    if voters and own not in voters:
        raise ConfigError(f"{where}: 'initial_voters' does not list this node's raft address {own}")
    if len(voters) > 7:
        raise ConfigError(f"{where}: 'initial_voters' lists {len(voters)} nodes; at most 7 vote")
    return tuple(voters)


def parse_config(data: Any, where: str = "config", check_files: bool = True) -> AgentConfig:
    """Validate a decoded JSON object. With *check_files*, the secret file is checked too."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a JSON object")
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")
    merged = {**DEFAULTS, **data}

    for key in ("cluster", "node"):
        value = merged[key]
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise ConfigError(
                f"{where}: {key!r} must be 1-63 characters of letters, digits, '.', '_' or '-' "
                f"starting with a letter or digit, got {value!r}"
            )
    address = merged["address"]
    try:
        ip = ipaddress.IPv4Address(address) if isinstance(address, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise ConfigError(f"{where}: 'address' must be an IPv4 address (the underlay IP), got {address!r}")
    if ip.is_unspecified or ip.is_multicast:
        raise ConfigError(f"{where}: 'address' must be a concrete host address, got {address!r}")

    raft_port = _port(where, "raft_port", merged["raft_port"])
    join_port = _port(where, "join_port", merged["join_port"])
    if raft_port == join_port:
        raise ConfigError(f"{where}: 'raft_port' and 'join_port' must differ (both {raft_port})")

    seeds_in = merged["seeds"]
    if not isinstance(seeds_in, list):
        raise ConfigError(f"{where}: 'seeds' must be a list of \"host:join_port\" strings")
    seeds: list[str] = []
    own = f"{address}:{join_port}"
    for i, seed in enumerate(seeds_in):
        try:
            split_hostport(seed)
        except ValueError as exc:
            raise ConfigError(f"{where}: seeds[{i}]: {exc}") from None
        if seed != own and seed not in seeds:
            seeds.append(seed)

    bootstrap = merged["bootstrap"]
    if type(bootstrap) is not bool:
        raise ConfigError(f"{where}: 'bootstrap' must be true or false, got {bootstrap!r}")
    initial_voters = _initial_voters(where, merged["initial_voters"], bootstrap, f"{address}:{raft_port}")

    voters = merged["voters"]
    if type(voters) is not int or not 1 <= voters <= 7 or voters % 2 == 0:
        raise ConfigError(f"{where}: 'voters' must be an odd integer 1..7, got {voters!r}")
    bundle = merged["bundle"]
    if not isinstance(bundle, str) or len(bundle) > 128 or not re.match(r"^[A-Za-z0-9:._-]*$", bundle):
        raise ConfigError(f"{where}: 'bundle' must be a hash string, got {bundle!r}")
    hb = merged["heartbeat_interval"]
    if type(hb) not in (int, float) or not 0.1 <= hb <= 60:
        raise ConfigError(f"{where}: 'heartbeat_interval' must be a number of seconds 0.1..60, got {hb!r}")

    labels = merged["labels"]
    try:
        labels = check_labels(labels)
    except StateError as exc:
        raise ConfigError(f"{where}: 'labels': {exc}") from None
    reschedule = merged["reschedule_after"]
    if type(reschedule) not in (int, float) or not 1 <= reschedule <= 86400:
        raise ConfigError(f"{where}: 'reschedule_after' must be a number of seconds 1..86400, got {reschedule!r}")

    cfg = AgentConfig(
        cluster=merged["cluster"],
        node=merged["node"],
        address=address,
        secret_file=_abs_path(where, "secret_file", merged["secret_file"]),
        raft_port=raft_port,
        join_port=join_port,
        seeds=tuple(seeds),
        bootstrap=bootstrap,
        initial_voters=initial_voters,
        data_dir=_abs_path(where, "data_dir", merged["data_dir"]),
        run_dir=_abs_path(where, "run_dir", merged["run_dir"]),
        log_dir=_abs_path(where, "log_dir", merged["log_dir"]),
        voters=voters,
        bundle=bundle,
        heartbeat_interval=float(hb),
        vxlan_port=_port(where, "vxlan_port", merged["vxlan_port"]),
        labels=tuple(labels.items()),
        reschedule_after=float(reschedule),
        identity=identity(data),
    )
    if check_files:
        check_secret_file(cfg.secret_file)
    return cfg


def load_config(path: str, check_files: bool = True) -> AgentConfig:
    """Read and validate the config file at *path*."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1024 * 1024 + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if len(raw) > 1024 * 1024:
        raise ConfigError(f"{path}: config file is larger than 1 MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return replace(parse_config(data, where=path, check_files=check_files), path=path)


def forget_founding(path: str) -> bool:
    """Drop the founding keys from the config file at *path*; the agent calls it once the node has raft
    state (they are read only by a node without any, and a node whose state is later lost must not
    found a cluster again). The file is then what `up` plans for a member — ``bootstrap`` false, no
    ``initial_voters`` — so `up` run again writes nothing. Returns whether the file changed."""
    with open(path, "rb") as f:
        data = json.loads(f.read())
    if not isinstance(data, dict) or not (data.get("bootstrap") or "initial_voters" in data):
        return False
    kept = {key: value for key, value in data.items() if key != "initial_voters"}
    atomic_write(path, (json.dumps({**kept, "bootstrap": False}, indent=1) + "\n").encode(), 0o600)
    return True


def check_secret_file(path: str) -> None:
    """The secret must exist, be a regular file and have no group/other permission bits."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(
            f"secret file {path} does not exist: the agent refuses to start without a cluster secret"
        ) from None
    except OSError as exc:
        raise ConfigError(f"secret file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"secret file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be accessible by group "
            f"or others (chmod 600 {path})"
        )


def read_secret(path: str) -> bytes:
    """Return the cluster secret (surrounding whitespace stripped). Never logged."""
    check_secret_file(path)
    try:
        with open(path, "rb") as f:
            secret = f.read(4097).strip()
    except OSError as exc:
        raise ConfigError(f"secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"secret file {path} holds fewer than {MIN_SECRET_BYTES} bytes: refusing a weak cluster secret"
        )
    if len(secret) > 4096:
        raise ConfigError(f"secret file {path} is larger than 4096 bytes")
    return secret
