"""Host-side tools the workstation runs over SSH exec channels: `logs`, `exec`, `attach`, `teardown`.

They are short-lived, single-threaded processes (so `exec` may fork safely) that read the
container's records on disk through the runtime; they need no agent to be running, so logs and
exec keep working while the agent restarts.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import termios
import time
import tty

from . import layout
from .config import ConfigError, load_config
from .netfilter import NftError
from .runtime import ContainerError, Runtime, logfile

DEFAULT_CONFIG = layout.CONFIG_FILE
FOLLOW_INTERVAL = 0.1


def open_runtime(config_path: str) -> Runtime:
    cfg = load_config(config_path)
    return Runtime(state_dir=layout.containers_state_dir(cfg.data_dir), run_dir=layout.containers_run_dir(cfg.run_dir))


def volumes_dir_of(config_path: str) -> str:
    return layout.volumes_dir(load_config(config_path).data_dir)


class _Output:
    """Writes records to our stdout or stderr as their stream says; with time stamps, each line
    starts with its record's time (per stream, so a partial line is not stamped twice)."""

    def __init__(self, timestamps: bool) -> None:
        self.timestamps = timestamps
        self._line_start = {"stdout": True, "stderr": True}

    def write(self, records) -> None:
        for record in (logfile.lines(records) if self.timestamps else records):
            data = record.data
            if self.timestamps and record.time and self._line_start.get(record.stream, True):
                data = record.time.encode() + b" " + data
            self._line_start[record.stream] = record.data.endswith(b"\n")
            view = memoryview(data)
            fd = 2 if record.stream == "stderr" else 1
            while view:
                view = view[os.write(fd, view):]


def logs(runtime: Runtime, container_id: str, follow: bool = False, exit_code: bool = False, tail: int | None = None,
         since: str = "", timestamps: bool = False, streams: tuple[str, ...] = logfile.STREAMS) -> int:
    """Copy the log, each stream to ours (stdout to stdout, stderr to stderr). *tail*: only the last
    lines; *since*: only records at or after that time (RFC 3339 UTC as the log writes it: the
    strings compare as times); with *follow*, keep copying until the container has exited."""
    wanted = set(streams)

    def selected(records):
        return [r for r in records if r.stream in wanted and (not since or r.time >= since)]

    output = _Output(timestamps)
    reader = logfile.Reader(runtime.logs(container_id))
    try:
        records = selected(reader.read())
        if tail is not None:
            records = list(logfile.lines(records))[-tail:] if tail > 0 else []
        output.write(records)
        while follow:
            running = runtime.inspect(container_id).running
            output.write(selected(reader.read()))  # after an exit: what it wrote just before
            if not running:
                break
            time.sleep(FOLLOW_INTERVAL)
    except BrokenPipeError:
        return 0  # whoever reads us went away
    finally:
        reader.close()
    if exit_code:
        info = runtime.wait(container_id)
        return info.exit_code if info.exit_code is not None else 255
    return 0


def _winsize_frame(fd: int) -> bytes | None:
    from .runtime.attach import encode_winsize

    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return encode_winsize(size.lines, size.columns)


def attach(runtime: Runtime, container_id: str) -> int:
    """Relay this process's stdio to a tty/stdin container's attach socket; return its exit code.

    Run by `cantainer run -i/-t` over SSH (with -t its stdio is sshd's pty: made raw here so ^C
    and ^D reach the container's own terminal as bytes). Window size is sent at once and on
    SIGWINCH. The container's stdout and stderr come to ours. Output ends when the container's
    output ends; the exit code comes from exit.json.
    """
    from .runtime.attach import FRAME_DATA, FRAME_EOF, OutputFrames, encode_frame

    info = runtime.inspect(container_id)
    sock = runtime.attach(container_id)
    use_stdin = bool(info.spec and info.spec.stdin)
    is_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if is_tty else None
    frames = OutputFrames()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGWINCH, lambda *_: None)  # a handler, so the wakeup fd sees it
    try:
        if is_tty:
            tty.setraw(0)
        frame = _winsize_frame(0 if is_tty else 1)
        if frame is not None:
            sock.sendall(frame)
        readers = [sock, wake_r] + ([0] if use_stdin else [])
        while True:
            ready = select.select(readers, [], [])[0]
            if wake_r in ready:
                try:
                    while os.read(wake_r, 64):
                        pass
                except BlockingIOError:
                    pass
                frame = _winsize_frame(0 if is_tty else 1)
                if frame is not None:
                    sock.sendall(frame)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    sock.sendall(encode_frame(FRAME_DATA, data))
                else:
                    sock.sendall(encode_frame(FRAME_EOF))
                    readers.remove(0)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                for fd, payload in frames.feed(data):
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view):]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the container ended while we were sending it input
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        sock.close()
    info = runtime.wait(container_id)
    return info.exit_code if info.exit_code is not None else 255


PROBE_TIMED_OUT = 124  # as coreutils' timeout


def probe(state_dir: str, run_dir: str, container_id: str, argv: list[str], timeout: float) -> int:
    """A health check: *argv* in the container, killed after *timeout* seconds (exit 124). Run by the
    agent as its own short-lived process (forking from the agent's threads is unsafe); its stdout
    and stderr are the check's output."""
    try:
        runtime = Runtime(state_dir=state_dir, run_dir=run_dir)
        return runtime.exec(container_id, argv, timeout=timeout)
    except TimeoutError:
        print(f"health check exceeded its timeout of {timeout:g} s", file=sys.stderr)
        return PROBE_TIMED_OUT
    except (ContainerError, OSError) as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return 125


STOPPED_BY_DOWN = "stopped by down"


def volumes_on_disk(volumes_dir: str) -> list[str]:
    """The named volumes whose data is in *volumes_dir* (leftovers of a removal excluded)."""
    try:
        return sorted(e.name for e in os.scandir(volumes_dir) if e.is_dir(follow_symlinks=False)
                      and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def teardown(runtime: Runtime, stop_timeout: float = 10.0, remove: bool = True, volumes_dir: str | None = None) -> int:
    """For `cantainer down`: stop every running container gracefully (SIGTERM, SIGKILL after
    *stop_timeout*, all at once), recording "stopped by down" as the reason; with *remove* (--purge)
    remove them all; then every overlay device and our nftables table. Prints {"stopped", "removed",
    "volumes"} as one JSON line: *volumes* names the volumes in *volumes_dir*, which --purge deletes
    with the data directory (the workstation says so).

    Run only after the agent has stopped, or it would start reconciling them back."""
    from concurrent.futures import ThreadPoolExecutor

    from .controllers.netfilter import remove_table
    from .netfilter import NftUnavailable
    from .overlay import DesiredHost, KernelGuard, OverlayReconciler

    running = [info for info in runtime.list() if info.running]
    if running:
        with ThreadPoolExecutor(max_workers=min(64, len(running))) as pool:
            list(pool.map(lambda info: runtime.stop(info.id, timeout=stop_timeout, reason=STOPPED_BY_DOWN), running))
    removed = 0
    if remove:
        for info in runtime.list():
            runtime.remove(info.id, force=True)
            removed += 1
    nothing = DesiredHost.build("teardown", "127.0.0.1", 1500, [], [])
    OverlayReconciler(lambda _observed: nothing, KernelGuard()).reconcile()
    try:
        remove_table()  # last: while devices existed, the rules guarded them
    except NftUnavailable:
        pass  # no agent ever ran here without libnftables, so there is no table
    volumes = volumes_on_disk(volumes_dir) if volumes_dir else []
    print(json.dumps({"stopped": len(running), "removed": removed, "volumes": volumes}), flush=True)
    return 0


def main(command: str, args) -> int:
    try:
        runtime = open_runtime(args.config)
        if command == "logs":
            streams = tuple(s for s in logfile.STREAMS if getattr(args, s)) or logfile.STREAMS
            return logs(runtime, args.id, args.follow, args.exit_code, args.tail, args.since, args.timestamps,
                        streams)
        if command == "teardown":
            return teardown(runtime, args.stop_timeout, args.remove, volumes_dir_of(args.config))
        if command == "attach":
            return attach(runtime, args.id)
        # -t: the terminal's type, as sshd set it from the client's (docker exec -t sets TERM too)
        env = {"TERM": os.environ["TERM"]} if args.tty and os.environ.get("TERM") else None
        return runtime.exec(args.id, args.argv, env=env)
    except (ConfigError, ContainerError, NftError, OSError) as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return 125
