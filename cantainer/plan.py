"""`up`'s decisions as pure functions of facts (pyinfra-style): read → plan → change.

A probe reads each host's facts in one round trip (cantainer/remote.py); ``plan_host`` compares
them with what the inventory wants and says what to change — push the bundle? write the secret or
the config? start or restart the agent? — and nothing else decides. ``choose_bootstrap`` says which
host, if any, may found a new cluster. Both are tested from fixtures (tests/workstation/).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cantainer.inventory import Host, Inventory
from cantainer.remote import ProbeResult
from cantainer_agent import layout
from cantainer_agent.config import identity


@dataclass(frozen=True)
class HostPlan:
    host: str
    config: dict            # the agent config the host must have
    push_bundle: bool       # the bundle for the host's platform is not installed there
    write_secret: bool      # the host's secret differs from the cluster's
    write_config: bool      # the host's config differs from `config`
    start: str | None       # "start" (not running), "restart" (running with other settings) or None

    @property
    def touches_files(self) -> bool:
        return self.push_bundle or self.write_secret or self.write_config


def secret_digest(secret: bytes) -> str:
    """What the probe reports for a host holding *secret* (the file ends with a newline)."""
    return hashlib.sha256(secret + b"\n").hexdigest()


def underlay_addresses(inventory: Inventory, probes: dict[str, ProbeResult],
                       registered: dict[str, str]) -> dict[str, str | None]:
    """Every inventory host's underlay address, in inventory order — the same whether or not the host
    answered in this run, so a host that is down never changes the others' seeds (nor restarts them).

    ``underlay_address`` (an IP-literal ``address`` sets it too); for a DNS-named host, the address
    its SSH server saw us on; for one that did not answer, the address the cluster has registered
    for it (*registered*, from a running agent). None when nothing tells."""
    addresses: dict[str, str | None] = {}
    for host in inventory.hosts:
        probe = probes.get(host.name)
        addresses[host.name] = (host.underlay_address or (probe.ssh_server_address if probe else None)
                                or registered.get(host.name))
    return addresses


def desired_config(inventory: Inventory, host: Host, addresses: dict[str, str | None], bundle_digest: str,
                   bootstrap: bool, current: dict | None = None, initial_voters: list[str] | None = None) -> dict:
    """The agent config of *host*: its underlay address, the others' join ports as seeds; a founding
    voter (*bootstrap*) also gets the raft addresses of every *initial_voters* host.

    A host whose address is unknown (None: DNS-named, not answering, never registered) is left out;
    then a host that has a config keeps the seeds it has (plus any newly known), since one of them
    may be the unknown host's."""
    cluster = inventory.cluster
    seeds = [f"{address}:{cluster.join_port}" for name, address in addresses.items()
             if name != host.name and address]
    unknown = any(address is None for name, address in addresses.items() if name != host.name)
    if unknown and current and isinstance(current.get("seeds"), list):
        seeds = list(current["seeds"]) + [seed for seed in seeds if seed not in current["seeds"]]
    voters = [f"{addresses[name]}:{cluster.raft_port}" for name in initial_voters or ()
              if addresses.get(name)] if bootstrap else []
    return {
        "cluster": cluster.name,
        "node": host.name,
        "address": addresses[host.name],
        "raft_port": cluster.raft_port,
        "join_port": cluster.join_port,
        "seeds": seeds,
        "bootstrap": bootstrap,
        **({"initial_voters": voters} if voters else {}),
        "secret_file": layout.SECRET_FILE,
        "voters": cluster.voters,
        "vxlan_port": cluster.vxlan_port,
        "bundle": bundle_digest,
        "data_dir": layout.DATA_DIR,
        "run_dir": layout.RUN_DIR,
        "log_dir": layout.LOG_DIR,
        # only when set, so that configs written before they existed stay unchanged
        **({"labels": dict(host.labels)} if host.labels else {}),
        **({"reschedule_after": cluster.reschedule_after} if cluster.reschedule_after is not None else {}),
    }


def config_changed(current: dict | None, wanted: dict) -> bool:
    """Would an agent running with *current* run differently with *wanted* (``config.identity``:
    `bootstrap` and `initial_voters` matter only before a node has state, so a change of them alone
    needs no restart)?"""
    return current is None or identity(current) != identity(wanted)


def plan_host(inventory: Inventory, host: Host, probe: ProbeResult, *, bundle_digest: str, secret_sha256: str,
              addresses: dict[str, str | None], bootstrap_node: str | None) -> HostPlan:
    founders = founding_voters(inventory, bootstrap_node)
    config = desired_config(inventory, host, addresses, bundle_digest, bootstrap=host.name in founders,
                            current=probe.config, initial_voters=founders)
    write_secret = probe.secret_sha256 != secret_sha256
    if probe.agent_pid is None:
        start = "start"
    elif config_changed(probe.config, config) or write_secret:
        start = "restart"
    else:
        start = None
    return HostPlan(
        host=host.name,
        config=config,
        push_bundle=layout.bundle_dir(bundle_digest).rsplit("/", 1)[1] not in probe.bundles,
        write_secret=write_secret,
        write_config=probe.config != config,
        start=start,
    )


class NoFounder(Exception):
    """No host may found a cluster: none has state, and some could not be probed."""


def choose_bootstrap(inventory: Inventory, probes: dict[str, ProbeResult]) -> str | None:
    """The host that founds the cluster, or None when a cluster exists (some host has state).

    Only when *every* inventory host was probed and none has state: an unreachable host might hold
    the cluster's state, and a wiped or new node must never found a second cluster."""
    if any(probe.has_state for probe in probes.values()):
        return None
    if len(probes) < len(inventory.hosts):
        raise NoFounder("not started: no host has cluster state yet and some hosts are unreachable, so a new "
                        "cluster is not founded")
    for host in inventory.hosts:  # the first inventory host founds it
        if host.name in probes:
            return host.name
    return None


def founding_voters(inventory: Inventory, founder: str | None) -> list[str]:
    """The hosts that start a new cluster together as its voters (etcd's initial-cluster): the first
    ``[cluster] voters`` inventory hosts from the founder on. Every other host joins through the
    seeds as a standby, all at once. Empty when no cluster is founded (a later host joins the usual
    way, one membership change at a time)."""
    if founder is None:
        return []
    names = [host.name for host in inventory.hosts]
    return names[names.index(founder):][:inventory.cluster.voters]

