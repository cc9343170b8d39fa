"""Pure views of the replicated state as the API returns them (no internal bookkeeping leaks)."""
from __future__ import annotations


def container_view(record: dict) -> dict:
    observed = record.get("observed", {})
    return {
        "name": record["name"], "id": record["id"], "host": record["host"], "network": record["network"],
        "ip": record["ip"], "mac": record["mac"], "image": record["image"], "command": record["command"],
        "desired": record["desired"], "state": observed.get("state", "unknown"),
        "exit_code": observed.get("exit_code"), "reason": observed.get("reason"),
        "started_at": observed.get("started_at"), "finished_at": observed.get("finished_at"),
        "created_at": record["created_at"],
    }


def network_views(state: dict) -> list[dict]:
    views = []
    for cidr, network in sorted(state["networks"].items()):
        members = [state["containers"][name] for name in network["ips"].values() if name in state["containers"]]
        views.append({"cidr": cidr, "vni": network["vni"], "containers": len(members),
                      "hosts": sorted({c["host"] for c in members})})
    return views
