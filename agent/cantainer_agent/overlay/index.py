"""This host's desired overlay, kept up to date per changed record (an index beside DesiredHost).

``DesiredHost.build`` over the whole cluster state cost ~50 ms of CPU at 1000 containers, and ran
on every host after every commit. :class:`DesiredIndex` holds one :class:`EndpointSpec` per
container, the networks, the nodes' addresses and the FDB/neighbour entries this host wants, and
updates them from the records a pass names as changed (controllers/view.py): a remote container
coming or going touches its two entries only.

:meth:`DesiredIndex.update` returns the entry keys it touched when only remote entries changed,
or None when this host's own devices may change (a local container or local network came or went,
a VNI or a node's address changed, or a record the index cannot place without a full check): the
caller then diffs everything against :meth:`desired`, which equals ``DesiredHost.build`` of the
same state (tested).
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Callable, Iterable

from .model import DesiredHost, EndpointSpec, FdbEntry, NeighEntry, NetworkSpec, vxlan_name

GONE_STATES = ("exited", "dead")


def network_spec(cidr: str, record: dict | None) -> NetworkSpec | None:
    """A network record of the state as the overlay sees it (None: no such network)."""
    if record is None:
        return None
    return NetworkSpec(cidr, record["vni"], record.get("gateway"), bool(record.get("internal")))
FdbKey = tuple[str, str]    # (device, MAC)
NeighKey = tuple[str, str]  # (device, IP)


def endpoint_inputs(record: dict, nodes: dict) -> tuple | None:
    """What a container's endpoint is made of, or None when it is no endpoint: it exited or died
    (no veth left to reach), or its host left the cluster (nothing to forward to)."""
    if record.get("observed", {}).get("state") in GONE_STATES:
        return None
    host = nodes.get(record["host"])
    if host is None:
        return None
    return record["id"], record["network"], record["ip"], record["host"], host["address"]


class DesiredIndex:
    def __init__(self, node: str, vtep: str, underlay_mtu: int, vxlan_port: int) -> None:
        self.node, self.vtep, self.underlay_mtu, self.vxlan_port = node, vtep, underlay_mtu, vxlan_port
        self._inputs: dict[str, tuple] = {}          # container name -> endpoint_inputs
        self._eps: dict[str, EndpointSpec] = {}      # container name -> its endpoint
        self._nets: dict[str, NetworkSpec] = {}      # cidr -> network
        self._net_objs: dict[str, ipaddress.IPv4Network] = {}
        self._local: Counter[str] = Counter()        # cidr -> local endpoints on it
        self._local_nets: frozenset[str] = frozenset()  # the networks DesiredHost.build keeps here
        self._node_addr: dict[str, str] = {}         # node -> underlay address
        self._by_ip: dict[tuple[str, str], str] = {}  # (cidr, ip) -> container name
        self.fdb: dict[FdbKey, FdbEntry] = {}        # wanted remote entries
        self.neigh: dict[NeighKey, NeighEntry] = {}
        self._desired: DesiredHost | None = None
        self.version = 0  # moves on with every change to what is wanted

    # ------------------------------------------------------------------ building

    def rebuild(self, state: dict) -> None:
        """Everything from *state* (endpoints whose inputs did not change are kept, not rebuilt)."""
        old = self._eps
        self._inputs, self._eps, self._by_ip, self._local = {}, {}, {}, Counter()
        self._nets, self._net_objs = {}, {}
        for cidr, record in state["networks"].items():
            self._set_network(cidr, record)
        nodes = state["nodes"]
        self._node_addr = {name: record["address"] for name, record in nodes.items()}
        for name, record in state["containers"].items():
            inputs = endpoint_inputs(record, nodes)
            if inputs is None:
                continue
            ep = old.get(name)
            if ep is None or self._inputs_of(ep) != inputs:
                ep = EndpointSpec(*inputs)
            self._add(name, inputs, ep)
        self._recompute_entries()

    def update(self, state: dict, changes: Iterable[tuple[str, str]]) -> set[tuple[str, str, str]] | None:
        """Apply the changed records; see the module docstring for the answer."""
        touched: set[tuple[str, str, str]] = set()
        full = False
        containers, nodes = state["containers"], state["nodes"]
        names: set[str] = set()
        for section, key in changes:
            if section == "containers":
                names.add(key)
            elif section == "networks":
                record = state["networks"].get(key)
                if self._nets.get(key) != network_spec(key, record):  # not an address taken or freed
                    full |= self._local[key] > 0
                    self._set_network(key, record)
            elif section == "nodes":
                address = nodes.get(key, {}).get("address")
                if address == self._node_addr.get(key):
                    continue  # a heartbeat
                # the node came, left or moved: its containers' endpoints change (rare: a scan)
                if address is None:
                    self._node_addr.pop(key, None)
                else:
                    self._node_addr[key] = address
                names.update(n for n, r in containers.items() if r["host"] == key)
                names.update(n for n, inputs in self._inputs.items() if inputs[3] == key)
        changed = []
        for name in names:
            record = containers.get(name)
            inputs = endpoint_inputs(record, nodes) if record is not None else None
            if inputs != self._inputs.get(name):
                changed.append((name, inputs))
        for name, _inputs in changed:  # all removals first: an address may move in one batch
            old_ep = self._eps.get(name)
            if old_ep is not None:
                full |= old_ep.node == self.node
                touched |= self._entry_keys(old_ep)
                self._remove(name)
        for name, inputs in changed:
            if inputs is None:
                continue
            ep = EndpointSpec(*inputs)
            if ep.node == self.node:
                full = True
            elif not self._placeable(name, ep):
                full = True  # let DesiredHost.build judge (and explain) it
            self._add(name, inputs, ep)
            touched |= self._entry_keys(ep)
        if not touched and not full:
            return set()
        self._desired = None
        self.version += 1
        if full:
            self._recompute_entries()
            return None
        for kind, dev, key in touched:
            self._refresh_entry(kind, dev, key)
        return touched

    # ------------------------------------------------------------------ reading

    def desired(self) -> DesiredHost:
        if self._desired is None:
            self._desired = DesiredHost.build(self.node, self.vtep, self.underlay_mtu, self._nets.values(),
                                              self._eps.values(), vxlan_port=self.vxlan_port)
        return self._desired

    def desired_later(self) -> Callable[[], DesiredHost]:
        """:meth:`desired` as of now, built when (and in whichever thread) it is first asked for:
        the index itself keeps changing in the loop's thread."""
        if self._desired is not None:
            done = self._desired
            return lambda: done
        nets, eps = tuple(self._nets.values()), tuple(self._eps.values())
        node, vtep, mtu, port = self.node, self.vtep, self.underlay_mtu, self.vxlan_port
        return lambda: DesiredHost.build(node, vtep, mtu, nets, eps, vxlan_port=port)

    # ------------------------------------------------------------------ inside

    @staticmethod
    def _inputs_of(ep: EndpointSpec) -> tuple:
        return ep.container_id, ep.network_cidr, ep.ip, ep.node, ep.vtep

    def _set_network(self, cidr: str, record: dict | None) -> None:
        if record is None:
            self._nets.pop(cidr, None)
            self._net_objs.pop(cidr, None)
            return
        spec = network_spec(cidr, record)
        self._nets[spec.cidr] = spec
        self._net_objs[spec.cidr] = spec.network

    def _add(self, name: str, inputs: tuple, ep: EndpointSpec) -> None:
        self._inputs[name], self._eps[name] = inputs, ep
        self._by_ip.setdefault((ep.network_cidr, ep.ip), name)
        if ep.node == self.node:
            self._local[ep.network_cidr] += 1

    def _remove(self, name: str) -> None:
        ep = self._eps.pop(name)
        del self._inputs[name]
        if self._by_ip.get((ep.network_cidr, ep.ip)) == name:
            del self._by_ip[(ep.network_cidr, ep.ip)]
        if ep.node == self.node:
            self._local[ep.network_cidr] -= 1
            if self._local[ep.network_cidr] <= 0:
                del self._local[ep.network_cidr]

    def _placeable(self, name: str, ep: EndpointSpec) -> bool:
        """The checks DesiredHost.build makes, for one remote endpoint (before it is added)."""
        net = self._net_objs.get(ep.network_cidr)
        return (net is not None and ipaddress.IPv4Address(ep.ip) in net and ep.vtep != self.vtep
                and self._by_ip.get((ep.network_cidr, ep.ip)) in (None, name))

    def _wanted(self, ep: EndpointSpec) -> bool:
        return ep.node != self.node and ep.network_cidr in self._local_nets

    def _entry_keys(self, ep: EndpointSpec) -> set[tuple[str, str, str]]:
        """The keys of the entries *ep* is (or was) wanted for here: none off this host's networks."""
        net = self._nets.get(ep.network_cidr)
        if net is None or ep.network_cidr not in self._local_nets:
            return set()
        dev = vxlan_name(net.vni)
        return {("fdb", dev, ep.mac), ("neigh", dev, ep.ip)}

    def _refresh_entry(self, kind: str, dev: str, key: str) -> None:
        """Recompute one wanted entry from the endpoints (the one holding that MAC or IP now)."""
        cidr = next((c for c, n in self._nets.items() if vxlan_name(n.vni) == dev), None)
        table = self.fdb if kind == "fdb" else self.neigh
        table.pop((dev, key), None)
        if cidr is None:
            return
        ip = key if kind == "neigh" else _ip_of_mac(key)
        name = self._by_ip.get((cidr, ip)) if ip is not None else None
        ep = self._eps.get(name) if name is not None else None
        if ep is None or not self._wanted(ep):
            return
        if kind == "fdb":
            self.fdb[(dev, ep.mac)] = FdbEntry(dev, ep.mac, ep.vtep)
        else:
            self.neigh[(dev, ep.ip)] = NeighEntry(dev, ep.ip, ep.mac)

    def _recompute_entries(self) -> None:
        self._desired = None
        self.version += 1
        desired = self.desired()  # build's own selection: exactly what a full diff wants
        vni = {net.cidr: net.vni for net in desired.networks}
        self._local_nets = frozenset(vni)
        self.fdb = {}
        self.neigh = {}
        for ep in desired.remote:
            dev = vxlan_name(vni[ep.network_cidr])
            self.fdb[(dev, ep.mac)] = FdbEntry(dev, ep.mac, ep.vtep)
            self.neigh[(dev, ep.ip)] = NeighEntry(dev, ep.ip, ep.mac)


def _ip_of_mac(mac: str) -> str | None:
    """The IPv4 address a ``02:42:a:b:c:d`` MAC was derived from (model.mac_for_ip)."""
    parts = mac.split(":")
    if len(parts) != 6 or parts[:2] != ["02", "42"]:
        return None
    try:
        return ".".join(str(int(p, 16)) for p in parts[2:])
    except ValueError:
        return None
