"""The agent's wiring: every part is built here and handed what it needs (no globals).

Start order: directories, the single-instance lock and pid file, the API socket and the join port
(bound first, to fail fast), raft partners (startup.py: restart, rejoin, bootstrap or join), the
raft node, then the control loops (netfilter, dns, containers, overlay; voters; services) and the
heartbeat thread, which registers this node in the cluster state and then heartbeats every period
(cluster/liveness.py).
Single instance: ``data_dir/agent.lock`` is flock()ed for the life of the process.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time

from .. import __version__, layout, raftkey
from ..api import containers as api_containers
from ..api import images as api_images
from ..api import networks as api_networks
from ..api import services as api_services
from ..api import stacks as api_stacks
from ..api import system as api_system
from ..api import volumes as api_volumes
from ..api.errors import mapped
from ..api.requests import Reads
from ..api.server import ApiServer
from ..cluster.liveness import heartbeat_period
from ..cluster.state import ClusterState
from ..config import AgentConfig, forget_founding
from ..consensus import RaftConfig, RaftError, RaftNode
from ..consensus.writes import Session, replicate
from ..controllers.containers import ContainersController
from ..controllers.dns import DnsController, LiveTable
from ..controllers.health import HealthMonitor
from ..controllers.loop import ControllerLoop
from ..controllers.netfilter import NetfilterController
from ..controllers.overlay import OverlayController
from ..controllers.services import ServicesController
from ..controllers.view import LocalView
from ..controllers.volumes import VolumesController
from ..controllers.voters import VotersController
from ..dns import DnsServer, read_resolv_conf
from ..fsutil import atomic_write, ensure_dir
from ..join.server import JoinServer, JoinService
from ..layout import LOCK_NAME, RESOLV_CONF
from ..netfilter import NftError, nft_available
from ..overlay import KernelGuard
from ..workload import Workload, host_capacity
from .startup import StartupError, check_port_free, decide_partners

log = logging.getLogger("cantainer_agent")

REGISTER_RETRY = 0.5  # seconds between attempts to register (once per start; status shows us down until then)
VOTERS_PERIOD = 0.5   # seconds between two looks at who votes, on the leader (elsewhere VOTERS_IDLE)
VOTERS_IDLE = 2.0     # a follower only probes after 5 s without a leader; a standby does nothing
SERVICES_PERIOD = 0.5  # seconds between two passes of the services controller on the leader (elsewhere
                       # VOTERS_IDLE: it acts on the leader only, so a new leader's first pass may wait that)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Agent:
    def __init__(self, cfg: AgentConfig, secret: bytes):
        self.cfg = cfg
        self._secret = secret
        self.raft: RaftNode | None = None
        self.stop_event = threading.Event()
        self.start_mode = ""
        self._lock_fd: int | None = None
        self._pid_written = False
        self._api: ApiServer | None = None
        self._join_server: JoinServer | None = None
        self._hb_thread: threading.Thread | None = None
        self.loop: ControllerLoop | None = None
        self._voters_loop: ControllerLoop | None = None
        self._services_loop: ControllerLoop | None = None
        self.containers: ContainersController | None = None
        self.workload: Workload | None = None
        self.overlay: OverlayController | None = None
        self._layers_dirty = False
        self._layers_session = Session.new(f"layers@{cfg.node}")
        self._layers_lock = threading.Lock()
        self.dns: DnsServer | None = None
        self._names: LiveTable | None = None

    # ------------------------------------------------------------ start-up

    def start(self) -> None:
        cfg = self.cfg
        try:
            ensure_dir(cfg.data_dir, 0o700)
            ensure_dir(cfg.run_dir, 0o755)
            ensure_dir(cfg.log_dir, 0o750)
        except OSError as exc:
            raise StartupError(f"cannot create directory {exc.filename}: {exc.strerror}") from None
        self._take_lock()
        atomic_write(cfg.pid_file, f"{os.getpid()}\n".encode(), 0o644)
        self._pid_written = True
        # Without nftables the VXLAN port would take frames from anyone on the underlay: refuse.
        missing = nft_available()
        if missing is not None:
            raise StartupError(f"nftables is required to protect the overlay: {missing}")
        try:
            netfilter = NetfilterController(cfg.address, cfg.vxlan_port, node=cfg.node)
        except NftError as exc:
            raise StartupError(str(exc)) from None

        guard = KernelGuard()
        self.overlay = OverlayController(cfg, guard, self._snapshot)
        self.workload = Workload(cfg, guard, lambda: self.overlay.underlay_mtu, self.trigger)
        self.workload.on_layers_changed = self._report_layers
        health = HealthMonitor(layout.containers_state_dir(cfg.data_dir), layout.containers_run_dir(cfg.run_dir),
                               self.trigger)
        self.containers = ContainersController(cfg.node, self.workload, lambda: self.raft, self.trigger,
                                               cfg.reschedule_after, health)
        volumes = VolumesController(cfg.node, self.workload, lambda: self.raft)
        # netfilter first in every pass: its table is in place before the overlay's devices
        self._names = LiveTable(self._read)
        self.dns = DnsServer(self._names, lambda: read_resolv_conf(RESOLV_CONF))
        dns = DnsController(cfg.node, self.dns)
        self.workload.before_exec = dns.serve_now
        view = LocalView(self.current_raft)  # the loop's copy of the state, patched per changed record
        self.loop = ControllerLoop("reconcile", [netfilter, dns, self.containers,
                                                 self.overlay, volumes], view.read)
        voters = VotersController(lambda: self.raft, self._secret, voters=cfg.voters,
                                  heartbeat_interval=cfg.heartbeat_interval, join_port=cfg.join_port)
        self._voters_loop = ControllerLoop(
            "voters", [voters], self._status, nice=False,
            period=lambda: VOTERS_PERIOD if self._leading() else VOTERS_IDLE)
        services = ServicesController(cfg.node, lambda: self.raft, heartbeat_interval=cfg.heartbeat_interval,
                                      reschedule_after=cfg.reschedule_after)
        self._services_loop = ControllerLoop("services", [services], self._leader_snapshot,
                                             period=lambda: SERVICES_PERIOD if self._leading() else VOTERS_IDLE)
        try:
            self._api = ApiServer(cfg.socket_path, self._handlers())
        except OSError as exc:
            raise StartupError(f"cannot bind the API socket {cfg.socket_path}: {exc.strerror or exc}") from None
        self._api.start()
        try:
            service = JoinService(lambda: self.raft, cfg.cluster, cfg.node, cfg.voters)
            self._join_server = JoinServer(cfg.address, cfg.join_port, self._secret, service.handle,
                                           is_member=netfilter.is_member)
        except OSError as exc:
            raise StartupError(str(exc.strerror or exc)) from None
        self._join_server.start()
        check_port_free(cfg.address, cfg.raft_port)

        start = decide_partners(cfg, self._secret)
        self.start_mode = start.mode
        if (cfg.bootstrap or cfg.initial_voters) and cfg.path:  # the node has state now (members.json)
            try:
                if forget_founding(cfg.path):
                    log.info("founding keys dropped from %s: this node has raft state now", cfg.path)
            except (OSError, ValueError) as exc:  # harmless: the next `up` rewrites the file
                log.warning("could not drop the founding keys from %s: %s", cfg.path, exc)
        raft = RaftNode(RaftConfig(cluster=cfg.cluster, self_addr=cfg.raft_addr, data_dir=cfg.data_dir,
                                   secret=self._secret, partners=tuple(start.partners),
                                   elect_early=start.elect_early, key_file=raftkey.key_file(cfg.secret_file)),
                       fsm=ClusterState)
        try:
            raft.start()
        except RaftError as exc:
            raise StartupError(str(exc)) from None
        try:  # before the API can start a container here: the table guards its first bridge
            netfilter.sync(raft.snapshot())
        except (NftError, RaftError) as exc:
            log.warning("netfilter: first pass failed (the control loop retries): %s", exc)
        self.raft = raft
        raft.on_state_change = self._state_changed
        self.loop.start()
        self._voters_loop.start()
        self._services_loop.start()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._hb_thread.start()
        log.info("agent %s ready: node=%s cluster=%s raft=%s join=%s mode=%s", __version__, cfg.node,
                 cfg.cluster, cfg.raft_addr, cfg.join_addr, self.start_mode)

    def _take_lock(self) -> None:
        path = os.path.join(self.cfg.data_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                other = read_pid(self.cfg.pid_file)
                who = f" (pid {other})" if other else ""
                raise StartupError(f"another agent is already running with data_dir {self.cfg.data_dir}{who}") from None
            raise
        self._lock_fd = fd

    def _snapshot(self) -> dict:
        if self.raft is None:
            raise RaftError("raft is not running yet")
        return self.raft.snapshot()

    def _read(self, fn):
        if self.raft is None:
            raise RaftError("raft is not running yet")
        return self.raft.read(fn)

    def _state_changed(self) -> None:
        """In raft's tick thread, when a commit changed the state: only signal."""
        if self._names is not None:
            self._names.invalidate()
        if self.loop is not None:
            self.loop.notify_commit()  # a pass that may look at the changed records only

    def _status(self) -> dict:
        if self.raft is None:
            raise RaftError("raft is not running yet")
        return self.raft.status()

    def _leader_snapshot(self) -> dict:
        """The services loop's view: the whole state on the leader when there is a service or a task
        to look after, else the raft status alone (cheap: no copy of the state)."""
        status = self._status()
        if status["role"] != "leader" or not self.raft.read(
                lambda state: bool(state.services) or any("service_id" in c for c in state.containers.values())):
            return status
        return self.raft.snapshot()

    def current_raft(self) -> RaftNode | None:
        return self.raft

    def _leading(self) -> bool:
        return self.raft is not None and self.raft.leading

    def trigger(self) -> None:
        if self.loop is not None:
            self.loop.trigger()

    def _handlers(self) -> dict:
        get_raft = self.current_raft  # the node appears after the API starts serving
        reads = Reads(get_raft, self._secret)
        handlers = {
            **api_system.handlers(self.cfg, get_raft, self.stop_event.set, reads),
            **api_networks.handlers(get_raft, reads),
            **api_stacks.handlers(get_raft, reads),
            **api_images.handlers(self.workload),
            **api_containers.ContainerHandlers(self.cfg.node, self.workload, get_raft, self.trigger,
                                               reads, self.cfg.heartbeat_interval).handlers(),
            **api_services.ServiceHandlers(self.cfg.node, get_raft, reads, self.cfg.heartbeat_interval).handlers(),
            **api_volumes.VolumeHandlers(self.cfg.node, self.workload, get_raft, reads,
                                         self.cfg.heartbeat_interval).handlers(),
        }
        return {name: mapped(handler) for name, handler in handlers.items()}

    # ------------------------------------------------------------ heartbeat

    def _heartbeat_loop(self) -> None:
        """Register, then heartbeat every heartbeat_period (cluster/liveness.py). A failed heartbeat
        is not retried early: it may still commit, the next one carries the same news, and retrying
        every 0.5 s multiplied the writes of a leader that was already behind. A failed registration
        is retried every REGISTER_RETRY: it happens once per start, and the node shows down until then."""
        cfg = self.cfg
        registered = False
        last_error = ""
        delay = 0.0
        nodes = 1
        session = Session.new(f"heartbeat@{cfg.node}")  # at most once each, like every write
        while not self.stop_event.wait(delay):
            raft = self.raft
            delay = period = heartbeat_period(cfg.heartbeat_interval, nodes)
            if raft is None:
                continue
            try:
                nodes = raft.read(lambda state: len(state.nodes))
                timeout = max(3.0, period)
                if not registered:
                    raft.apply("register_node", {
                        "name": cfg.node, "address": cfg.address, "raft_addr": cfg.raft_addr,
                        "join_addr": cfg.join_addr, "version": __version__, "bundle": cfg.bundle,
                        "ts": time.time(), "labels": dict(cfg.labels), "capacity": host_capacity(),
                        "layers": self.workload.images.list() if self.workload is not None else []},
                        timeout=timeout, session=session.next())
                    registered = True
                    self._layers_dirty = False
                    log.info("registered node %s in the cluster state", cfg.node)
                else:
                    args = {"name": cfg.node, "ts": time.time()}
                    summary = self.overlay.summary if self.overlay is not None else None
                    if summary is not None:
                        args["overlay"] = summary
                    if not raft.apply("heartbeat", args, timeout=timeout, session=session.next()):
                        registered = False  # our record vanished (removed?): register again
                        delay = 0.0
                    elif self._layers_dirty:
                        self._report_layers()
                last_error = ""
            except RaftError as exc:
                if str(exc) != last_error:
                    log.warning("heartbeat/registration failed: %s", exc)
                    last_error = str(exc)
                if not registered:
                    delay = min(period, REGISTER_RETRY)

    def _report_layers(self) -> None:
        """Tell the cluster which image layers this host holds (placement needs them there). Best
        effort: a failure is retried with the next heartbeat."""
        raft, workload = self.raft, self.workload
        if raft is None or workload is None:
            self._layers_dirty = True
            return
        with self._layers_lock:
            try:
                replicate(raft, "node_layers", {"name": self.cfg.node, "layers": workload.images.list()},
                          self._layers_session)
                self._layers_dirty = False
            except RaftError as exc:
                self._layers_dirty = True
                log.warning("could not report this host's image layers (retried with the next heartbeat): %s", exc)

    # -------------------------------------------------------------- running

    def wait(self) -> int:
        """Block until asked to stop; returns the exit status."""
        while not self.stop_event.wait(1.0):
            raft = self.raft
            if raft is not None and not raft.running:
                log.error("raft tick thread died; exiting so the supervisor restarts the agent")
                return 1
        return 0

    def shutdown(self) -> None:
        self.stop_event.set()
        for name, fn in (("api", self._api and self._api.stop), ("join", self._join_server and self._join_server.stop)):
            if fn:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - keep shutting the rest down
                    log.exception("error stopping %s server", name)
        if self._hb_thread is not None:
            self._hb_thread.join(5)
        for loop in (self.loop, self._voters_loop, self._services_loop):
            if loop is not None:
                loop.stop()
        if self.containers is not None:
            self.containers.close()
        if self.workload is not None:
            self.workload.close()  # stops the fork server only: containers keep running
        if self.dns is not None:
            self.dns.close()
        if self.raft is not None:
            self.raft.stop()
        if self._pid_written and read_pid(self.cfg.pid_file) == os.getpid():
            try:
                os.unlink(self.cfg.pid_file)
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("agent stopped")

