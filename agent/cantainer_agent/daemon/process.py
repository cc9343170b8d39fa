"""The agent process: foreground (systemd) or detached daemon, readiness, signals, logging.

``python3 -m cantainer_agent run --config PATH [--daemon]``

Foreground by default (for systemd: ``READY=1`` goes to ``$NOTIFY_SOCKET`` when set). ``--daemon``
detaches (daemon/detach.py: fork, setsid, fork, then :func:`daemon_main`; stdin ``/dev/null``;
stdout/stderr appended to ``log_dir/agent.log``; pid file ``run_dir/agent.pid``): the launching
process waits on a readiness pipe and exits 0 once the agent serves its API, join and raft ports
(after joining, if it had to), or prints one error line and exits 1 — with nothing left behind
(socket, pid file, ports). agent.log (0640) rotates at
``LOG_MAX_BYTES`` keeping ``LOG_BACKUPS`` old files; the agent sets its own ``oom_score_adj``.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys
from typing import Callable

from ..config import AgentConfig, ConfigError, read_secret
from ..fsutil import ensure_dir
from .agent import Agent
from .startup import StartupError

log = logging.getLogger("cantainer_agent")

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3  # agent.log.1 .. .3: at most 40 MiB of log whatever arrives
OOM_SCORE_ADJ = -900  # the kernel's OOM killer takes containers first (the zygote resets it to 0 for them)


class _Interrupted(Exception):
    pass


class AgentLogHandler(logging.handlers.RotatingFileHandler):
    """Size-rotated agent.log, every file 0640; with *stdio* (daemon mode) stdout and stderr follow
    the current file, so a stray traceback never grows a rotated one."""

    def __init__(self, path: str, stdio: bool = False, max_bytes: int = LOG_MAX_BYTES) -> None:
        self._stdio = stdio
        super().__init__(path, maxBytes=max_bytes, backupCount=LOG_BACKUPS, encoding="utf-8")

    def _open(self):  # noqa: ANN202 - logging's signature
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)
        stream = os.fdopen(fd, "a", encoding=self.encoding)
        if self._stdio:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        return stream


def protect_from_oom(score: int = OOM_SCORE_ADJ) -> None:
    """Make the kernel's OOM killer pick anything before the agent (and its raft vote)."""
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
            handle.write(str(score))
    except OSError as exc:  # not root: keep the default
        log.warning("cannot set oom_score_adj %d: %s", score, exc.strerror or exc)


def setup_logging(log_file: str, to_stderr: bool, stdio: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    handlers: list[logging.Handler] = []
    try:
        handlers.append(AgentLogHandler(log_file, stdio))
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
    protect_from_oom()
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


def daemon_main(cfg: AgentConfig, w: int) -> None:
    """The detached agent (daemon/detach.py runs it): stdio to the log, readiness on *w*; never returns."""
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
    setup_logging(cfg.log_file, to_stderr=False, stdio=True)
    status = 1
    try:
        status = run_agent(cfg, ready)
    except BaseException:  # noqa: BLE001
        logging.getLogger("cantainer_agent").exception("agent crashed")
        ready("agent crashed during start-up (see log)")
    finally:
        logging.shutdown()
    os._exit(status)
