"""Host-side tools the workstation runs over SSH exec channels: `logs` and `exec`.

They are short-lived, single-threaded processes (so `exec` may fork safely) that read the
container's records on disk through the runtime; they need no agent to be running, so logs and
exec keep working while the agent restarts.
"""
from __future__ import annotations

import os
import sys
import time

from .config import ConfigError, load_config
from .runtime import ContainerError, Runtime

DEFAULT_CONFIG = "/etc/cantainer/agent.json"
FOLLOW_INTERVAL = 0.1


def open_runtime(config_path: str) -> Runtime:
    cfg = load_config(config_path)
    return Runtime(state_dir=os.path.join(cfg.data_dir, "containers"), run_dir=os.path.join(cfg.run_dir, "containers"))


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


def teardown(runtime: Runtime) -> int:
    """Remove every container of this host and every overlay device (for `cantainer down`).

    Run only after the agent has stopped, or it would start reconciling them back."""
    from .overlay import DesiredHost, OverlayReconciler

    for info in runtime.list():
        runtime.remove(info.id, force=True)
    nothing = DesiredHost.build("teardown", "127.0.0.1", 1500, [], [])
    OverlayReconciler(lambda: nothing).reconcile()
    return 0


def main(command: str, args) -> int:
    try:
        runtime = open_runtime(args.config)
        if command == "logs":
            return logs(runtime, args.id, args.follow, args.exit_code)
        if command == "teardown":
            return teardown(runtime)
        return runtime.exec(args.id, args.argv)
    except (ConfigError, ContainerError, OSError) as error:
        print(f"cantainer: error: {error}", file=sys.stderr)
        return 125
