"""Container methods of the agent API.

``container.run {name?, network (a name or a CIDR), image: {reference, digest, layers, config}, command?,
entrypoint?, env, workdir?, user?, limits, tty?, interactive?, auto_remove?, cap_add?, cap_drop?, seccomp?,
publish?, mounts?}`` -> ``{name, id, ip, host, network, network_name, image_digest, publish}`` (on the host
    that runs it; the layers must be here: image.import / image.pull). The image's config and the options
    merge docker's way (images/config.effective) before anything is recorded; cap_add/cap_drop/seccomp
    stay on this host (not replicated). ``publish`` (cluster/ports.py) is refused before anything is
    recorded when a process of this host listens on the port; the cluster refuses one another container
    holds. *mounts* (mounts.py) are replicated: a named volume is made by its first use, on the
    container's host, and a container is never recorded on another host than a volume it mounts
    (cluster/volumes.py).
``container.stop {name, timeout}`` -> ``{name, state, exit_code}``;  ``container.rm {name, force}`` -> ``{removed}``
``container.ps`` -> ``[{name, id, host, network, ip, mac, image, command, state, exit_code, …}]`` (any node)

Validation happens before anything is recorded; the record (name, address) is decided in raft;
the start and removal order is workload.py's. Writes are exactly-once per request session: a retried
``run`` finds the record its first attempt made (and that container, if it started); a retried ``rm``
whose first attempt removed the container is answered "removed", not "not found" (api/requests.py).
``container.rm`` of a container whose host is down works on any node: it removes the record (name
and address free at once; ``force`` needed if it was last seen running), and that host's
containers controller removes the leftover when it returns.
"""
from __future__ import annotations

import contextlib
import copy
import os
import secrets
import time
from typing import Callable

from .. import layout, mounts, protocol
from ..cluster import ports
from ..cluster.liveness import down_after
from ..cluster.scheduler import Request, place
from ..cluster.specs import check_constraints
from ..cluster.state import check_container_name, ports_conflict
from ..cluster.views import MAYBE_RUNNING, container_view, down_hosts
from ..consensus import RaftNode
from ..consensus.writes import Session, replicate
from ..errors import Expired, StateError
from ..images.errors import ImageSourceError
from ..netfilter import listeners
from ..overlay import OverlayError
from ..runtime import ContainerError, ContainerNotFound, ContainerRunning, ContainerSpec, ImageNotFound
from ..workload import RecordOfAnotherAttempt, Workload
from .errors import raft_of, rejected
from .requests import Reads, applied_before, session_of

MAX_STOP_TIMEOUT = 3600  # seconds between SIGTERM and SIGKILL
RETRY_WAIT = 60.0  # seconds a retried `run` waits for its first attempt's start to finish
PLACE_WAIT = 60.0  # seconds a placed container may take to start on the host the cluster chose


def _placement_hint(state, name: str, spec: dict, now: float, heartbeat_interval: float) -> tuple[float, str | None]:
    """(down window, the host this replica's scheduler picks) — run in the raft tick thread."""
    window = down_after(heartbeat_interval, len(state.nodes))
    try:
        request = Request.of(name, {**spec, "constraints": check_constraints(spec.get("constraints"))})
        return window, place(state.nodes, state.containers, request, now, window)
    except StateError:
        return window, None  # the state machine says why, with the same words


def container_fields(name: str, params: dict) -> dict:
    """The record fields of a container `run`/`place`/a service asks for: the image's config and the
    options merged docker's way (images/config.effective), validated before anything is recorded."""
    # imported by the first run, not at the agent's start (their dataclasses and patterns: ~4 ms)
    from ..images.config import ImageConfig, effective, effective_health
    from ..images.reference import DIGEST_RE

    image = params.get("image")
    if not isinstance(image, dict):
        raise rejected("image must be an object {reference, digest, layers, config}")
    reference, digest = str(image.get("reference") or ""), image.get("digest")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise rejected(f"image digest {digest!r} is not sha256: and 64 hex digits")
    layers = image.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(d, str) for d in layers):
        raise rejected("image layers must be a non-empty list of diff_ids")
    try:
        config = ImageConfig.from_dict(image.get("config") or {})
        if config.diff_ids and list(config.diff_ids) != layers:
            raise rejected(f"image {reference}: the layers do not match its config's diff_ids")
        wanted = effective(config, command=params.get("command") or None, entrypoint=params.get("entrypoint"),
                           env=params.get("env") or {}, workdir=params.get("workdir") or None,
                           user=params.get("user"), image=f"image {reference or digest[:19]}")
        health = effective_health(config, params.get("health"))
    except ImageSourceError as error:
        raise rejected(str(error)) from None
    env = dict(wanted.env)
    try:
        wanted_mounts = mounts.check_all(params.get("mounts"))
    except mounts.MountError as error:
        raise rejected(str(error)) from None
    # Validate the whole spec before anything is recorded in the cluster.
    security = security_of(params)
    ContainerSpec(id="probe", name=name, image=digest[7:], command=wanted.argv, env=env, workdir=wanted.workdir,
                  limits=params.get("limits") or {}, user=wanted.user, stop_signal=wanted.stop_signal, **security)
    changed = security["cap_add"] or security["cap_drop"] or security["seccomp"] != "default"
    return {"image": reference or digest[:19], "image_digest": digest, "layers": list(layers),
            "command": list(wanted.argv), "env": env, "workdir": wanted.workdir, "user": wanted.user,
            "stop_signal": wanted.stop_signal, "ports": list(wanted.exposed_ports),
            "limits": params.get("limits") or {},
            **({"mounts": wanted_mounts} if wanted_mounts else {}),
            **({"restart": params["restart"]} if params.get("restart") else {}),
            **({"health": health} if health else {}),
            **({"security": {k: list(v) if k != "seccomp" else v for k, v in security.items()}} if changed else {})}


HERE, TAKEN_BACK, GONE = "here", "taken back", "gone"


def first_attempt_fate(state, session: Session, record: dict) -> str:
    """A resent `run` found the record its first attempt created (its create replayed). HERE: the
    cluster still has that container. TAKEN_BACK: that attempt's start failed and it removed the
    record again (Workload.undo_create does so with the request's next write, replayed here too).
    GONE: it started, and was removed since (`rm`, --rm): answered as then, never started again."""
    current = state.containers.get(record["name"])
    if current is not None and current["id"] == record["id"]:
        return HERE
    try:
        undone = state.sessions.outcome(session.client, session.first + 1)
    except Expired:
        undone = None
    if undone is not None and undone[0] is None and isinstance(undone[1], dict) and undone[1].get("id") == record["id"]:
        return TAKEN_BACK
    return GONE


def _start_failed(name: str, error: Exception) -> protocol.ProtocolError:
    code = {127: protocol.COMMAND_NOT_FOUND, 126: protocol.COMMAND_NOT_EXECUTABLE}.get(
        getattr(error, "exit_code", None), protocol.INTERNAL)  # docker's 127/126: the command cannot run
    return protocol.ProtocolError(code, f"container {name} failed to start: {error}")


def security_of(params: dict) -> dict:
    """--cap-add/--cap-drop/--security-opt of a run (also a record's ``security``, which carries
    them to the host the cluster placed it on)."""
    return {"cap_add": params.get("cap_add") or (), "cap_drop": params.get("cap_drop") or (),
            "seccomp": params.get("seccomp") or "default"}


class ContainerHandlers:
    def __init__(self, node: str, workload: Workload, get_raft: Callable[[], RaftNode | None],
                 trigger: Callable[[], None], reads: Reads,
                 heartbeat_interval: float = layout.HEARTBEAT_INTERVAL) -> None:
        self._node = node
        self._heartbeat_interval = heartbeat_interval
        self._workload = workload
        self._get_raft = get_raft
        self._trigger = trigger
        self._reads = reads

    def handlers(self) -> dict[str, Callable[[dict], object]]:
        return {"container.run": self.run, "container.place": self.place, "container.stop": self.stop,
                "container.rm": self.rm, "container.ps": self.ps}

    def run(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        session = session_of(params, "container.run")
        name = params.get("name") or f"c-{secrets.token_hex(3)}"
        check_container_name(name)
        fields = container_fields(name, params)
        self._check_binds(fields.get("mounts") or [])
        layers = fields["layers"]
        publish = self._publish(raft, params.get("publish") or [])
        container_id = secrets.token_hex(6)
        spec = ContainerSpec(id=container_id, name=name, image=fields["image_digest"][7:], command=fields["command"],
                             env=fields["env"], workdir=fields["workdir"], limits=fields["limits"], resolv_conf="",
                             tty=bool(params.get("tty")), stdin=bool(params.get("interactive")), user=fields["user"],
                             stop_signal=fields["stop_signal"],
                             mounts=self._workload.spec_mounts(fields.get("mounts") or []), **security_of(params))
        if fields.get("mounts"):  # another host's volume is refused before its directory is made here
            raft.read(lambda state: state._volume_mounts(fields, self._node) and None)  # (the commit checks too)
        ts = time.time()

        def create(observed: dict) -> dict:
            return replicate(raft, "create_container", {"spec": {
                **fields, "name": name, "id": container_id, "host": self._node, "network": params.get("network"),
                "publish": publish, **({"auto_remove": params["auto_remove"]} if "auto_remove" in params else {})},
                "ts": ts, "observed": observed, "gateway": True}, session)

        resent = False
        fate = HERE  # GONE: a resent request whose first attempt ran it, removed since: answered, not restarted
        with contextlib.ExitStack() as pinned:
            try:  # the layers stay out of a concurrent prune's reach until the container is on disk
                lowers = pinned.enter_context(self._workload.image_layers(layers))
            except ImageNotFound as error:
                raise rejected(f"image {fields['image']}: {error} — run again to push it") from None
            # in flight before the record exists, so the controller never sees it half-made
            with self._workload.in_flight(container_id):
                try:  # one commit: recorded as running once made, before its command runs
                    record, info = self._workload.create_and_start(raft, spec, lowers, create, session)
                except RecordOfAnotherAttempt as earlier:  # a resent request: its first attempt recorded this
                    record, info = earlier.record, None
                    resent = True
                except (ContainerError, OverlayError, OSError) as error:
                    raise _start_failed(name, error) from None
            if info is None:
                self._workload.wait_not_in_flight(record["id"], RETRY_WAIT)  # the first attempt may still start it
                fate = raft.read(lambda state: first_attempt_fate(state, session, record))
                if fate == TAKEN_BACK:  # that attempt's answer was an error: so is this one
                    raise protocol.ProtocolError(
                        protocol.INTERNAL, f"container {name} failed to start at this request's first attempt, "
                                           "which removed it again; run it again")
                if fate == HERE:
                    with self._workload.in_flight(record["id"]):
                        info = self._started_before(record["id"]) or \
                            self._start(raft, record, fields["image_digest"][7:], lowers, params, session)
        if fate == HERE:
            self._workload.report(raft, record, info, session)  # the common path: nothing new to commit
        if resent:
            self._trigger()
        # else the record's commit woke a pass on every host already (this host's looks at its own
        # containers and links in full); a full pass more cost this host an nftables listing per run
        return {"name": record["name"], "id": record["id"], "ip": record["ip"], "host": record["host"],
                "network": record["network"], "network_name": self._network_name(raft, record),
                "image_digest": record.get("image_digest") or fields["image_digest"],
                "publish": record.get("publish", [])}

    def _check_binds(self, wanted: list[dict]) -> None:
        """A bind source of a container this host runs must exist here and, resolved, reach nothing
        protected (init checks again on what it opens; a placed container's host checks at its start)."""
        protected = tuple(sorted({*self._workload.protected, *map(os.path.realpath, self._workload.protected)}))
        for mount in wanted:
            if mount["type"] != mounts.BIND:
                continue
            source = mount["source"]
            if not os.path.lexists(source):
                raise rejected(f"bind mount source {source} does not exist on {self._node} — create it there first")
            real = os.path.realpath(source)
            reason = mounts.refusal(real, protected)
            if reason:
                raise rejected(f"bind mount source {source} (resolves to {real}) is refused: {reason} — bind a "
                               "directory of your own")

    def place(self, params: dict) -> dict:
        """`run` without a host: the cluster picks it (inside the replicated command), its agent starts
        the container; answers once it runs (or refuses, naming why no host fits)."""
        raft = raft_of(self._get_raft)
        session = session_of(params, "container.place")
        name = params.get("name") or f"c-{secrets.token_hex(3)}"
        check_container_name(name)
        fields = container_fields(name, params)
        constraints = params.get("constraints") or []
        try:  # which host has the port free is the scheduler's to say
            publish = ports.check(params.get("publish") or [])
        except ports.PortError as error:
            raise rejected(str(error)) from None
        spec = {**fields, "name": name, "id": secrets.token_hex(6), "network": params.get("network"),
                "constraints": constraints, "publish": publish, "tty": bool(params.get("tty")),
                "interactive": bool(params.get("interactive")),
                **({"auto_remove": params["auto_remove"]} if "auto_remove" in params else {})}
        now = time.time()
        window, hint = raft.read(lambda state: _placement_hint(state, name, spec, now, self._heartbeat_interval))
        record = replicate(raft, "place_container", {"spec": spec, "ts": now, "down_after": window, "hint": hint,
                                                     "gateway": True}, session)
        self._trigger()
        observed = self._wait_started(raft, record)
        if observed["state"] == "dead" and (observed.get("reason") or "").startswith("failed to start"):
            self._workload.undo_create(raft, record, session, local=False)
            code = {127: protocol.COMMAND_NOT_FOUND, 126: protocol.COMMAND_NOT_EXECUTABLE}.get(
                observed.get("exit_code"), protocol.INTERNAL)
            raise protocol.ProtocolError(code, f"container {record['name']} failed to start on {record['host']}: "
                                         f"{observed['reason'][len('failed to start: '):]}")
        return {"name": record["name"], "id": record["id"], "ip": record["ip"], "host": record["host"],
                "network": record["network"], "network_name": self._network_name(raft, record),
                "image_digest": record.get("image_digest"), "publish": record.get("publish", [])}

    @staticmethod
    def _network_name(raft: RaftNode, record: dict) -> str | None:
        return raft.read(lambda state: (state.networks.get(record["network"]) or {}).get("name"))

    def _publish(self, raft: RaftNode, value: object) -> list[dict]:
        """The request's published ports, checked before anything is made against what this host's
        own processes listen on and what its containers publish (as this replica knows it; the
        cluster checks that again when it records the container)."""
        try:
            wanted = ports.check(value)
        except ports.PortError as error:
            raise rejected(str(error)) from None
        if not wanted:
            return wanted
        node = self._node

        def published_here(state) -> list[tuple[str, dict]]:
            return [(c["name"], dict(p)) for c in state.containers.values() if c["host"] == node
                    for p in c.get("publish") or ()]

        taken = raft.read(published_here)
        for port in wanted:
            holder = next((name for name, theirs in taken if ports.clash(port, theirs)), None)
            if holder is not None:
                raise ports_conflict(port, node, holder)
        gateways = raft.read(lambda state: {n["gateway"] for n in state.networks.values() if n.get("gateway")})
        for port in wanted:
            if port["protocol"] == "udp" and port["host_port"] == self._workload.cfg.vxlan_port:
                held = f"the cluster's VXLAN port {port['host_port']}/udp"
            else:
                found = listeners.holder(port, listeners.listening(port["protocol"]), gateways)
                held = f"a process of the host listens on {found}" if found else None
            if held:
                raise protocol.ProtocolError(protocol.CONFLICT, f"port {ports.describe(port)} is in use on "
                                             f"{self._node} ({held}) — pick another host port")
        return wanted

    def _wait_started(self, raft: RaftNode, record: dict) -> dict:
        """The container's first observation other than "created", as its host reported it."""
        deadline = time.monotonic() + PLACE_WAIT
        name, container_id = record["name"], record["id"]
        while True:
            current = raft.read(lambda s: copy.deepcopy(s.containers.get(name)))
            if current is None or current["id"] != container_id:
                raise protocol.ProtocolError(protocol.CONFLICT, f"container {name} was removed before it started")
            if current["observed"]["state"] != "created":
                return current["observed"]
            if time.monotonic() > deadline:
                raise protocol.ProtocolError(protocol.UNAVAILABLE, f"container {name} was placed on "
                                             f"{current['host']}, which has not started it within {PLACE_WAIT:g} s; "
                                             "see `cantainer ps -a`")
            time.sleep(0.05)

    def _start(self, raft: RaftNode, record: dict, image_id: str, lowers: list[str], params: dict,
               session: Session):
        """Start the container of a record an earlier attempt of this request made (its address known)."""
        net = raft.read(lambda state: copy.deepcopy(state.networks[record["network"]]))
        try:
            return self._workload.start(record, net, image_id, lowers, tty=bool(params.get("tty")),
                                        stdin=bool(params.get("interactive")), security=security_of(params))
        except (ContainerError, OverlayError, OSError) as error:
            self._workload.undo_create(raft, record, session)
            raise _start_failed(record["name"], error) from None

    def _started_before(self, container_id: str):
        """The container a first attempt of this request started, if it did."""
        try:
            info = self._workload.runtime.inspect(container_id)
        except ContainerNotFound:
            return None
        return None if info.state == "created" else info

    def _record(self, raft: RaftNode, params: dict) -> dict | None:
        name = params.get("name")
        check_container_name(name)
        record = self._reads.snapshot(raft, params)["state"]["containers"].get(name)
        if record is not None and record["host"] != self._node:
            raise rejected(f"container {name} runs on {record['host']}, not on {self._node}")
        return record

    def _missing(self, raft: RaftNode, params: dict, command: str, args: dict) -> dict:
        """No such container: a request retried after its first attempt removed it gets that outcome
        from the session table; otherwise the state machine says not found."""
        if not params.get("session"):
            raise protocol.ProtocolError(protocol.NOT_FOUND, f"no container named {params.get('name')!r}")
        return replicate(raft, command, args, session_of(params, "container"))

    def stop(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        timeout = params.get("timeout", 10.0)
        if type(timeout) not in (int, float) or not 0 <= timeout <= MAX_STOP_TIMEOUT:  # also refuses NaN
            raise rejected(f"stop timeout {timeout!r} must be a number of seconds from 0 to {MAX_STOP_TIMEOUT}")
        record = self._record(raft, params)
        desired = {"name": params.get("name"), "desired": "stopped"}
        if record is None:
            self._missing(raft, params, "set_container_desired", desired)
            return {"name": params.get("name"), "state": "dead", "exit_code": None}
        session = session_of(params, "container.stop")
        replicate(raft, "set_container_desired", desired, session)
        try:
            info = self._workload.runtime.stop(record["id"], timeout=timeout)
        except ContainerNotFound:
            info = None
        self._workload.report(raft, record, info, session)
        return {"name": record["name"], "state": info.state if info else "dead",
                "exit_code": info.exit_code if info else None}

    def rm(self, params: dict) -> dict:
        raft = raft_of(self._get_raft)
        name = check_container_name(params.get("name"))
        state = self._reads.snapshot(raft, params)["state"]
        record = state["containers"].get(name)
        # A retry whose first attempt removed it: its answer is that attempt's, and a container that holds
        # the name now (made since) is not this request's. (No record: `_missing` answers it so.)
        if record is not None and applied_before(raft, params):
            replicate(raft, "remove_container", {"name": name}, session_of(params, "container.rm"))
            return {"removed": name}
        if record is not None and record["host"] != self._node:
            return self._rm_on_down_host(raft, state, record, params)
        if record is None:
            self._missing(raft, params, "remove_container", {"name": name})
            return {"removed": name}
        with self._workload.in_flight(record["id"]):
            try:
                self._workload.remove_local(record["id"], force=bool(params.get("force")))
            except ContainerRunning as error:
                raise protocol.ProtocolError(protocol.CONFLICT, f"{error} — stop it first, or use `rm -f`") from None
            replicate(raft, "remove_container", {"name": record["name"]}, session_of(params, "container.rm"))
        self._trigger()
        return {"removed": record["name"]}

    def _rm_on_down_host(self, raft: RaftNode, state: dict, record: dict, params: dict) -> dict:
        """kubectl's forced delete: the record goes now; the host removes the leftover when it returns."""
        host = record["host"]
        if host not in self._down(state):
            raise rejected(f"container {record['name']} runs on {host}, not on {self._node}")
        if record["observed"]["state"] in MAYBE_RUNNING and not params.get("force"):
            raise protocol.ProtocolError(
                protocol.CONFLICT, f"container {record['name']} is on host {host}, which is down and may still run "
                f"it — `rm -f` removes it from the cluster now ({host} removes it when it returns)")
        replicate(raft, "remove_container", {"name": record["name"]}, session_of(params, "container.rm"))
        self._trigger()
        return {"removed": record["name"], "leftover_on": host}

    def _down(self, state: dict) -> dict[str, float]:
        return down_hosts(state, time.time(), self._heartbeat_interval, self._node)

    def ps(self, params: dict) -> list[dict]:
        state = self._reads.snapshot(raft_of(self._get_raft), params)["state"]
        down = self._down(state)
        return [container_view(record, down, state["networks"]) for _, record in sorted(state["containers"].items())]
