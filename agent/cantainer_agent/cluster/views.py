"""Pure views of the replicated state as the API returns them (no internal bookkeeping leaks).

A container whose host is down (no heartbeat for ``liveness.down_after``) and was last seen
running or starting is shown ``unknown`` (like Kubernetes' Unknown pod phase), with the time of
the host's last heartbeat: nobody can tell whether it still runs.

For the networking side (service DNS names, published ports), ``service_endpoints`` lists the
running, healthy tasks of each service on hosts that are up — a retiring task leaves it at once
(its ``drain`` before it is stopped) — and ``published_ports`` what each host must forward.
"""
from __future__ import annotations

from .. import layout
from .liveness import down_after
from .specs import restart_text
from .volumes import users_of

MAYBE_RUNNING = ("running", "created")


def down_hosts(state: dict, now: float, heartbeat_interval: float, self_node: str) -> dict[str, float]:
    """{node: its last heartbeat} for every registered node that counts as down (never *self_node*)."""
    window = down_after(heartbeat_interval, len(state["nodes"]))
    return {name: rec["heartbeat"] for name, rec in state["nodes"].items()
            if name != self_node and now - rec["heartbeat"] >= window}


def container_view(record: dict, down: dict[str, float] | None = None, networks: dict | None = None) -> dict:
    """The API's view of a container record; *down* is ``down_hosts`` (its host down: ``unknown``);
    *networks* (the state's) names its network."""
    observed = record.get("observed", {})
    state, reason, since = observed.get("state", "unknown"), observed.get("reason"), None
    if down and record["host"] in down and state in MAYBE_RUNNING:
        state, reason, since = "unknown", f"host {record['host']} is down", down[record["host"]]
    return {
        "name": record["name"], "id": record["id"], "host": record["host"], "network": record["network"],
        "network_name": ((networks or {}).get(record["network"]) or {}).get("name"),
        "ip": record["ip"], "mac": record["mac"], "image": record["image"],
        "image_digest": record.get("image_digest") or None, "user": record.get("user", ""),
        "ports": record.get("ports", []), "publish": record.get("publish", []), "command": record["command"],
        "desired": record["desired"], "state": state, "exit_code": observed.get("exit_code"), "reason": reason,
        "oom_killed": reason == "oom-killed", "unknown_since": since, "auto_remove": bool(record.get("auto_remove")),
        "started_at": observed.get("started_at"), "finished_at": observed.get("finished_at"),
        "created_at": record["created_at"],
        "restart": restart_text(record.get("restart")), "restart_count": observed.get("restart_count", 0),
        "restarts": observed.get("restarts", []),
        "health": health_view(record), "service": record.get("service"), "slot": record.get("slot"),
        "version": record.get("version"), "placed": bool(record.get("placed")),
        "retiring": bool(record.get("retire")) or bool(record.get("superseded_at")),
        "mounts": record.get("mounts", []),
    }


def volume_views(state: dict, down: dict[str, float] | None = None) -> list[dict]:
    """Every volume: its host (and whether that host is down), the containers that mount it, where its
    data is on the host (the default data directory's path) and whether it holds anything (None:
    its host has not said yet)."""
    views = []
    for name, volume in sorted(state.get("volumes", {}).items()):
        views.append({"name": name, "host": volume["host"], "created_at": volume["created_at"],
                      "labels": volume.get("labels", {}), "containers": users_of(state["containers"], name),
                      "mountpoint": layout.volume_dir(name), "host_down": bool(down and volume["host"] in down),
                      "empty": volume.get("empty")})
    return views


def health_view(record: dict) -> dict | None:
    """None without a health check; else {status, since, streak, output} (starting until reported)."""
    if not record.get("health"):
        return None
    reported = (record.get("observed") or {}).get("health")
    return dict(reported) if reported else {"status": "starting", "since": None, "streak": 0, "output": ""}


def serving(record: dict, down: dict[str, float]) -> bool:
    """Whether a task takes traffic: running, healthy (if checked), not retiring, its host up."""
    if record.get("retire") or record["host"] in down:
        return False
    if (record.get("observed") or {}).get("state") != "running":
        return False
    health = health_view(record)
    return health is None or health["status"] == "healthy"


def service_endpoints(state: dict, down: dict[str, float]) -> dict[str, list[dict]]:
    """{service name: [{task, ip, host}]} of the tasks that serve (``serving``), for DNS."""
    out: dict[str, list[dict]] = {name: [] for name in state.get("services", {})}
    for record in sorted(state["containers"].values(), key=lambda r: r["name"]):
        service = record.get("service")
        if service in out and serving(record, down):
            out[service].append({"task": record["name"], "ip": record["ip"], "host": record["host"]})
    return out


def published_ports(state: dict, down: dict[str, float]) -> dict[str, list[dict]]:
    """{host: [{service, task, ip, host_port, container_port, protocol}]}: what each host forwards to
    its own serving tasks (a service's published ports open on every host running one of them)."""
    out: dict[str, list[dict]] = {}
    for record in sorted(state["containers"].values(), key=lambda r: r["name"]):
        if not record.get("publish") or not serving(record, down):
            continue
        for entry in record["publish"]:
            out.setdefault(record["host"], []).append({"service": record.get("service"), "task": record["name"],
                                                       "ip": record["ip"], **entry})
    return out


def network_views(state: dict) -> list[dict]:
    """Networks by name: cidr, vni, gateway (None: a network from before gateways), internal, hosts, containers."""
    views = []
    for cidr, network in sorted(state["networks"].items(), key=lambda item: item[1]["name"]):
        members = [state["containers"][name] for name in network["ips"].values() if name in state["containers"]]
        views.append({"name": network["name"], "cidr": cidr, "vni": network["vni"], "gateway": network["gateway"],
                      "internal": network["internal"], "containers": len(members),
                      "hosts": sorted({c["host"] for c in members}), "created_at": network["created_at"]})
    return views


def build_status(*, node: str, cluster: str, snap: dict, now: float, heartbeat_interval: float,
                 voters: int) -> dict:
    """Pure: turn a raft snapshot (RaftNode.snapshot()) into the ``status`` result."""
    state = snap["state"]
    leader_addr = snap["leader"]
    members = set(snap["members"])
    down = down_hosts(state, now, heartbeat_interval, node)
    nodes = []
    seen_addrs = set()
    for name in sorted(state["nodes"]):
        rec = state["nodes"][name]
        raft_addr = rec["raft_addr"]
        seen_addrs.add(raft_addr)
        if raft_addr == snap["self"]:
            role = snap["role"]
        elif raft_addr == leader_addr:
            role = "leader"
        elif raft_addr in members:
            role = "follower"
        else:
            role = "standby"  # registered, not a voter: a non-voting member (controllers/voters.py)
        is_self = name == node
        up = name not in down
        nodes.append({
            "name": name,
            "address": rec["address"],
            "raft_addr": raft_addr,
            "role": role,
            "state": "up" if up else "down",
            "version": rec["version"],
            "bundle": rec["bundle"],
            "last_seen": now if is_self else rec["heartbeat"],
            "overlay": rec.get("overlay"),
            "joined_at": rec["joined_at"],
            "registered": True,
        })
    for addr in sorted(members - seen_addrs):  # added to raft, not registered yet
        is_self = addr == snap["self"]
        nodes.append({
            "name": node if is_self else addr, "address": addr.rpartition(":")[0], "raft_addr": addr,
            "role": snap["role"] if is_self else ("leader" if addr == leader_addr else "follower"),
            "state": "up" if is_self else "down", "version": None, "bundle": None,
            "last_seen": now if is_self else None, "joined_at": None, "registered": False,
        })
    leader_name = None
    for n in nodes:
        if n["raft_addr"] == leader_addr and n["registered"]:
            leader_name = n["name"]
    return {
        "node": node,
        "cluster": cluster,
        "leader": leader_name,
        "term": snap["term"],
        "commit_index": snap["commit_index"],
        "raft": {
            "role": snap["role"],
            "self": snap["self"],
            "leader_addr": leader_addr,
            "members": snap["members"],
            "connected": snap["connected"],
            "has_quorum": snap["has_quorum"],
            "last_applied": snap["last_applied"],
            "log_len": snap["log_len"],
            "ready": snap["ready"],
            "voters": voters,
        },
        "nodes": nodes,
        "networks": network_views(state),
        "containers": [container_view(record, down, state["networks"])
                       for _, record in sorted(state["containers"].items())],
        "volumes": volume_views(state, down),
    }
