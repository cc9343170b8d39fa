"""This host's containers: the runtime, its layer store and the set of starts/removals in flight.

Shared by the API handlers (api/containers.py, api/images.py), which start and remove containers
on request, and the containers controller (controllers/containers.py), which reconciles the rest.
The *in-flight* set is how the two stay out of each other's way: an id is marked before its
record is replicated and unmarked once it runs (or is gone), so the controller never mistakes a
container being started for an orphan, nor a record being created for a dead container.

Order of operations keeps the cluster and the host consistent ("nothing half-done"), with one raft
commit for a `run` (``create_and_start``): the container is made up to its command (namespaces,
mounts, cgroup), then recorded in raft as running with its pid — the commit decides its name and
address — then given its veth and /etc/hosts, then its command runs. A start of a record that exists
(placed, restarted) = start with the veth attached before exec → report. A failed start removes the
container, its record and a network or volumes it created. Remove = stop and remove locally
(process, mounts, cgroup, veth) → replicate the removal. A volume's directory is made by the first
start that mounts it and deleted by ``delete_volume`` after its record is gone (or by the `run` that
made it, if its commit is refused), both under that volume's lock, so a removal never deletes what a
start mounts.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import importlib
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from typing import Callable, Iterator

from . import layout, mounts
from .cluster.specs import hostname_of
from .config import AgentConfig
from .consensus import RaftError, RaftNode
from .consensus.writes import Session, replicate
from .errors import AgentError
from .overlay import EndpointSpec, KernelGuard, NetworkSpec, overlay_mtu
from .runtime import ContainerError, ContainerInfo, ContainerNotFound, ContainerSpec, LayerStore, Runtime

log = logging.getLogger(__name__)
VETH_MODULE = __package__ + ".overlay.veth"  # what a container's network attachment imports (pyroute2)


def observed_from(info: ContainerInfo | None) -> dict:
    """What the runtime shows, in the shape of the cluster state's ``observed`` record."""
    if info is None:
        return {"state": "dead", "exit_code": None, "pid": None, "started_at": None, "finished_at": None,
                "reason": "its process is gone (host restarted?)"}
    reason = info.stop_reason or ("oom-killed" if info.oom_killed else
                                  (f"killed by signal {info.signal}" if info.signal else None))
    return {"state": info.state, "exit_code": info.exit_code, "pid": info.pid, "started_at": info.started_at,
            "finished_at": info.finished_at, "reason": reason}


def resolv_conf(net: dict) -> str:
    """The container's /etc/resolv.conf: its network's DNS server on the gateway, the network's name
    as search domain (``ping db`` asks for db.NETWORK). A network without a gateway has no DNS."""
    if not net.get("gateway"):
        return ""
    return f"nameserver {net['gateway']}\nsearch {net['name']}\n"


def protected_dirs(cfg: AgentConfig) -> tuple[str, ...]:
    """What no bind mount may reach on this host: the agent's directories as configured (the config
    and secret's too) and the kernel's."""
    return mounts.protected_dirs(cfg.data_dir, cfg.run_dir, cfg.log_dir, os.path.dirname(cfg.secret_file))


def _same_observation(a: dict, b: dict) -> bool:
    keys = ("state", "exit_code", "pid", "started_at", "finished_at", "reason", "health", "restart_count")
    return all(a.get(k) == b.get(k) for k in keys)


def host_capacity() -> dict:
    """What this host offers to reservations: its memory (bytes) and the CPUs this process may use."""
    memory = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return {"memory": memory, "cpus": float(cpus)}


class RecordOfAnotherAttempt(Exception):
    """create_and_start: the request was sent before, and its first attempt created this record."""

    def __init__(self, record: dict) -> None:
        super().__init__(record["name"])
        self.record = record


class Workload:
    def __init__(self, cfg: AgentConfig, guard: KernelGuard, underlay_mtu: Callable[[], int],
                 trigger: Callable[[], None]) -> None:
        self.cfg = cfg
        self._guard = guard
        self._underlay_mtu = underlay_mtu
        self.images = LayerStore(layout.images_dir(cfg.data_dir))
        self.protected = protected_dirs(cfg)
        self.runtime = Runtime(state_dir=layout.containers_state_dir(cfg.data_dir),
                               run_dir=layout.containers_run_dir(cfg.run_dir), on_exit=lambda _info: trigger(),
                               protected=self.protected)
        self._volume_locks: dict[str, threading.RLock] = {}
        self._volume_locks_guard = threading.Lock()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._in_flight_lock = threading.Condition()
        # Held while layers are imported, pruned, or picked as a container's lower dirs; the dirs
        # of starts in flight stay pinned until the container's record on disk names them.
        self.image_lock = threading.RLock()
        self._pinned: dict[str, int] = {}
        self.on_layers_changed: Callable[[], None] | None = None  # the agent tells the cluster (placement)
        # called with (record, network record) before a container's command runs: the agent serves
        # that network's DNS then, not at its next reconcile pass
        self.before_exec: Callable[[dict, dict], None] | None = None
        self._prepare_guard = threading.Lock()
        self._preparing = False

    def prepare(self) -> None:
        """A container may come soon (the workstation asked which of an image's layers are here):
        start, in the background, what a first start needs and does not have yet — the runtime's
        fork server (a Python process, ~50 ms) and the netlink modules (pyroute2, ~0.1 s of
        imports) — so that it overlaps with the layers' transfer and unpacking instead of adding
        to the start. Cheap when all is there already."""
        if self.runtime.is_warm() and VETH_MODULE in sys.modules:
            return
        with self._prepare_guard:
            if self._preparing:
                return
            self._preparing = True
        threading.Thread(target=self._prepare, name="prepare", daemon=True).start()

    def _prepare(self) -> None:
        try:
            self.runtime.warm_up()
            importlib.import_module(VETH_MODULE)
        except Exception as error:  # noqa: BLE001 - only a head start: the start itself does it again and reports
            log.warning("preparing for a container start failed: %s", error)
        finally:
            with self._prepare_guard:
                self._preparing = False

    def close(self) -> None:
        self.runtime.close()  # stops the fork server only: containers keep running

    # -- in flight ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def in_flight(self, container_id: str) -> Iterator[None]:
        with self._in_flight_lock:
            self._in_flight[container_id] += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight[container_id] -= 1
                if not self._in_flight[container_id]:
                    del self._in_flight[container_id]
                self._in_flight_lock.notify_all()

    def in_flight_ids(self) -> set[str]:
        with self._in_flight_lock:
            return set(self._in_flight)

    def wait_not_in_flight(self, container_id: str, timeout: float) -> None:
        with self._in_flight_lock:
            self._in_flight_lock.wait_for(lambda: container_id not in self._in_flight, timeout)

    # -- start / remove ---------------------------------------------------------------------------
    def start(self, record: dict, net: dict, image_id: str, lowers: list[str], tty: bool = False,
              stdin: bool = False, security: dict | None = None) -> ContainerInfo:
        """Start the container of *record* on the layer dirs *lowers* (bottom first) with its veth
        attached before its command runs; *net* is its network's record. *tty*/*stdin* (run -t/-i):
        the container waits briefly for `attach` (runtime/supervisor.py). *security*: ``cap_add``,
        ``cap_drop``, ``seccomp`` of the spec (run --cap-add/--cap-drop/--security-opt)."""
        names = tuple(dict.fromkeys((record["name"], hostname_of(record["name"]))))
        spec = ContainerSpec(id=record["id"], name=record["name"], image=image_id, command=record["command"],
                             env=record["env"], workdir=record["workdir"], limits=record["limits"],
                             hosts=[(record["ip"], names)], resolv_conf=resolv_conf(net), tty=tty, stdin=stdin,
                             user=record.get("user", ""), stop_signal=record.get("stop_signal", 15),
                             mounts=self.spec_mounts(record.get("mounts") or []), **(security or {}))
        volumes = mounts.volume_names(record.get("mounts") or [])
        with self.volumes_locked(volumes):
            for name in volumes:
                self.ensure_volume(name)
            return self.runtime.start(spec, lowers, before_exec=self._attach(record, net))

    def create_and_start(self, raft: RaftNode, spec: ContainerSpec, lowers: list[str], create: Callable[[dict], dict],
                         session: Session) -> tuple[dict, ContainerInfo]:
        """Start *spec*'s container with one raft commit: ``create(observed)`` replicates its record
        (create_container with ``observed`` = running, this pid, this start time) once its processes
        exist and before its command runs; then the veth and /etc/hosts get the address the commit
        allocated (/etc/resolv.conf its network's DNS server), and the command runs. Raises
        ``RecordOfAnotherAttempt`` (the container made here already torn down) when the commit answers
        with the record an earlier attempt of the same request created. Anything else that fails
        removes the container and, if made, its record."""
        made: dict = {}

        def before_exec(pid: int) -> dict:
            started_at = time.time()
            made["record"] = record = create({"state": "running", "pid": pid, "started_at": started_at})
            if record["id"] != spec.id:
                raise RecordOfAnotherAttempt(record)
            # the local replica applied it
            net = raft.read(lambda state: copy.deepcopy(state.networks[record["network"]]))
            self._attach(record, net)(pid)
            names = tuple(dict.fromkeys((record["name"], hostname_of(record["name"]))))
            named = dataclasses.replace(spec, hosts=[(record["ip"], names)])
            self.runtime.update_etc_file(record["id"], "hosts", named.hosts_file())
            if resolv_conf(net):
                self.runtime.update_etc_file(record["id"], "resolv.conf", resolv_conf(net))
            return {"started_at": started_at}

        volumes = sorted({m.name for m in spec.mounts if m.kind == mounts.VOLUME})
        with self.volumes_locked(volumes):
            # a volume's directory is made here before the commit says the volume is this host's
            # (the commit refuses another host's volume); a directory made for a refused run goes
            made_dirs = [name for name in volumes if self.ensure_volume(name)]
            try:
                info = self.runtime.start(spec, lowers, before_exec=before_exec)
            except RecordOfAnotherAttempt:
                raise
            except BaseException:
                record = made.get("record")
                if record is not None and record["id"] == spec.id:
                    self.undo_create(raft, record, session)
                elif record is None:
                    for name in made_dirs:
                        self.delete_volume(name)
                raise
        return made["record"], info

    def restart(self, record: dict, net: dict) -> ContainerInfo:
        """Start *record*'s ended container again (its restart policy), its veth attached before exec;
        the runtime keeps its spec (security options included) from the first start."""
        return self.runtime.restart(record["id"], before_exec=self._attach(record, net))

    # -- volumes ----------------------------------------------------------------------------------
    def volume_path(self, name: str) -> str:
        """Where volume *name* keeps its data on this host (the data dir's real path: init compares
        the path it opened with this one)."""
        return layout.volume_dir(mounts.check_volume_name(name), os.path.realpath(self.cfg.data_dir))

    def spec_mounts(self, record_mounts: list[dict]) -> list[dict]:
        """A record's mounts as the runtime takes them: a volume by its directory on this host."""
        return [{"kind": m["type"], "target": m["target"], "readonly": m.get("readonly", False),
                 **({"source": self.volume_path(m["source"]), "name": m["source"]} if m["type"] == mounts.VOLUME
                    else {"source": m["source"]})} for m in record_mounts]

    @contextlib.contextmanager
    def volumes_locked(self, names: list[str]) -> Iterator[None]:
        """Hold the locks of these volumes (in name order: two starts never wait on each other in turn)."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                with self._volume_locks_guard:
                    lock = self._volume_locks.setdefault(name, threading.RLock())
                stack.enter_context(lock)
            yield

    def ensure_volume(self, name: str) -> bool:
        """Make the volume's directory (empty: the first start seeds it from the image) if it is
        missing; True if this call made it."""
        os.makedirs(layout.volumes_dir(self.cfg.data_dir), 0o700, exist_ok=True)
        try:
            os.mkdir(self.volume_path(name), 0o755)
        except FileExistsError:
            return False
        return True

    def delete_volume(self, name: str) -> bool:
        """Delete the volume's data on this host (call after its record is gone); False if it had none.
        Renamed away first, so a start that creates the volume anew meanwhile gets an empty one."""
        with self.volumes_locked([name]):
            path = self.volume_path(name)
            if not os.path.lexists(path):
                return False
            trash = os.path.join(os.path.dirname(path), f".removed-{secrets.token_hex(4)}-{name}")
            os.rename(path, trash)
        shutil.rmtree(trash)
        return True

    def _attach(self, record: dict, net: dict) -> Callable[[int], None]:
        from .overlay.veth import attach_container  # netlink: imported when a container first needs it (or prepare)

        network = NetworkSpec(record["network"], net["vni"], net.get("gateway"), bool(net.get("internal")))
        endpoint = EndpointSpec(record["id"], record["network"], record["ip"], record["host"], self.cfg.address)
        mtu = overlay_mtu(self._underlay_mtu())

        def attach(pid: int) -> None:
            attach_container(pid, endpoint, network, mtu, guard=self._guard)
            if self.before_exec is not None:
                try:
                    self.before_exec(record, net)
                except AgentError as error:  # the reconcile pass retries and reports it
                    log.warning("container %s starts before its network's DNS: %s", record["name"], error)
        return attach

    @contextlib.contextmanager
    def image_layers(self, diff_ids: list[str]) -> Iterator[list[str]]:
        """The lower dirs of an image with these layers, safe from `prune` until the block ends."""
        with self.image_lock:
            lowers = self.images.lower_dirs(diff_ids)
            for path in lowers:
                self._pinned[path] = self._pinned.get(path, 0) + 1
        try:
            yield lowers
        finally:
            with self.image_lock:
                for path in lowers:
                    self._pinned[path] -= 1
                    if not self._pinned[path]:
                        del self._pinned[path]

    def layers_changed(self) -> None:
        """Layers were imported or pruned: the cluster's placement must know what this host holds."""
        if self.on_layers_changed is not None:
            self.on_layers_changed()

    def prune_images(self) -> list[str]:
        """Remove the layers no container of this host uses (whatever its state)."""
        with self.image_lock:
            return self.images.prune(self.runtime.lower_dirs_in_use() | set(self._pinned))

    def remove_local(self, container_id: str, force: bool = True) -> None:
        """Remove the container and its veth from this host (nothing replicated)."""
        from .overlay.veth import detach_container

        try:
            self.runtime.remove(container_id, force=force)
        except ContainerNotFound:
            pass
        detach_container(container_id, guard=self._guard)

    def undo_create(self, raft: RaftNode, record: dict, session: Session, local: bool = True) -> None:
        """Take back what a run that failed to start did: the container (*local*: it was started on
        this host), its address, and its network if this run created it (the network's created_at
        is the container's then)."""
        name = record["name"]
        if local:
            try:
                self.remove_local(record["id"])
            except ContainerError:
                from .overlay.veth import detach_container

                log.exception("cleanup of failed container %s", name)
                detach_container(record["id"], guard=self._guard)
        try:
            replicate(raft, "remove_container", {"name": name}, session)
            state = raft.snapshot()["state"]
            network = state["networks"].get(record["network"])
            if network is not None and network["created_at"] == record["created_at"] and not network["ips"]:
                replicate(raft, "delete_network", {"cidr": record["network"]}, session)
            for volume in mounts.volume_names(record.get("mounts") or []):  # the ones this run created
                known = state.get("volumes", {}).get(volume)
                if known is not None and known["created_at"] == record["created_at"] and not any(
                        volume in mounts.volume_names(c.get("mounts") or []) for c in state["containers"].values()):
                    replicate(raft, "remove_volume", {"name": volume, "host": record["host"]}, session)
                    if local:
                        self.delete_volume(volume)
        except (RaftError, OSError):
            log.exception("could not release %s after a failed start", name)

    def report(self, raft: RaftNode, record: dict, info: ContainerInfo | None, session: Session,
               observed: dict | None = None) -> None:
        """Replicate what the runtime shows of *record*'s container (or *observed*), if it changed."""
        observed = observed if observed is not None else observed_from(info)
        if _same_observation(observed, record.get("observed", {})):
            return
        try:
            replicate(raft, "container_observed", {"name": record["name"], "host": self.cfg.node,
                                                   "observed": observed, "ts": time.time()}, session)
        except RaftError as error:
            log.warning("could not report container %s: %s", record["name"], error)
