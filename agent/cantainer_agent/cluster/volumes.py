"""Named volumes in the replicated state (pure; a mixin of ClusterState, state.py).

A volume record is ``{name, host, created_at, labels, empty?}``: its data lives on *host* only (under
layout.volumes_dir), so a container that mounts it is recorded on that host or refused. A volume
is created by its first use (``create_container`` with a volume mount: on the container's host) or
by ``create_volume``; ``remove_volume`` refuses while any container record mounts it; its host
reports whether it holds anything (``volume_observed``: ``empty``, absent until first seen). Container
records keep their mounts as ``mounts: [{type, source, target, readonly}]`` (absent when none), so
snapshots and logs written before volumes existed read the same: no ``volumes`` key is an empty
table, no ``mounts`` key no mounts.
"""
from __future__ import annotations

import copy
from typing import Any

from .. import mounts as M
from ..errors import AlreadyExists, Conflict, NotFound, StateError

MAX_LABELS = 32


def check_labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_LABELS or not all(
            isinstance(k, str) and 0 < len(k) <= 128 and isinstance(v, str) and len(v) <= 256
            for k, v in value.items()):
        raise StateError(f"labels must be at most {MAX_LABELS} string pairs")
    return dict(value)


def check_mounts(value: Any) -> list[dict]:
    try:
        return M.check_all(value)
    except M.MountError as error:
        raise StateError(str(error)) from None


def users_of(containers: dict, name: str) -> list[str]:
    """The containers whose records mount volume *name*, by name."""
    return sorted(c["name"] for c in containers.values() if name in M.volume_names(c.get("mounts") or []))


class VolumeCommands:
    """``create_volume``, ``remove_volume`` and the volume part of ``create_container``."""

    VOLUME_COMMANDS = ("create_volume", "remove_volume", "volume_observed")
    volumes: dict[str, dict]
    nodes: dict[str, dict]
    containers: dict[str, dict]

    def apply_create_volume(self, name: str, host: str, ts: float, labels: dict | None = None) -> dict:
        """Record a volume on *host* (idempotent on the same host); returns it with ``created``."""
        try:
            M.check_volume_name(name)
        except M.MountError as error:
            raise StateError(str(error)) from None
        labels = check_labels(labels)
        if not isinstance(host, str) or host not in self.nodes:
            raise StateError(f"host {host!r} is not a member of this cluster")
        if type(ts) not in (int, float) or ts != ts or ts < 0:
            raise StateError("ts must be a non-negative number")
        existing = self.volumes.get(name)
        if existing is not None:
            if existing["host"] != host:
                raise AlreadyExists(f"volume {name} already exists on {existing['host']} — a volume lives on one "
                                    "host; pick another name or use it there")
            return {**copy.deepcopy(existing), "created": False}
        self.volumes[name] = {"name": name, "host": host, "created_at": float(ts), "labels": labels}
        return {**copy.deepcopy(self.volumes[name]), "created": True}

    def apply_remove_volume(self, name: str, host: str | None = None) -> dict:
        """Forget a volume; refused while a container record mounts it, and (*host* given: the agent
        that deletes its data) when it lives on another host. Returns the removed record."""
        if not isinstance(name, str) or name not in self.volumes:
            raise NotFound(f"no volume named {name!r} — see `cantainer volume ls`")
        if host is not None and self.volumes[name]["host"] != host:
            raise Conflict(f"volume {name} is on {self.volumes[name]['host']}, not on {host}: its data can only be "
                           "deleted there")
        users = users_of(self.containers, name)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise Conflict(f"volume {name} is in use by {shown} — remove {'it' if len(users) == 1 else 'them'} "
                           "first (`cantainer rm`)")
        return self.volumes.pop(name)

    def apply_volume_observed(self, name: str, host: str, empty: bool) -> bool:
        """The volume's host says whether its directory holds anything; returns whether that changed.
        From any other host it is refused (another host's directory of that name is not this volume)."""
        if not isinstance(name, str) or name not in self.volumes:
            raise NotFound(f"no volume named {name!r}")
        record = self.volumes[name]
        if record["host"] != host:
            raise Conflict(f"volume {name} is on {record['host']}, not on {host}")
        if not isinstance(empty, bool):
            raise StateError("empty must be true or false")
        changed = record.get("empty") is not empty
        record["empty"] = empty
        return changed

    def _volume_mounts(self, spec: dict, host: str) -> list[dict]:
        """The mounts of a container spec, checked against the volumes: each named volume must be on
        *host* (or not exist yet). Changes nothing."""
        mounts = check_mounts(spec.get("mounts"))
        for name in M.volume_names(mounts):
            existing = self.volumes.get(name)
            if existing is not None and existing["host"] != host:
                raise Conflict(f"volume {name} lives on {existing['host']}, not {host}: its data stays on its host — "
                               f"run the container on {existing['host']} (--host {existing['host']}, or leave "
                               "--host out)")
        return mounts

    def _volume_pin(self, mounts: list[dict], ts: float, down_after: float, movable: bool) -> tuple[str | None, list]:
        """Where a task with these mounts must run (its volumes' host, or None), and the volumes that
        may instead be made again wherever it is placed: with *movable* (a service's ``move-empty``
        policy), a volume its host reported empty, on a host that is down (no heartbeat for
        *down_after* at *ts*)."""
        hosts, moving = set(), []
        for name in M.volume_names(mounts):
            record = self.volumes.get(name)
            if record is None:
                continue
            node = self.nodes.get(record["host"])
            down = node is None or ts - node.get("heartbeat", 0.0) >= down_after
            if movable and down and record.get("empty") is True:
                moving.append(name)
            else:
                hosts.add(record["host"])
        if len(hosts) > 1:
            raise Conflict(f"the volumes live on different hosts ({', '.join(sorted(hosts))}): one container can "
                           "only mount volumes of one host")
        return (hosts.pop() if hosts else None), moving

    def _claim_volumes(self, mounts: list[dict], host: str, ts: float) -> None:
        """Create the volumes the mounts name that do not exist yet (on *host*); after _volume_mounts."""
        for name in M.volume_names(mounts):
            if name not in self.volumes:
                self.volumes[name] = {"name": name, "host": host, "created_at": float(ts), "labels": {}}


def slot_mounts(template: list[dict], slot: str) -> list[dict]:
    """A service task's mounts: each volume of the template becomes the slot's own, ``NAME.SLOT``."""
    return [{**m, "source": f"{m['source']}.{slot}"} if m["type"] == M.VOLUME else dict(m) for m in template]


def volume_host(volumes: dict, mounts: list[dict]) -> str | None:
    """The host a container with these mounts must run on (its volumes'), or None if they name none
    that exists. Placement uses it (run without --host; a service's slot)."""
    hosts = {volumes[name]["host"] for name in M.volume_names(mounts) if name in volumes}
    if len(hosts) > 1:
        raise Conflict(f"the volumes live on different hosts ({', '.join(sorted(hosts))}): one container can only "
                       "mount volumes of one host")
    return hosts.pop() if hosts else None
