"""Every path the agent uses on a host, and the defaults of its settings: the one source of truth.

Both sides import this module: the agent (config, runtime, tools) and the workstation (`up`,
`down`, the CLI), which must agree on where things live. It is pure data — no I/O at import.
The directories are fixed for a real host; the agent config may move ``data_dir``, ``run_dir``
and ``log_dir`` (tests do), and everything under them follows through the helpers below.
"""
from __future__ import annotations

import os

DATA_DIR = "/var/lib/cantainer"    # raft journal, members, images, containers, volumes, bundles (persistent)
CONFIG_DIR = "/etc/cantainer"      # agent.json and the cluster secret (0600)
RUN_DIR = "/run/cantainer"         # socket, pid file, per-boot container records (tmpfs)
LOG_DIR = "/var/log/cantainer"     # agent.log

CONFIG_FILE = f"{CONFIG_DIR}/agent.json"
SECRET_FILE = f"{CONFIG_DIR}/secret"
REGISTRIES_NAME = "registries"  # beside the secret: credentials of registries hosts pull from (0600)
BUNDLES_DIR = f"{DATA_DIR}/bundles"
MEMBERS_FILE = f"{DATA_DIR}/members.json"  # the agent's record of raft membership: "has state"
SOCKET_PATH = f"{RUN_DIR}/agent.sock"
PID_FILE = f"{RUN_DIR}/agent.pid"
UNIT_NAME = "cantainer-agent.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT_NAME}"
RESOLV_CONF = "/etc/resolv.conf"  # the host's resolvers: where the agent's DNS server forwards other names

# Names inside the three directories (joined by the helpers below).
SOCKET_NAME = "agent.sock"
PID_NAME = "agent.pid"
LOG_NAME = "agent.log"
LOCK_NAME = "agent.lock"
MEMBERS_NAME = "members.json"
JOURNAL_NAME = "raft.journal"
TERM_NAME = "raft.term"
DUMP_NAME = "raft.dump"
IMAGES_NAME = "images"
CONTAINERS_NAME = "containers"
INCOMING_NAME = "incoming"  # images/incoming: where the workstation stages layer blobs
VOLUMES_NAME = "volumes"  # volumes/NAME: a named volume's data (0755 root; the volumes dir 0700)

# Defaults of the cluster settings (inventory [cluster] and the agent config share them).
RAFT_PORT = 7480
JOIN_PORT = 7481
VXLAN_PORT = 4789  # IANA
VOTERS = 3
HEARTBEAT_INTERVAL = 2.0  # seconds; stretched in large clusters (cluster/liveness.py)
RESCHEDULE_AFTER = 30.0  # seconds a host is down before its service tasks are placed elsewhere
MIN_PYTHON = (3, 10)
CONTAINER_PIDS = 1024  # a container's task limit unless `run --pids` says otherwise (a fork bomb stops there)
MIN_FREE_BYTES = 1 << 30  # no new container while less is free where containers and the raft journal live


def bundle_dir(digest: str) -> str:
    """Where a pushed agent bundle lives: the zip itself, or the directory it was unpacked into (see
    cantainer/bundle.py); `python3 PATH` runs either, so `ps` shows its name."""
    return f"{BUNDLES_DIR}/cantainer_agent-{digest[:16]}"


def images_dir(data_dir: str = DATA_DIR) -> str:
    return os.path.join(data_dir, IMAGES_NAME)


def image_incoming_dir(data_dir: str = DATA_DIR) -> str:
    return os.path.join(images_dir(data_dir), INCOMING_NAME)


def containers_state_dir(data_dir: str = DATA_DIR) -> str:
    return os.path.join(data_dir, CONTAINERS_NAME)


def volumes_dir(data_dir: str = DATA_DIR) -> str:
    return os.path.join(data_dir, VOLUMES_NAME)


def volume_dir(name: str, data_dir: str = DATA_DIR) -> str:
    """Where the named volume *name* keeps its data on its host (the name is checked by mounts.py)."""
    return os.path.join(volumes_dir(data_dir), name)


def containers_run_dir(run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, CONTAINERS_NAME)


def registry_auth_file(registry: str, config_dir: str = CONFIG_DIR) -> str:
    """Where a host keeps the credentials of *registry* ("host:port") for ``pull = "hosts"``."""
    return os.path.join(config_dir, REGISTRIES_NAME, registry.replace(":", "_") + ".json")
