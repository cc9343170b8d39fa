"""The replicated cluster state machine, as pure logic (docs/design/raft.md, "The state machine").

No sockets, threads or clocks: every input, timestamps included, comes in the command, so the same
commands in the same order give the same state on every node; anything that must be exact (a name,
an address, a VNI) is decided here. Commands: ``apply_command(name, args)`` → ``apply_<name>``; a
refused command raises ``StateError`` and changes nothing. The state pickles to plain dicts::

    nodes:      {name: {address, raft_addr, join_addr, version, bundle, heartbeat, joined_at, overlay?,
                        labels, capacity: {memory, cpus}, layers: [diff_id]}}
    networks:   {cidr: {cidr, name, vni, gateway (None: made before gateways), internal, created_at,
                        ips: {ip: container name}}}
    containers: {name: {name, id, host, network (its CIDR), ip, mac, image, image_digest, command, env, workdir,
                        user, stop_signal, ports (the image's exposed), limits, mounts? (cluster/volumes.py),
                        created_at, desired: running|stopped, auto_remove (absent: false),
                        restart?, health?, publish?, placed? (+ layers, constraints, tty, interactive),
                        service?, service_id?, slot?, version?, update_seq?, superseded_at?, retire?,
                        observed: {state, exit_code, pid, started_at, finished_at, reason, reported_at,
                                   health?, restart_count?, restarts?}}}
    services:   {name: cluster/services.py}
    volumes:    {name: {name, host, created_at, labels}}                      (cluster/volumes.py)
    stacks:     {name: {name, objects: {KIND:NAME: {kind, name, spec, owned}}, updated_at}}  (cluster/stacks.py)

Optional keys are absent when unused, so older snapshots read the same. Placement (``place_container``,
``place_task``) runs the scheduler inside the command (cluster/scheduler.py).

Beside the state, each replica keeps a *change feed* (not replicated, not pickled): which record
of which section every applied command touched, so a reader can copy only what changed since its
last look (controllers/view.py). A command the feed cannot describe marks a gap: readers behind it
read everything again.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import ipaddress
import itertools
import pickle
import re
from typing import Any, Callable

from .. import mounts as M
from ..errors import AlreadyExists, Conflict, NotFound, StateError
from ..overlay.model import mac_for_ip  # one derivation, shared with the overlay
from . import ipam, ports, specs
from . import sessions as S
from .scheduler import NoHostFits, Request, place
from .services import ServiceCommands
from .stacks import StackCommands
from .volumes import VolumeCommands, check_mounts, volume_host

# 2: networks have a name, a gateway and ``internal``; containers ``publish``. Older snapshots and
# log entries still load and apply exactly as they did (``_upgrade``; commands' new arguments default
# to the old behaviour).
SCHEMA_VERSION = 2
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CONTAINER_NAME_RE = specs.CONTAINER_NAME_RE
CONTAINER_STATES = ("created", "running", "exited", "dead", "unknown")
HEALTH_STATES = ("starting", "healthy", "unhealthy")
MAX_LAYERS = 4096  # layers a node reports
MAX_RESTARTS_KEPT = 10
# what to_bytes copies; the feed names records by them
SECTIONS = ("nodes", "networks", "containers", "services", "volumes", "stacks")
FEED_MAX = 8192  # changes the feed remembers; a reader further behind reads everything again
_EPOCHS = itertools.count(1)  # tells replicas (feeds) of one process apart


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise StateError(f"invalid node name {name!r}")
    return name


def _check_str(key: str, value: Any, max_len: int = 256) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise StateError(f"{key} must be a string of at most {max_len} characters")
    return value


def _check_ts(key: str, value: Any) -> float:
    if type(value) not in (int, float) or value != value or value < 0:  # value != value: NaN
        raise StateError(f"{key} must be a non-negative number")
    return float(value)


@functools.lru_cache(maxsize=None)
def _signature(command: str) -> inspect.Signature:
    # Cached: building it took a tenth of an idle standby's CPU on the 30-host lab (one per commit).
    return inspect.signature(getattr(ClusterState, f"apply_{command}"))


class ClusterState(ServiceCommands, VolumeCommands, StackCommands):
    """The whole replicated state. Mutate only through the ``apply_*`` methods."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.networks: dict[str, dict] = {}
        self.containers: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.volumes: dict[str, dict] = {}
        self.stacks: dict[str, dict] = {}
        self.sessions = S.Sessions()  # exactly-once writes: outcomes of the clients' recent requests
        # Counts commands that may change what a host must program (everything but heartbeats),
        # so reconcilers wake on real changes only.
        self.revision = 0
        self._start_feed()

    def _start_feed(self) -> None:
        self.feed_epoch = next(_EPOCHS)
        self.feed_seq = 0  # commands applied by this replica (heartbeats included)
        self._feed: collections.deque[tuple[int, str, str]] = collections.deque()
        self._feed_floor = 0  # changes up to this sequence number are not (all) in the feed

    # pickling: plain dicts plus a schema number, so a snapshot stays readable
    def __getstate__(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "nodes": self.nodes,
            "networks": self.networks,
            "containers": self.containers,
            "services": self.services,
            "volumes": self.volumes,
            "stacks": self.stacks,
            "sessions": self.sessions.clients,
            "revision": self.revision,
        }

    def __setstate__(self, data: dict) -> None:
        self.nodes = dict(data.get("nodes", {}))
        self.networks = {cidr: _upgrade_network(record) for cidr, record in data.get("networks", {}).items()}
        self.containers = dict(data.get("containers", {}))
        self.services = dict(data.get("services", {}))
        self.volumes = dict(data.get("volumes", {}))  # absent in snapshots from before volumes
        self.stacks = dict(data.get("stacks", {}))  # ... and stacks
        self.sessions = S.Sessions(data.get("sessions"))
        self.revision = int(data.get("revision", 0))
        self._start_feed()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterState) and self.__getstate__() == other.__getstate__()

    # ---------------------------------------------------------------- commands

    def apply_register_node(
        self,
        name: str,
        address: str,
        raft_addr: str,
        join_addr: str,
        version: str,
        bundle: str,
        ts: float,
        labels: dict | None = None,
        capacity: dict | None = None,
        layers: list | None = None,
    ) -> dict:
        """Add or refresh a node. Re-registering keeps ``joined_at``; returns the record copy.
        *labels* (the inventory's), *capacity* ({memory: bytes, cpus}) and *layers* (image layers it
        holds) feed placement (cluster/scheduler.py).

        Rejected when another node already owns *raft_addr*, or when *name* is registered with a
        different raft address (one raft member per name; remove the old node first).
        """
        _check_name(name)
        for key, value in (("address", address), ("raft_addr", raft_addr), ("join_addr", join_addr)):
            _check_str(key, value, 128)
        _check_str("version", version, 64)
        _check_str("bundle", bundle, 128)
        ts = _check_ts("ts", ts)
        labels = specs.check_labels(labels)
        capacity = _check_capacity(capacity)
        layers = _check_layers(layers)
        for other, rec in self.nodes.items():
            if other != name and rec["raft_addr"] == raft_addr:
                raise Conflict(f"raft address {raft_addr} already belongs to node {other!r}")
        old = self.nodes.get(name)
        if old is not None and old["raft_addr"] != raft_addr:
            raise Conflict(
                f"node name {name!r} is already registered with raft address {old['raft_addr']}; "
                "remove that node before reusing its name"
            )
        self.nodes[name] = {
            "address": address,
            "raft_addr": raft_addr,
            "join_addr": join_addr,
            "version": version,
            "bundle": bundle,
            "heartbeat": ts,
            "joined_at": old["joined_at"] if old else ts,
            "labels": labels,
            "capacity": capacity,
            "layers": layers if layers is not None else (old or {}).get("layers", []),
        }
        return copy.deepcopy(self.nodes[name])

    def apply_node_layers(self, name: str, layers: list) -> bool:
        """The image layers a node now holds (after an import or a prune); False for an unknown node."""
        _check_name(name)
        layers = _check_layers(layers)
        rec = self.nodes.get(name)
        if rec is None:
            return False
        rec["layers"] = layers
        return True

    def apply_heartbeat(self, name: str, ts: float, overlay: dict | None = None) -> bool:
        """Record a heartbeat (and the node's overlay health summary); False for an unknown node."""
        _check_name(name)
        ts = _check_ts("ts", ts)
        rec = self.nodes.get(name)
        if rec is None:
            return False
        rec["heartbeat"] = ts
        if overlay is not None:
            rec["overlay"] = _check_overlay_summary(overlay)
        return True

    def apply_remove_node(self, name: str) -> bool:
        """Forget a node; returns False if it was not registered."""
        _check_name(name)
        return self.nodes.pop(name, None) is not None

    # Commands reachable through the one replicated entry point (raft.StateStore.apply).
    COMMANDS = (
        "register_node",
        "heartbeat",
        "remove_node",
        "create_network",
        "delete_network",
        "create_container",
        "place_container",
        "container_observed",
        "set_container_desired",
        "remove_container",
        "node_layers",
        *ServiceCommands.SERVICE_COMMANDS,
        *VolumeCommands.VOLUME_COMMANDS,
        *StackCommands.STACK_COMMANDS,
    )

    def apply_command(self, command: str, args: dict, session: dict | None = None) -> Any:
        """Apply one command; with a *session*, at most once (a duplicate gets the first outcome)."""
        if session is None:
            return self._apply(command, args)
        client, seq, ts = S.check_session(session)
        done = self.sessions.outcome(client, seq)
        if done is not None:
            return S.replay(done)
        try:
            result = self._apply(command, args)
        except StateError as error:
            self.sessions.record(client, seq, ts, S.refusal(error))
            raise
        self.sessions.record(client, seq, ts, S.success(result))
        return result

    def _apply(self, command: str, args: dict) -> Any:
        if command not in self.COMMANDS or not isinstance(args, dict):
            raise StateError(f"unknown state command {command!r}")
        method = getattr(self, f"apply_{command}")
        try:
            _signature(command).bind(self, **args)
        except TypeError as error:
            raise StateError(f"bad arguments for {command}: {error}") from None
        result = method(**args)
        if command != "heartbeat":
            self.revision += 1
        self._record(command, args, result)
        return result

    # ------------------------------------------------------------ change feed

    def _record(self, command: str, args: dict, result: Any) -> None:
        self.feed_seq += 1
        touched = _TOUCHES.get(command)
        keys = touched(args, result) if touched is not None else None
        if keys is None:  # a command the feed cannot describe: whoever is behind reads everything
            self._feed_floor = self.feed_seq
            self._feed.clear()
            return
        for section, key in keys:
            self._feed.append((self.feed_seq, section, key))
        while len(self._feed) > FEED_MAX:
            self._feed_floor = self._feed.popleft()[0]

    def changes_since(self, seq: int) -> set[tuple[str, str]] | None:
        """The ``(section, key)`` of every record changed after feed sequence number *seq*, or
        None when the feed no longer covers that far back (read everything again)."""
        if seq < self._feed_floor or seq > self.feed_seq:
            return None
        changed = set()
        for entry_seq, section, key in reversed(self._feed):
            if entry_seq <= seq:
                break
            changed.add((section, key))
        return changed

    # ------------------------------------------------------------ networks

    def apply_create_network(self, cidr: str, ts: float, name: str | None = None, internal: bool = False,
                             gateway: bool = False) -> dict:
        """Create a network (idempotent for the same CIDR and options); returns its view and ``created``:
        whether this command made it (False: it existed).

        *gateway*: reserve the first host address as the network's gateway (every caller since
        named networks passes True; log entries from before lack it and make a network without one,
        as they did). *name* defaults to ``net-A-B-C-D-P``; *internal* networks have no egress."""
        network = ipam.parse_cidr(cidr)
        key = str(network)
        if type(internal) is not bool or type(gateway) is not bool:
            raise StateError("internal and gateway must be true or false")
        if name is not None:
            check_network_name(name, key)
        existing = self.networks.get(key)
        if existing is not None:
            if name is not None and name != existing["name"]:
                raise AlreadyExists(f"network {key} already exists, named {existing['name']!r} — use that name "
                                    "or another CIDR")
            if internal != existing["internal"]:
                raise Conflict(f"network {key} already exists and is {'' if existing['internal'] else 'not '}"
                               "internal — remove it first to change that")
            return {**_network_view(existing), "created": False}
        name = name if name is not None else default_network_name(key)
        if self._network_named(name) is not None:
            raise AlreadyExists(f"network name {name!r} is already used by {self._network_named(name)} — "
                                "pick another name")
        if internal and not gateway:
            raise StateError("an internal network needs a gateway (its DNS server)")
        ipam.check_unicast(network)
        ipam.check_no_overlap(network, list(self.networks))
        vni = ipam.lowest_free_vni({n["vni"] for n in self.networks.values()})
        self.networks[key] = {"cidr": key, "name": name, "vni": vni,
                              "gateway": ipam.gateway_address(network) if gateway else None,
                              "internal": internal, "created_at": _check_ts("ts", ts), "ips": {}}
        return {**_network_view(self.networks[key]), "created": True}

    def _network_named(self, name: str) -> str | None:
        for key, record in self.networks.items():
            if record["name"] == name:
                return key
        return None

    def network_key(self, ref: Any) -> str:
        """The CIDR of the network *ref* names (a name or a CIDR); NotFound if there is none."""
        if is_network_name(ref):
            key = self._network_named(ref)
            if key is None:
                check_network_name(ref)
                raise NotFound(f"no network named {ref!r} — see `cantainer network ls`, or create it with "
                               f"`cantainer network create CIDR --name {ref}`")
            return key
        key = str(ipam.parse_cidr(ref))
        if key not in self.networks:
            raise NotFound(f"network {key} does not exist — see `cantainer network ls`")
        return key

    def apply_delete_network(self, cidr: str) -> bool:
        """Remove an unused network; *cidr* is its CIDR or its name."""
        key = self.network_key(cidr)
        record = self.networks[key]
        if record["ips"]:
            names = sorted(record["ips"].values())
            users = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise Conflict(
                f"network {key} still has {len(record['ips'])} container(s) attached ({users}) — remove them first"
            )
        del self.networks[key]
        return True

    # ---------------------------------------------------------- containers

    def apply_create_container(self, spec: dict, ts: float, observed: dict | None = None,
                               gateway: bool = False) -> dict:
        """Record a container on the host its spec names and allocate its address. ``spec["network"]``
        is a network's name or CIDR; a CIDR nobody has is created (*gateway*: as ``create_network`` —
        entries from before gateways lack it); ``spec["publish"]``: its published ports, unique per
        host. That host's agent starts it (the API that asked for it). *observed* ``{state: "running",
        pid, started_at}``: that host already made it and runs it as soon as this commits (the one
        commit of a `run`); without it the record starts as "created"."""
        name = check_container_name(spec.get("name"))
        existing = self._same_request(name, spec)
        if existing is not None:
            return existing
        host = _check_name(spec.get("host"))
        if host not in self.nodes:
            raise StateError(f"host {host!r} is not a member of this cluster")
        first = _first_observation(observed, _check_ts("ts", ts))
        return self._new_container(name, spec, host, ts, first=first, gateway=gateway)

    def apply_place_container(self, spec: dict, ts: float, down_after: float, hint: str | None = None,
                              gateway: bool = False) -> dict:
        """Record a container on the host the scheduler picks (cluster/scheduler.py; *hint*: the
        proposer's pick, taken if it fits); its agent starts it. *down_after*: the proposer's window
        after which a silent host counts as down. *gateway*: as in ``create_container``."""
        name = check_container_name(spec.get("name"))
        existing = self._same_request(name, spec)
        if existing is not None:
            return existing
        checked = _check_placement(spec)
        pinned = volume_host(self.volumes, check_mounts(spec.get("mounts")))  # a volume's data stays on its host
        request = Request.of(name, checked, **({"only": (pinned,)} if pinned else {}))
        try:
            host = place(self.nodes, self.containers, request, _check_ts("ts", ts),
                         _check_ts("down_after", down_after), hint if isinstance(hint, str) else None)
        except NoHostFits as error:
            if pinned:
                raise NoHostFits(f"{error} (its volume's data lives on {pinned})") from None
            raise
        return self._new_container(name, {**spec, **checked}, host, ts, placed=True, gateway=gateway)

    def _check_template(self, spec: Any) -> dict:
        """A service's task template: everything a task is made of but its name, id and host."""
        if not isinstance(spec, dict):
            raise StateError("a service spec is an object")
        template = {
            "image": _check_str("image", spec.get("image"), 512),
            "image_digest": _check_str("image_digest", spec.get("image_digest", ""), 128),
            "command": _check_str_list("command", spec.get("command")),
            "env": _check_env(spec.get("env", {})),
            "workdir": _check_str("workdir", spec.get("workdir", "/"), 1024),
            "user": _check_str("user", spec.get("user", ""), 256),
            "stop_signal": _check_signal(spec.get("stop_signal", 15)),
            "ports": _check_str_list("ports", spec.get("ports", []), allow_empty=True),
            "network": self._check_new_network(spec.get("network")),
            # its network, when a task creates it, gets a gateway (services from before gateways: none)
            "gateway": spec.get("gateway") is True,
            "mounts": check_mounts(spec.get("mounts")),  # a task mounts its slot's own volumes (NAME.SLOT)
            **_check_optional(spec),
            **_check_placement(spec),
        }
        return {key: value for key, value in template.items()
                if value not in ([], False) or key in ("ports", "layers")}

    def _check_new_network(self, cidr: Any) -> str:
        """A network a container may join: one that exists (by name or CIDR), or one create_network would
        accept; its CIDR."""
        if isinstance(cidr, str) and "/" not in cidr:
            return self.network_key(cidr)
        network = ipam.parse_cidr(cidr)
        if str(network) not in self.networks:
            ipam.check_unicast(network)
            ipam.check_no_overlap(network, list(self.networks))
        return str(network)

    def _same_request(self, name: str, spec: dict) -> dict | None:
        existing = self.containers.get(name)
        if existing is not None and existing["id"] == spec.get("id"):
            return copy.deepcopy(existing)  # the same request again (a retry after a lost reply)
        if existing is not None:
            raise AlreadyExists(f"container name {name!r} is already in use — pick another name or remove it first")
        return None

    def _new_container(self, name: str, spec: dict, host: str, ts: float, placed: bool = False,
                       task: dict | None = None, first: dict | None = None, gateway: bool = False) -> dict:
        # Validate everything before the first mutation: a refused command changes nothing.
        checked = {
            "id": _check_str("id", spec.get("id"), 64),
            "image": _check_str("image", spec.get("image"), 512),
            "command": _check_str_list("command", spec.get("command")),
            "env": _check_env(spec.get("env", {})),
            "workdir": _check_str("workdir", spec.get("workdir", "/"), 1024),
            "limits": _check_limits(spec.get("limits", {})),
            "created_at": _check_ts("ts", ts),
            # the image as `run` resolved it (a tag is resolved once) and what its config contributes
            "image_digest": _check_str("image_digest", spec.get("image_digest", ""), 128),
            "user": _check_str("user", spec.get("user", ""), 256),
            "stop_signal": _check_signal(spec.get("stop_signal", 15)),
            "ports": _check_str_list("ports", spec.get("ports", []), allow_empty=True),
        }
        if not checked["id"]:
            raise StateError("a container needs an id")
        optional = _check_optional(spec)
        auto_remove = spec.get("auto_remove", False)
        if not isinstance(auto_remove, bool):
            raise StateError("auto_remove must be true or false")
        mounts = self._volume_mounts(spec, host)
        if placed:
            optional.update(_check_placement(spec), placed=True)
            for key in ("tty", "interactive"):
                if spec.get(key):
                    optional[key] = True
        for key in ("publish", "constraints"):
            if not optional.get(key):
                optional.pop(key, None)
        if type(gateway) is not bool:
            raise StateError("gateway must be true or false")
        publish = optional.get("publish", [])
        ref = spec.get("network")
        key = self.network_key(ref) if is_network_name(ref) else str(ipam.parse_cidr(ref))
        record = self.networks.get(key)
        if publish and record is not None and record["internal"]:
            raise StateError(f"network {record['name']} is internal: nothing outside reaches it, so it has no "
                             "published ports — drop -p or use another network")
        for port in publish:
            inside = [cidr for cidr in self.networks if port["host_ip"] != ports.ANY
                      and ipaddress.IPv4Address(port["host_ip"]) in ipaddress.IPv4Network(cidr)]
            if inside:
                raise StateError(f"-p {ports.format_port(port)}: {port['host_ip']} is inside network {inside[0]} — "
                                 "publish on an address of the host")
        if not placed:  # placement already passed over hosts whose active containers hold the port
            self._check_ports_free(host, name, publish)
        if record is None:
            record = self.networks[self.apply_create_network(key, ts, gateway=gateway)["cidr"]]
        reserved = {record["gateway"]} if record.get("gateway") else set()
        ip = ipam.lowest_free_address(ipam.parse_cidr(key), set(record["ips"]) | reserved)
        record["ips"][ip] = name
        container = {
            "name": name,
            "id": checked["id"],
            "host": host,
            "network": key,
            "ip": ip,
            "mac": mac_for_ip(ip),
            "image": checked["image"],
            "command": checked["command"],
            "env": checked["env"],
            "workdir": checked["workdir"],
            "limits": checked["limits"],
            "image_digest": checked["image_digest"],
            "user": checked["user"],
            "stop_signal": checked["stop_signal"],
            "ports": checked["ports"],
            "created_at": checked["created_at"],
            "desired": "running",
            **({"auto_remove": True} if auto_remove else {}),
            **optional,
            **(task or {}),
            **({"mounts": mounts} if mounts else {}),
            "observed": first or _first_observation(None, checked["created_at"]),
        }
        self._claim_volumes(mounts, host, checked["created_at"])
        self.containers[name] = container
        return copy.deepcopy(container)

    def _check_ports_free(self, host: str, name: str, publish: list[dict]) -> None:
        """A host port is held by its container until the container is removed (whatever its state)."""
        for other in self.containers.values():
            if other["host"] != host or other["name"] == name:
                continue
            for theirs in other.get("publish") or ():
                for mine in publish:
                    if ports.clash(mine, theirs):
                        raise ports_conflict(mine, host, other["name"])

    def apply_container_observed(self, name: str, host: str, observed: dict, ts: float) -> bool:
        """The container's host reports what it sees; reports from any other host are refused."""
        container = self._container(name)
        if container["host"] != host:
            raise Conflict(f"container {name!r} runs on {container['host']}, not {host}")
        state = observed.get("state")
        if state not in CONTAINER_STATES:
            raise StateError(f"unknown container state {state!r}")
        report = {
            key: observed.get(key) for key in ("state", "exit_code", "pid", "started_at", "finished_at", "reason")
        }
        report.update(_check_observed_extras(observed))
        report["reported_at"] = _check_ts("ts", ts)
        changed = {k: v for k, v in report.items() if k != "reported_at"} != {
            k: v for k, v in container["observed"].items() if k != "reported_at"}
        container["observed"] = report
        return changed

    def apply_set_container_desired(self, name: str, desired: str) -> bool:
        if desired not in ("running", "stopped"):
            raise StateError(f"desired state must be running or stopped, not {desired!r}")
        container = self._container(name)
        changed = container["desired"] != desired
        container["desired"] = desired
        return changed

    def apply_remove_container(self, name: str) -> dict:
        """Forget a container and release its address; returns the removed record."""
        container = self._container(name)
        network = self.networks.get(container["network"])
        if network is not None:
            network["ips"].pop(container["ip"], None)
        del self.containers[name]
        return container

    def _container(self, name: Any) -> dict:
        specs.check_known_name(name)
        container = self.containers.get(name)
        if container is None:
            raise NotFound(f"no container named {name!r}")
        return container

    # ------------------------------------------------------------------ reads

    def node_by_raft_addr(self, raft_addr: str) -> str | None:
        for name, rec in self.nodes.items():
            if rec["raft_addr"] == raft_addr:
                return name
        return None

    def to_bytes(self) -> bytes:
        """The state's data as one pickle: a consistent copy, taken fast.

        Pickling plain dicts is C code, ~12x faster than copy.deepcopy (1000 containers: ~4 ms vs
        ~50 ms here), which matters because snapshots are taken in the raft tick thread. The bytes
        never leave this process: nothing received from outside is ever unpickled here."""
        return pickle.dumps({section: getattr(self, section) for section in SECTIONS},
                            protocol=pickle.HIGHEST_PROTOCOL)

    def records_bytes(self, keys: set[tuple[str, str]]) -> bytes:
        """One pickle of ``{(section, key): record or None}``: the records a feed reader missed."""
        return pickle.dumps({(section, key): getattr(self, section).get(key) for section, key in keys},
                            protocol=pickle.HIGHEST_PROTOCOL)

    def to_dict(self) -> dict:
        """A deep copy safe to hand to other threads / encode as JSON."""
        return pickle.loads(self.to_bytes())


def _first_observation(observed: Any, ts: float) -> dict:
    """A new container's observed record: "created", or what its host reports as it starts it."""
    record = {"state": "created", "exit_code": None, "pid": None, "started_at": None, "finished_at": None,
              "reason": None, "reported_at": ts}
    if observed is None:
        return record
    if not isinstance(observed, dict) or observed.get("state") != "running":
        raise StateError("a new container's first observation must be {state: running, pid, started_at}")
    pid = observed.get("pid")
    if type(pid) is not int or pid <= 0:
        raise StateError("pid must be a positive integer")
    return {**record, "state": "running", "pid": pid, "started_at": _check_ts("started_at", observed.get("started_at"))}


# A network's name is a DNS label (containers find each other as NAME.NETWORK) starting with a letter,
# so it never reads as an address. ``net-A-B-C-D-P`` is what a CIDR-only network is called.
NETWORK_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DEFAULT_NAME_RE = re.compile(r"^net(-[0-9]+){5}$")


def is_network_name(ref: Any) -> bool:
    """Does *ref* mean a name (it starts with a letter, as names must) rather than a CIDR?"""
    return isinstance(ref, str) and ref[:1].isalpha() and "/" not in ref


def default_network_name(cidr: str) -> str:
    return "net-" + cidr.replace(".", "-").replace("/", "-")


def check_network_name(name: Any, cidr: str | None = None) -> str:
    if not isinstance(name, str) or not NETWORK_NAME_RE.match(name):
        raise StateError(f"network name {name!r} is invalid — use 1-63 lowercase letters, digits and hyphens, "
                         "starting with a letter and ending with a letter or digit")
    if _DEFAULT_NAME_RE.match(name) and (cidr is None or name != default_network_name(cidr)):
        raise StateError(f"network name {name!r} is reserved for the network of that CIDR — pick another name")
    return name


def ports_conflict(port: dict, host: str, holder: str) -> Conflict:
    return Conflict(f"port {ports.describe(port)} is already published on {host} by container {holder!r} — "
                    "pick another host port, or remove that container first")


def _upgrade_network(record: dict) -> dict:
    """A network record of any schema as schema 2 has it (what replaying its log entries gives)."""
    if "name" in record:
        return record
    return {**record, "name": default_network_name(record["cidr"]), "gateway": None, "internal": False}


def _upgrade_container(record: dict) -> dict:
    return record if "publish" in record else {**record, "publish": []}


def _new_record(_args: dict, res: dict) -> list[tuple[str, str]]:
    """A container made or removed: its record, its network's and its volumes' (a first use makes one)."""
    return [("containers", res["name"]), ("networks", res["network"]),
            *(("volumes", name) for name in M.volume_names(res.get("mounts") or []))]


def _named_service(args: dict, _res: Any) -> list[tuple[str, str]]:
    return [("services", args["name"])]


# What each command touched, as (section, key) — from its arguments and its result (refused
# commands change nothing and are not recorded). A command missing here, or one answering None,
# makes a feed gap: those that rename records they do not return (a superseding place_task,
# remove_service retiring every task) are left to it; they are rare.
_TOUCHES: dict[str, Callable[[dict, Any], list[tuple[str, str]] | None]] = {
    "register_node": lambda args, _res: [("nodes", args["name"])],
    "heartbeat": lambda args, _res: [("nodes", args["name"])],
    "remove_node": lambda args, _res: [("nodes", args["name"])],
    "node_layers": lambda args, _res: [("nodes", args["name"])],
    "create_network": lambda _args, res: [("networks", res["cidr"])],
    # by name: the name is gone with the record, so its key cannot be told afterwards (rare: a gap)
    "delete_network": lambda args, _res: None if is_network_name(args["cidr"]) else [
        ("networks", str(ipam.parse_cidr(args["cidr"])))],
    "create_container": _new_record,
    "place_container": _new_record,
    "container_observed": lambda args, _res: [("containers", args["name"])],
    "set_container_desired": lambda args, _res: [("containers", args["name"])],
    "remove_container": _new_record,
    "create_service": lambda _args, res: [("services", res["name"])],
    "update_service": _named_service,
    "scale_service": _named_service,
    "rollback_service": _named_service,
    "service_update_state": _named_service,
    "note_service": _named_service,
    "remove_service": lambda _args, _res: None,  # renames every task it retires
    "place_task": lambda args, res: None if args.get("supersede") else _new_record(args, res),
    "retire_task": lambda args, res: [("containers", args["name"]), *_new_record(args, res)],
    "create_volume": lambda args, _res: [("volumes", args["name"])],
    "remove_volume": lambda args, _res: [("volumes", args["name"])],
    "volume_observed": lambda args, _res: [("volumes", args["name"])],
    "set_stack_object": lambda args, _res: [("stacks", args["stack"])],
}


def check_container_name(name: Any) -> str:
    """A name `run` may give a container (dots are reserved for service tasks)."""
    return specs.check_container_name(name)


def _check_capacity(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"memory", "cpus"}:
        raise StateError("capacity must be {memory, cpus}")
    for key, item in value.items():
        if type(item) not in (int, float) or item != item or item < 0:
            raise StateError(f"capacity {key} must be a non-negative number")
    return dict(value)


def _check_layers(value: Any) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LAYERS or not all(
            isinstance(item, str) and len(item) <= 80 for item in value):
        raise StateError(f"layers must be a list of at most {MAX_LAYERS} digests")
    return sorted(set(value))


def _check_optional(spec: dict) -> dict:
    """restart, health and publish of a container spec: present only when set."""
    out: dict = {}
    if spec.get("restart") is not None:
        restart = specs.parse_restart(spec["restart"])
        if restart["policy"] != "no":
            out["restart"] = restart
    health = specs.check_health(spec.get("health"))
    if health is not None:
        out["health"] = health
    publish = specs.check_publish(spec.get("publish"))
    if publish:
        out["publish"] = publish
    security = spec.get("security")
    if security is not None:  # --cap-add/--cap-drop/--security-opt: the host that starts it applies them
        if not isinstance(security, dict) or set(security) - {"cap_add", "cap_drop", "seccomp"} or \
                security.get("seccomp", "default") not in ("default", "unconfined") or not all(
                isinstance(security.get(k, []), list) and len(security.get(k, [])) <= 64
                and all(isinstance(c, str) and len(c) <= 32 for c in security.get(k, []))
                for k in ("cap_add", "cap_drop")):
            raise StateError("security must be {cap_add, cap_drop, seccomp: default|unconfined}")
        out["security"] = {"cap_add": list(security.get("cap_add", [])), "cap_drop": list(security.get("cap_drop", [])),
                           "seccomp": security.get("seccomp", "default")}
    layers = spec.get("layers")
    if layers is not None:  # the image's layers: its host can start it again from the record alone
        if not isinstance(layers, list) or len(layers) > 1000 or not all(
                isinstance(item, str) and len(item) <= 80 for item in layers):
            raise StateError("layers must be a list of diff_ids")
        out["layers"] = list(layers)
    return out


def _check_placement(spec: dict) -> dict:
    """What placement needs beyond the container: the image's layers (a host must hold them) and
    the constraints; published ports and limits are in the spec already."""
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > 1000 or not all(
            isinstance(item, str) and len(item) <= 80 for item in layers):
        raise StateError("a placed container needs its image's layers (a list of diff_ids)")
    return {"layers": list(layers), "constraints": specs.check_constraints(spec.get("constraints")),
            "publish": specs.check_publish(spec.get("publish")), "limits": _check_limits(spec.get("limits", {}))}


def _check_observed_extras(observed: dict) -> dict:
    """What a host reports beyond the process: health, and the restarts its agent made."""
    out: dict = {}
    health = observed.get("health")
    if health is not None:
        if not isinstance(health, dict) or health.get("status") not in HEALTH_STATES:
            raise StateError(f"health status must be one of {', '.join(HEALTH_STATES)}")
        out["health"] = {"status": health["status"], "since": _check_ts("health since", health.get("since", 0)),
                         "streak": int(health.get("streak") or 0) if type(health.get("streak") or 0) is int else 0,
                         "output": _check_str("health output", health.get("output") or "", 4096)}
    count = observed.get("restart_count")
    if count is not None:
        if type(count) is not int or count < 0:
            raise StateError("restart_count must be a non-negative integer")
        out["restart_count"] = count
    restarts = observed.get("restarts")
    if restarts is not None:
        if not isinstance(restarts, list) or not all(isinstance(r, dict) for r in restarts):
            raise StateError("restarts must be a list of {at, delay, exit_code}")
        out["restarts"] = [{"at": _check_ts("restart at", r.get("at")),
                            "delay": _check_ts("restart delay", r.get("delay")),
                            "exit_code": r.get("exit_code") if type(r.get("exit_code")) is int else None,
                            "exited_at": _check_ts("restart exited_at", r["exited_at"])
                            if r.get("exited_at") is not None else None}
                           for r in restarts[-MAX_RESTARTS_KEPT:]]
    return out


OVERLAY_SUMMARY_KEYS = ("networks", "expected", "programmed", "pending")


def _check_overlay_summary(value: Any) -> dict:
    if not isinstance(value, dict) or set(value) != set(OVERLAY_SUMMARY_KEYS) or not all(
            type(value[key]) is int and 0 <= value[key] < 10**9 for key in OVERLAY_SUMMARY_KEYS):
        raise StateError(f"overlay summary must hold the integers {', '.join(OVERLAY_SUMMARY_KEYS)}")
    return dict(value)


def _network_view(record: dict) -> dict:
    return {"cidr": record["cidr"], "name": record["name"], "vni": record["vni"], "gateway": record["gateway"],
            "internal": record["internal"], "created_at": record["created_at"], "containers": len(record["ips"])}


def _check_str_list(key: str, value: Any, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not (value or allow_empty) or len(value) > 256:
        raise StateError(f"{key} must be a {'' if allow_empty else 'non-empty '}list of at most 256 strings")
    return [_check_str(key, item, 4096) for item in value]


def _check_signal(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 64:
        raise StateError(f"stop_signal {value!r} must be a signal number from 1 to 64")
    return value


ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _check_env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 256:
        raise StateError("env must be a mapping of at most 256 variables")
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise StateError(f"environment variable name {key!r} is invalid — use letters, digits and _")
        _check_str(f"env {key}", item, 4096)
    return dict(value)


def _check_limits(value: Any) -> dict:
    if not isinstance(value, dict) or set(value) - {"memory", "cpus", "pids"}:
        raise StateError("limits may only name memory, cpus and pids")
    for key, item in value.items():
        if item is not None and (type(item) not in (int, float) or item <= 0 or item != item):
            raise StateError(f"limit {key} must be a positive number")
    return dict(value)
