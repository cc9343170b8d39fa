"""Host-side tools the workstation runs over SSH exec channels: `logs`, `exec`, `attach`, `teardown`.

They are short-lived, single-threaded processes (so `exec` may fork safely) that read the
container's records on disk through the runtime; they need no agent to be running, so logs and
exec keep working while the agent restarts.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import termios
import time
import tty

from . import layout
from .config import ConfigError, load_config
from .runtime import ContainerError, Runtime

DEFAULT_CONFIG = layout.CONFIG_FILE
FOLLOW_INTERVAL = 0.1


def open_runtime(config_path: str) -> Runtime:
    cfg = load_config(config_path)
    return Runtime(state_dir=layout.containers_state_dir(cfg.data_dir), run_dir=layout.containers_run_dir(cfg.run_dir))


def logs(runtime: Runtime, container_id: str, follow: bool, exit_code: bool) -> int:
    """Copy the log to stdout; with follow, keep copying until the container has exited."""
    out = sys.stdout.buffer
    with open(runtime.logs(container_id), "rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not follow:
                break
            info = runtime.inspect(container_id)
            if not info.running:
                rest = log.read()  # what the container wrote just before it exited
                out.write(rest)
                out.flush()
                break
            time.sleep(FOLLOW_INTERVAL)
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
    SIGWINCH. Output ends when the container's output ends; the exit code comes from exit.json.
    """
    from .runtime.attach import FRAME_DATA, FRAME_EOF, encode_frame

    info = runtime.inspect(container_id)
    sock = runtime.attach(container_id)
    use_stdin = bool(info.spec and info.spec.stdin)
    is_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if is_tty else None
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
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]
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


def teardown(runtime: Runtime) -> int:
    """Remove every container of this host and every overlay device (for `cantainer down`).

    Run only after the agent has stopped, or it would start reconciling them back."""
    from .overlay import DesiredHost, KernelGuard, OverlayReconciler

    for info in runtime.list():
        runtime.remove(info.id, force=True)
    nothing = DesiredHost.build("teardown", "127.0.0.1", 1500, [], [])
    OverlayReconciler(lambda _observed: nothing, KernelGuard()).reconcile()
    return 0


def main(command: str, args) -> int:
    try:
        runtime = open_runtime(args.config)
        if command == "logs":
            return logs(runtime, args.id, args.follow, args.exit_code)
        if command == "teardown":
            return teardown(runtime)
        if command == "attach":
            return attach(runtime, args.id)
        return runtime.exec(args.id, args.argv)
    except (ConfigError, ContainerError, OSError) as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return 125
