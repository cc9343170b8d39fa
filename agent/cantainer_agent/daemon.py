"""Process lifecycle of the agent: start-up, readiness, heartbeats, signals, shutdown.

``python3 -m cantainer_agent run --config PATH [--daemon]``

Foreground by default (for systemd; ``READY=1`` is sent to ``$NOTIFY_SOCKET`` when set).
``--daemon`` detaches (fork, setsid, fork; stdin ``/dev/null``; stdout/stderr appended to
``log_dir/agent.log``; pid file ``run_dir/agent.pid`` written atomically). The launching process
waits on a readiness pipe and exits 0 once the child has its API socket, join port and raft
port bound (after joining, if it had to), or prints one error line and exits 1.

Start-up decision:
  1. ``data_dir/members.json`` exists -> restart with exactly those members (see raft.py for why
     the persisted list, not the configured seeds, must be used);
  2. else a raft journal exists (members file lost) -> rejoin through the seeds;
  3. else ``bootstrap`` -> if a seed already answers as a cluster member, join it (a wiped
     bootstrap host must not found a second cluster); otherwise start a one-node cluster;
  4. else join through the seeds.
Then start SyncObj, serve the join port, and register + heartbeat every ``heartbeat_interval``
(stretched in large clusters, see liveness.py).

Single instance: ``data_dir/agent.lock`` is flock()ed for the life of the process.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Callable

from . import __version__, protocol
from .api import AfterReply, ApiServer, build_status
from .config import AgentConfig, ConfigError, read_secret
from .fsutil import atomic_write, ensure_dir
from .liveness import heartbeat_period
from .join import JoinError, JoinServer, JoinService, join_cluster, request as join_request
from .containers import LocalContainers
from .network import HostNetwork
from .reconcile import ReconcileLoop
from .service import ClusterMethods
from .raft import RaftError, RaftNode, journal_path, load_members, save_members

log = logging.getLogger("cantainer_agent")

READY_TIMEOUT = 90.0  # launcher's wait; start-up itself is bounded well below this
JOIN_DEADLINE = 45.0
REGISTER_RETRY = 0.5  # seconds between attempts to register (once per start; status shows us down until then)


class StartupError(Exception):
    """Start-up failed; the message is the one line shown to the operator."""


class _Interrupted(Exception):
    pass


class Agent:
    def __init__(self, cfg: AgentConfig, secret: bytes):
        self.cfg = cfg
        self._secret = secret
        self.raft: RaftNode | None = None
        self.stop_event = threading.Event()
        self._lock_fd: int | None = None
        self._api: ApiServer | None = None
        self._join_server: JoinServer | None = None
        self._hb_thread: threading.Thread | None = None
        self._pid_written = False
        self.start_mode = ""
        self.reconcile_loop: ReconcileLoop | None = None
        self.containers: LocalContainers | None = None

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
        self._write_pid()
        self.network = HostNetwork(cfg, lambda: self.raft.snapshot())
        self.containers = LocalContainers(cfg, lambda: self.raft, self.network, self._trigger_reconcile)
        self.reconcile_loop = ReconcileLoop([self.containers, self.network])
        try:
            self._api = ApiServer(cfg.socket_path, self._handlers())
        except OSError as exc:
            raise StartupError(f"cannot bind the API socket {cfg.socket_path}: {exc.strerror or exc}") from None
        self._api.start()
        try:
            self._join_server = JoinServer(cfg.address, cfg.join_port, self._secret,
                                    JoinService(lambda: self.raft, cfg.cluster, cfg.node).handle)
        except OSError as exc:
            raise StartupError(str(exc.strerror or exc)) from None
        self._join_server.start()
        _check_port_free(cfg.address, cfg.raft_port)

        partners = self._decide_partners()
        raft = RaftNode(cluster=cfg.cluster, self_addr=cfg.raft_addr, partners=partners,
                        data_dir=cfg.data_dir, secret=self._secret, voters=cfg.voters,
                        heartbeat_interval=cfg.heartbeat_interval)
        try:
            raft.start()
        except RaftError as exc:
            raise StartupError(str(exc)) from None
        self.raft = raft
        raft.on_state_change = self.reconcile_loop.trigger
        self.reconcile_loop.start()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._hb_thread.start()
        log.info("agent %s ready: node=%s cluster=%s raft=%s join=%s mode=%s", __version__, cfg.node,
                 cfg.cluster, cfg.raft_addr, cfg.join_addr, self.start_mode)

    def _take_lock(self) -> None:
        path = os.path.join(self.cfg.data_dir, "agent.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                other = _read_pid(self.cfg.pid_file)
                who = f" (pid {other})" if other else ""
                raise StartupError(f"another agent is already running with data_dir {self.cfg.data_dir}{who}") from None
            raise
        self._lock_fd = fd

    def _write_pid(self) -> None:
        atomic_write(self.cfg.pid_file, f"{os.getpid()}\n".encode(), 0o644)
        self._pid_written = True

    def _join_params(self) -> dict:
        cfg = self.cfg
        return {"cluster": cfg.cluster, "node": cfg.node, "address": cfg.address, "raft_addr": cfg.raft_addr,
                "join_addr": cfg.join_addr, "version": __version__, "bundle": cfg.bundle}

    def _join(self) -> list[str]:
        cfg = self.cfg
        try:
            result = join_cluster(cfg.seeds, self._secret, self._join_params(), deadline=JOIN_DEADLINE)
        except JoinError as exc:
            raise StartupError(str(exc)) from None
        members = [m for m in result["members"] if isinstance(m, str)]
        role = "standby" if result.get("role") == "standby" else "voter"  # roles.py
        if role == "voter" and cfg.raft_addr not in members:
            raise StartupError(f"join answer from {result.get('via')} does not list this node {cfg.raft_addr}")
        save_members(cfg.data_dir, cfg.cluster, cfg.raft_addr, members, role=role)
        log.info("joined through %s as %s (already member: %s); voters %s", result.get("via"), role,
                 result.get("already_member"), members)
        return [m for m in members if m != cfg.raft_addr]

    def _decide_partners(self) -> list[str]:
        cfg = self.cfg
        try:
            known = load_members(cfg.data_dir)
        except RaftError as exc:
            raise StartupError(str(exc)) from None
        if known is not None:
            if known.cluster != cfg.cluster:
                raise StartupError(f"{cfg.data_dir} belongs to cluster {known.cluster!r}, not {cfg.cluster!r}")
            if known.self_addr != cfg.raft_addr:
                raise StartupError(f"{cfg.data_dir} was created for raft address {known.self_addr}, now "
                                   f"{cfg.raft_addr}; remove {cfg.data_dir} to join again")
            self.start_mode = "restart"
            return known.partners
        if os.path.exists(journal_path(cfg.data_dir)):
            if not cfg.seeds:
                raise StartupError(f"{cfg.data_dir} has a raft journal but no members.json and no seeds are "
                                   "configured: cannot know the cluster members")
            self.start_mode = "rejoin"
            return self._join()
        if cfg.bootstrap:
            for seed in cfg.seeds:
                try:
                    body = join_request(seed, self._secret, "ping", {}, timeout=1.0)
                except Exception:  # noqa: BLE001 - unreachable seed: nobody there yet
                    continue
                if body.get("ok") and body["result"].get("cluster") == cfg.cluster and body["result"].get("leader"):
                    log.info("bootstrap requested but %s already serves cluster %s: joining it", seed, cfg.cluster)
                    self.start_mode = "join"
                    return self._join()
            save_members(cfg.data_dir, cfg.cluster, cfg.raft_addr, [cfg.raft_addr])
            self.start_mode = "bootstrap"
            return []
        self.start_mode = "join"
        return self._join()

    # ------------------------------------------------------------ heartbeat

    def _heartbeat_loop(self) -> None:
        """Register, then heartbeat every heartbeat_period (liveness.py). A failed heartbeat is not
        retried early: it may still commit, the next one carries the same news, and retrying every
        0.5 s multiplied the writes of a leader that was already behind. A failed registration is
        retried every REGISTER_RETRY: it happens once per start, and the node shows down until it lands."""
        cfg = self.cfg
        registered = False
        last_error = ""
        delay = 0.0
        while not self.stop_event.wait(delay):
            raft = self.raft
            period = heartbeat_period(cfg.heartbeat_interval, len(raft.store.state.nodes) if raft else 1)
            delay = period
            if raft is None:
                continue
            try:
                if not registered:
                    raft.register_node(name=cfg.node, address=cfg.address, join_addr=cfg.join_addr,
                                       version=__version__, bundle=cfg.bundle, timeout=max(3.0, period))
                    registered = True
                    log.info("registered node %s in the cluster state", cfg.node)
                elif not raft.heartbeat(cfg.node, timeout=max(3.0, period), overlay=self.network.summary):
                    registered = False  # our record vanished (removed?): register again
                    delay = 0.0
                last_error = ""
            except RaftError as exc:
                if str(exc) != last_error:
                    log.warning("heartbeat/registration failed: %s", exc)
                    last_error = str(exc)
                if not registered:
                    delay = min(period, REGISTER_RETRY)

    # ------------------------------------------------------------------ API

    def _handlers(self) -> dict[str, Callable[[dict], object]]:
        cfg = self.cfg

        def hello(_params: dict) -> dict:
            return {"agent_version": __version__, "protocol": protocol.PROTOCOL_VERSION, "node": cfg.node,
                    "cluster": cfg.cluster, "pid": os.getpid(), "bundle": cfg.bundle}

        def status(_params: dict) -> dict:
            raft = self.raft
            if raft is None:
                raise protocol.ProtocolError(protocol.UNAVAILABLE, f"agent {cfg.node} is still starting")
            try:
                snap = raft.snapshot()
            except RaftError as exc:
                raise protocol.ProtocolError(protocol.UNAVAILABLE, str(exc)) from None
            return build_status(node=cfg.node, cluster=cfg.cluster, snap=snap, now=time.time(),
                                heartbeat_interval=cfg.heartbeat_interval, voters=cfg.voters)

        def stop(_params: dict) -> AfterReply:
            return AfterReply({"stopping": True}, self.stop_event.set)

        return {"hello": hello, "status": status, "stop": stop, **ClusterMethods(lambda: self.raft).handlers(),
                **self.containers.handlers()}

    def _trigger_reconcile(self) -> None:
        if self.reconcile_loop is not None:
            self.reconcile_loop.trigger()

    # -------------------------------------------------------------- running

    def wait(self) -> int:
        """Block until asked to stop; returns the exit status."""
        while not self.stop_event.wait(0.5):
            raft = self.raft
            if raft is not None and raft._sync is not None and not raft._sync.tick_thread_alive():
                log.error("raft tick thread died; exiting so the supervisor restarts the agent")
                return 1
        return 0

    def shutdown(self) -> None:
        self.stop_event.set()
        for name, fn in (("api", self._api and self._api.stop), ("join", self._join_server and self._join_server.stop)):
            if fn:
                try:
                    fn()
                except Exception:  # noqa: BLE001
                    log.exception("error stopping %s server", name)
        if self._hb_thread is not None:
            self._hb_thread.join(5)
        if self.reconcile_loop is not None:
            self.reconcile_loop.stop()
        if self.containers is not None:
            self.containers.close()  # stops the fork server only: containers keep running
        if self.raft is not None:
            self.raft.stop()
        if self._pid_written and _read_pid(self.cfg.pid_file) == os.getpid():
            try:
                os.unlink(self.cfg.pid_file)
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("agent stopped")


# ---------------------------------------------------------------- helpers


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _check_port_free(host: str, port: int) -> None:
    """Fail before joining if the raft port cannot be bound (a joined member that cannot
    start would hurt the cluster's quorum)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as exc:
        raise StartupError(f"cannot bind the raft port {host}:{port}: {exc.strerror}") from None
    finally:
        s.close()


def setup_logging(log_file: str, to_stderr: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    handlers: list[logging.Handler] = []
    try:
        fh = logging.FileHandler(log_file)
        handlers.append(fh)
        os.chmod(log_file, 0o640)
    except OSError:
        to_stderr = True
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)


def _sd_notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        pass


def run_agent(cfg: AgentConfig, ready: Callable[[str | None], None]) -> int:
    """Start, report readiness (``ready(None)`` or ``ready(error line)``), serve until stopped."""
    agent: Agent | None = None
    started = False

    def on_signal(signum: int, _frame: object) -> None:
        if started and agent is not None:
            agent.stop_event.set()
        else:
            raise _Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        secret = read_secret(cfg.secret_file)
        agent = Agent(cfg, secret)
        agent.start()
        started = True
    except (StartupError, ConfigError) as exc:
        log.error("start-up failed: %s", exc)
        error = str(exc)
    except _Interrupted as exc:
        error = f"interrupted by {exc} during start-up"
    except Exception as exc:  # noqa: BLE001
        log.exception("start-up failed")
        error = f"start-up failed: {type(exc).__name__}: {exc} (see {cfg.log_file})"
    if not started:
        # clean up first, so "exit 1" means nothing is left behind (socket, pid file, ports)
        if agent is not None:
            try:
                agent.shutdown()
            except Exception:  # noqa: BLE001
                log.exception("cleanup after failed start-up")
        ready(error)
        return 1
    ready(None)
    status = agent.wait()
    log.info("shutting down")
    agent.shutdown()
    return status


def run_foreground(cfg: AgentConfig) -> int:
    try:
        ensure_dir(cfg.log_dir, 0o750)
    except OSError:
        pass
    setup_logging(cfg.log_file, to_stderr=True)

    def ready(error: str | None) -> None:
        if error is None:
            _sd_notify("READY=1")
        else:
            print(f"cantainer-agent: error: {error}", file=sys.stderr)

    return run_agent(cfg, ready)


def run_daemon(cfg: AgentConfig) -> int:
    """Detach; the calling process returns 0 once the daemon is ready, else prints one line and returns 1."""
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        os.waitpid(pid, 0)  # the intermediate child exits right after the second fork
        return _await_ready(r, cfg)
    # intermediate child
    try:
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        _daemon_child(cfg, w)
    except BaseException:  # noqa: BLE001
        pass
    os._exit(1)


def _await_ready(r: int, cfg: AgentConfig) -> int:
    buf = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"cantainer-agent: error: agent did not become ready within {READY_TIMEOUT:.0f} s "
                  f"(see {cfg.log_file})", file=sys.stderr)
            return 1
        ready_fds, _, _ = select.select([r], [], [], left)
        if not ready_fds:
            continue
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
    os.close(r)
    text = buf.decode("utf-8", "replace").strip()
    if text.startswith("READY"):
        return 0
    if text.startswith("ERROR "):
        print(f"cantainer-agent: error: {text[6:].splitlines()[0]}", file=sys.stderr)
    else:
        print(f"cantainer-agent: error: agent exited during start-up (see {cfg.log_file})", file=sys.stderr)
    return 1


def _daemon_child(cfg: AgentConfig, w: int) -> None:
    os.chdir("/")
    os.umask(0o022)
    reported = False

    def ready(error: str | None) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        msg = "READY\n" if error is None else "ERROR " + error.replace("\n", " ") + "\n"
        try:
            os.write(w, msg.encode())
        except OSError:
            pass
        os.close(w)

    try:
        ensure_dir(cfg.log_dir, 0o750)
        fd = os.open(cfg.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except OSError as exc:
        ready(f"cannot open log file {cfg.log_file}: {exc.strerror}")
        os._exit(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(null)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    setup_logging(cfg.log_file, to_stderr=False)
    status = 1
    try:
        status = run_agent(cfg, ready)
    except BaseException:  # noqa: BLE001
        logging.getLogger("cantainer_agent").exception("agent crashed")
        ready("agent crashed during start-up (see log)")
    finally:
        logging.shutdown()
    os._exit(status)
