"""The kernel side of the overlay, through netlink (pyroute2 ``IPRoute``) only — no ``ip``/``bridge``.

* :func:`observe` dumps links, addresses, routes, VXLAN FDB and neighbour entries into an
  :class:`~.model.Observed`;
* :func:`apply` executes a plan; one failing action does not stop the others (the next pass
  retries), deleting something already gone counts as done;
* :func:`reconcile` = observe → desired → diff → apply, serialised by a process-wide lock;
  :class:`OverlayReconciler` (the agent's) observes fully every few seconds and in between
  diffs against the view the last pass left (``plan.fold``), like a controller's informer cache;
* :func:`attach_container` / :func:`detach_container` plug a container's network namespace
  into its network's bridge; :func:`underlay_mtu` reads the MTU under the host's VTEP address.

Every function takes the ``IPRoute`` of the host's network namespace (``ipr``); it defaults to
a fresh ``IPRoute()`` where that makes sense. Tests pass ``IPRoute(netns=...)`` to drive a fake
host from outside.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

from pyroute2 import IPRoute
from pyroute2.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_SETLINK

from . import plan as P
from .model import (
    CONTAINER_IFNAME,
    DesiredHost,
    EndpointSpec,
    FdbEntry,
    LinkState,
    NeighEntry,
    NetworkSpec,
    Observed,
    RouteEntry,
    VxlanInfo,
    host_veth_name,
    owned_kind,
)

log = logging.getLogger(__name__)

AF_INET, AF_INET6 = 2, 10
IFF_UP = 0x1
NTF_SELF = 0x02
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
RTN_UNICAST = 1
RT_TABLE_LOCAL = 255
IFLA_INET_CONF = 1
IPV6_ADDR_GEN_MODE_NONE = P.IPV6_ADDR_GEN_MODE_NONE
# "already gone" answers to a delete: the goal is reached
_GONE = {errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENXIO}

# One reconcile / attach / detach at a time in this process: an attach running between a
# reconcile's observe and apply could otherwise see its fresh veth deleted as an orphan.
_LOCK = threading.RLock()
# Bumped (under _LOCK) by every change to the kernel made outside a reconcile pass: attach and
# detach. An OverlayReconciler's cached view of the kernel is void once it moved.
_kernel_changes = 0
# A full observe at least every RESYNC_MIN seconds, and at most RESYNC_CPU_SHARE of a CPU on it:
# a host with ~1000 remote containers spends ~0.3 s of CPU per observe, so it re-reads the kernel
# every ~15 s and trusts its folded view (plan.fold) in between; a small host every 5 s. Entries
# removed behind our back are restored within that time.
RESYNC_MIN = 5.0
RESYNC_CPU_SHARE = 0.02


def _note_kernel_change() -> None:
    global _kernel_changes
    _kernel_changes += 1

DesiredSource = Union[DesiredHost, Callable[[], DesiredHost]]


class OverlayError(Exception):
    """A request the overlay cannot carry out; the message names the cause."""


# ---------------------------------------------------------------------------------- observe


def observe(ipr: IPRoute) -> Observed:
    """Dump the kernel state the planner compares with the desired state."""
    raw = list(ipr.get_links())
    names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in raw}
    owned = {index: name for index, name in names.items() if owned_kind(name or "")}
    vxlans = {index: name for index, name in owned.items() if owned_kind(name)[0] == "vxlan"}  # type: ignore[index]

    addresses: dict[int, list[str]] = defaultdict(list)
    for msg in ipr.get_addr():
        if msg["index"] in owned:
            addresses[msg["index"]].append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")

    links = {}
    for msg in raw:
        state = _link_state(msg, names, tuple(sorted(addresses.get(msg["index"], ()))))
        links[state.name] = state

    fdb = set()
    for msg in ipr.fdb("dump"):
        if msg["ifindex"] in vxlans and msg["flags"] & NTF_SELF:
            fdb.add(FdbEntry(
                dev=vxlans[msg["ifindex"]],
                mac=(msg.get_attr("NDA_LLADDR") or "").lower(),
                dst=msg.get_attr("NDA_DST"),
                permanent=bool(msg["state"] & NUD_PERMANENT),
                port=msg.get_attr("NDA_PORT"),
                vni=msg.get_attr("NDA_VNI"),
            ))

    neigh = set()
    for msg in ipr.neigh("dump", family=AF_INET):
        if msg["ifindex"] in vxlans:
            mac = msg.get_attr("NDA_LLADDR")
            neigh.add(NeighEntry(
                dev=vxlans[msg["ifindex"]],
                ip=msg.get_attr("NDA_DST"),
                mac=mac.lower() if mac else None,
                permanent=bool(msg["state"] & NUD_PERMANENT),
            ))

    routes = set()
    for msg in ipr.route("dump"):
        oif = msg.get_attr("RTA_OIF")
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        if oif in owned and msg["type"] == RTN_UNICAST and table != RT_TABLE_LOCAL:
            routes.add(RouteEntry(
                dev=owned[oif],
                family=msg["family"],
                table=table,
                dst=msg.get_attr("RTA_DST"),
                dst_len=msg["dst_len"],
                priority=msg.get_attr("RTA_PRIORITY"),
                gateway=msg.get_attr("RTA_GATEWAY"),
            ))
    return Observed(links=links, fdb=frozenset(fdb), neigh=frozenset(neigh), routes=frozenset(routes))


def _link_state(msg, names: dict[int, str], addresses: tuple[str, ...]) -> LinkState:
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    vxlan = None
    if kind == "vxlan":
        data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        if data is not None:
            vxlan = VxlanInfo(
                vni=data.get_attr("IFLA_VXLAN_ID"),
                local=data.get_attr("IFLA_VXLAN_LOCAL"),
                port=data.get_attr("IFLA_VXLAN_PORT"),
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                proxy=bool(data.get_attr("IFLA_VXLAN_PROXY")),
                group=data.get_attr("IFLA_VXLAN_GROUP"),
            )
    master = msg.get_attr("IFLA_MASTER")
    return LinkState(
        name=msg.get_attr("IFLA_IFNAME"),
        index=msg["index"],
        kind=kind,
        mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP),
        master=names.get(master) if master else None,
        addresses=addresses,
        vxlan=vxlan,
        ipv4_forwarding=_ipv4_forwarding(msg),
        ipv6_addr_gen_mode=msg.get_nested("IFLA_AF_SPEC", "AF_INET6", "IFLA_INET6_ADDR_GEN_MODE"),
    )


def _ipv4_forwarding(msg) -> int | None:
    """The device's net.ipv4.conf.<dev>.forwarding from IFLA_AF_SPEC/AF_INET, or None.

    pyroute2 decodes AF_INET as a flat struct whose first word (``dummy``) is the header of the
    IFLA_INET_CONF attribute and whose next word is IPV4_DEVCONF_FORWARDING; check that header
    before trusting the layout.
    """
    try:
        inet = msg.get_nested("IFLA_AF_SPEC", "AF_INET")
        if inet is None or (inet["dummy"] >> 16) & 0x3FFF != IFLA_INET_CONF:
            return None
        return int(inet["forwarding"])
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------ apply


@dataclass
class ReconcileResult:
    actions: list[P.Action] = field(default_factory=list)
    failures: list[tuple[P.Action, Exception]] = field(default_factory=list)
    skipped: tuple[str, ...] = ()
    desired: DesiredHost | None = None
    observed: Observed | None = None  # the kernel after the pass (observed again, or folded)

    @property
    def ok(self) -> bool:
        return not self.failures

    @functools.cached_property
    def health(self) -> dict:
        """P.health after the pass, against the same desired state. Computed on first use: at
        ~1000 containers it costs as much as the pass (and only heartbeats read it)."""
        if self.desired is None or self.observed is None:
            return {}
        return P.health(self.desired, self.observed)


def apply(ipr: IPRoute, actions: list[P.Action]) -> list[tuple[P.Action, Exception]]:
    """Execute actions in order; returns the ones that failed with their errors."""
    failures = []
    for action in actions:
        try:
            _APPLY[type(action)](ipr, action)
            log.info("overlay: %s", action)
        except NetlinkError as error:
            if _is_delete(action) and error.code in _GONE:
                log.debug("overlay: %s: already gone", action)
                continue
            log.warning("overlay: %s failed: %s", action, error)
            failures.append((action, error))
        except LookupError as error:
            if _is_delete(action):
                continue  # the device is gone, and with it whatever was to be deleted on it
            log.warning("overlay: %s failed: %s", action, error)
            failures.append((action, error))
        except Exception as error:  # noqa: BLE001 - one bad action must not stop the pass
            log.warning("overlay: %s failed: %r", action, error, exc_info=not isinstance(error, OSError))
            failures.append((action, error))
    return failures


def reconcile(ipr: IPRoute, desired: DesiredSource, observed: Observed | None = None,
              last: ReconcileResult | None = None) -> ReconcileResult:
    """One level-triggered pass: observe, then read the desired state, diff, apply.

    Pass a callable to read the desired state *after* observing: a container attached after
    that read would otherwise be observed without being desired, and deleted as an orphan.
    *observed* (OverlayReconciler's cache) replaces the observe; with *last*, the pass that
    produced that cache, an unchanged desired state ends the pass at once.
    """
    with _LOCK:
        if observed is None:
            observed = observe(ipr)
        want = desired() if callable(desired) else desired
        if last is not None and observed is last.observed and last.ok and want == last.desired:
            return ReconcileResult([], [], want.skipped, want, observed)
        actions = P.diff(want, observed)
        failures = apply(ipr, actions)
        after = observed if not actions else (None if failures else P.fold(observed, actions))
        if after is None:
            after = observe(ipr)
    for reason in want.skipped:
        log.warning("overlay: ignored inconsistent desired state: %s", reason)
    return ReconcileResult(actions, failures, want.skipped, want, after)


class OverlayReconciler:
    """Adapter for the agent's reconcile loop (``name`` + ``reconcile()``).

    ``desired`` is called on every pass, after observing; ``netns`` (tests) names the network
    namespace to program, default the agent's own.
    """

    name = "overlay"

    def __init__(self, desired: Callable[[], DesiredHost], netns: str | None = None) -> None:
        self._desired = desired
        self._netns = netns
        self.last: ReconcileResult | None = None
        self._observed_at = float("-inf")
        self._resync_after = RESYNC_MIN
        self._kernel_changes_seen = -1

    def _cached_observation(self) -> Observed | None:
        """The kernel as the last pass left it, while that view can be trusted: the pass fully
        succeeded, no container was attached or detached since (those change links outside a
        pass), and the last full observe is recent. Under _LOCK."""
        last = self.last
        if (last is None or not last.ok or last.observed is None or _kernel_changes != self._kernel_changes_seen
                or time.monotonic() - self._observed_at >= self._resync_after):
            return None
        return last.observed

    def reconcile(self) -> ReconcileResult:
        with _iproute(None, self._netns) as ipr, _LOCK:
            observed = self._cached_observation()
            fresh = observed is None
            if fresh:
                started, observed_at = time.thread_time(), time.monotonic()
                observed = observe(ipr)
                cost = time.thread_time() - started
            result = reconcile(ipr, self._desired, observed, self.last)
            if fresh:  # after the pass: one that stopped early (replica not ready) left the old view, still aged
                self._observed_at, self._kernel_changes_seen = observed_at, _kernel_changes
                self._resync_after = max(RESYNC_MIN, cost / RESYNC_CPU_SHARE)
        self.last = result
        if result.failures:
            raise OverlayError(
                f"{len(result.failures)} of {len(result.actions)} overlay changes failed, first: "
                f"{result.failures[0][0]}: {result.failures[0][1]}"
            )
        return result

    def health(self) -> dict:
        with _iproute(None, self._netns) as ipr:
            observed = observe(ipr)
        return P.health(self._desired(), observed)


def _is_delete(action: P.Action) -> bool:
    return isinstance(action, (P.DeleteLink, P.DeleteAddress, P.DeleteRoute, P.DeleteFdb, P.DeleteNeigh))


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no link named {name}")
    return found[0]


class _inet_conf(nlmsg):
    """RTM_SETLINK carrying IFLA_AF_SPEC only, the way the kernel parses it on input.

    pyroute2 has no encoder for per-device inet settings (``ip link`` has none either): on
    input the kernel expects AF_INET → IFLA_INET_CONF → one attribute per devconf index, and
    AF_INET6 → IFLA_INET6_ADDR_GEN_MODE.
    """

    fields = (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"), ("flags", "I"), ("change", "I"))
    nla_map = ((26, "IFLA_AF_SPEC", "af_spec"),)

    class af_spec(nla):
        nla_flags = NLA_F_NESTED
        nla_map = ((AF_INET, "AF_INET", "inet"), (AF_INET6, "AF_INET6", "inet6"))

        class inet(nla):
            nla_flags = NLA_F_NESTED
            nla_map = ((IFLA_INET_CONF, "IFLA_INET_CONF", "conf"),)

            class conf(nla):
                nla_flags = NLA_F_NESTED
                nla_map = ((1, "IPV4_DEVCONF_FORWARDING", "uint32"),)

        class inet6(nla):
            nla_flags = NLA_F_NESTED
            nla_map = ((8, "IFLA_INET6_ADDR_GEN_MODE", "uint8"),)


def _set_inet(ipr: IPRoute, index: int, forwarding: int | None, gen_mode: int | None) -> None:
    spec = []
    if forwarding is not None:
        conf = {"attrs": [("IPV4_DEVCONF_FORWARDING", forwarding)]}
        spec.append(("AF_INET", {"attrs": [("IFLA_INET_CONF", conf)]}))
    if gen_mode is not None:
        spec.append(("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", gen_mode)]}))
    if not spec:
        return
    msg = _inet_conf()
    msg["index"] = index
    msg["attrs"] = [("IFLA_AF_SPEC", {"attrs": spec})]
    status = getattr(ipr, "status", None)
    if isinstance(status, dict):
        status.setdefault("nlm_generator", False)  # pyroute2 0.9.x sync nlm_request reads it
    for reply in ipr.nlm_request(msg, msg_type=RTM_SETLINK, msg_flags=NLM_F_REQUEST | NLM_F_ACK):
        if reply.get("error"):
            raise NetlinkError(abs(reply["error"]))


def _create_bridge(ipr: IPRoute, a: P.CreateBridge) -> None:
    ipr.link("add", ifname=a.dev, kind="bridge", mtu=a.mtu)
    index = _index(ipr, a.dev)
    # no routing out of the bridge even when the host forwards; no IPv6 link-local on it
    _set_inet(ipr, index, forwarding=0, gen_mode=IPV6_ADDR_GEN_MODE_NONE)
    ipr.link("set", index=index, state="up")


def _create_vxlan(ipr: IPRoute, a: P.CreateVxlan) -> None:
    ipr.link(
        "add", ifname=a.dev, kind="vxlan", mtu=a.mtu,
        vxlan_id=a.vni, vxlan_local=a.local, vxlan_port=a.port,
        vxlan_learning=0, vxlan_proxy=1,
    )
    index = _index(ipr, a.dev)
    _set_inet(ipr, index, forwarding=None, gen_mode=IPV6_ADDR_GEN_MODE_NONE)
    ipr.link("set", index=index, master=_index(ipr, a.master))
    ipr.link("set", index=index, state="up")


def _delete_address(ipr: IPRoute, a: P.DeleteAddress) -> None:
    address, prefixlen = a.address.rsplit("/", 1)
    family = AF_INET6 if ":" in address else AF_INET
    ipr.addr("del", index=_index(ipr, a.dev), address=address, prefixlen=int(prefixlen), family=family)


def _delete_route(ipr: IPRoute, a: P.DeleteRoute) -> None:
    r = a.route
    spec = {"family": r.family, "table": r.table, "dst_len": r.dst_len, "oif": _index(ipr, r.dev)}
    if r.dst is not None:
        spec["dst"] = r.dst
    if r.priority is not None:
        spec["priority"] = r.priority
    if r.gateway is not None:
        spec["gateway"] = r.gateway
    ipr.route("del", **spec)


def _delete_fdb(ipr: IPRoute, a: P.DeleteFdb) -> None:
    e = a.entry
    spec = {"ifindex": _index(ipr, e.dev), "lladdr": e.mac, "flags": NTF_SELF}
    if e.dst is not None:
        spec["dst"] = e.dst
    if e.port is not None:
        spec["port"] = e.port
    if e.vni is not None:
        spec["vni"] = e.vni
    ipr.fdb("del", **spec)


_APPLY: dict[type, Callable[[IPRoute, P.Action], None]] = {
    P.DeleteLink: lambda ipr, a: ipr.link("del", index=_index(ipr, a.dev)),
    P.CreateBridge: _create_bridge,
    P.CreateVxlan: _create_vxlan,
    P.SetMtu: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), mtu=a.mtu),
    P.SetMaster: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), master=_index(ipr, a.master)),
    P.SetUp: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), state="up"),
    P.SetInetConf: lambda ipr, a: _set_inet(ipr, _index(ipr, a.dev), a.ipv4_forwarding, a.ipv6_addr_gen_mode),
    P.DeleteAddress: _delete_address,
    P.DeleteRoute: _delete_route,
    P.DeleteFdb: _delete_fdb,
    # "replace" = NLM_F_CREATE|NLM_F_REPLACE: adds, or rewrites a wrong entry without a gap
    P.ReplaceFdb: lambda ipr, a: ipr.fdb(
        "replace", ifindex=_index(ipr, a.dev), lladdr=a.mac, dst=a.dst,
        state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF),
    P.DeleteNeigh: lambda ipr, a: ipr.neigh(
        "del", ifindex=_index(ipr, a.dev), dst=a.entry.ip, family=AF_INET),
    P.ReplaceNeigh: lambda ipr, a: ipr.neigh(
        "replace", ifindex=_index(ipr, a.dev), dst=a.ip, lladdr=a.mac, state=NUD_PERMANENT, family=AF_INET),
}


# ------------------------------------------------------------------------------- containers


@contextmanager
def _iproute(ipr: IPRoute | None, netns: str | None = None) -> Iterator[IPRoute]:
    if ipr is not None:
        yield ipr
        return
    own = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        yield own
    finally:
        own.close()


def attach_container(
    pid: int, endpoint: EndpointSpec, network: NetworkSpec, mtu: int, *, ipr: IPRoute | None = None
) -> str:
    """Give the network namespace of process ``pid`` an ``eth0`` on ``network``'s bridge.

    A veth pair is created with its container end born inside ``/proc/<pid>/ns/net`` as
    ``eth0`` (no temporary name in the host), MAC = :func:`~.model.mac_for_ip` of the IP,
    ``ip/prefix`` of the network, ``mtu`` (pass ``DesiredHost.mtu``, the underlay MTU − 50),
    up, and ``lo`` up; the host end (:func:`~.model.host_veth_name`) gets the same MTU, no IPv6
    link-local address, and joins the bridge (created here if the reconciler has not yet).
    No route is added in the container: it reaches its own subnet only.

    Idempotent: an existing, correctly paired veth is only corrected; a half-made one is
    replaced. Returns the host-side name. The VXLAN device and remote entries are the
    reconciler's job: trigger a pass after attaching.
    """
    if endpoint.network_cidr != network.cidr:
        raise OverlayError(f"endpoint {endpoint.container_id} is on {endpoint.network_cidr}, not {network.cidr}")
    host = host_veth_name(endpoint.container_id)
    try:
        nsfd = os.open(f"/proc/{int(pid)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise OverlayError(f"cannot open the network namespace of PID {pid}: {error.strerror}") from None
    try:
        if _same_file(nsfd, "/proc/self/ns/net"):
            raise OverlayError(f"PID {pid} shares the agent's network namespace; refusing to add eth0 there")
        with _LOCK, _iproute(ipr) as host_ipr, IPRoute(netns=f"/proc/self/fd/{nsfd}", flags=0) as inside:
            _note_kernel_change()
            if not host_ipr.link_lookup(ifname=network.bridge):
                failures = apply(host_ipr, [P.CreateBridge(network.bridge, mtu)])
                if failures:
                    raise OverlayError(f"cannot create bridge {network.bridge}: {failures[0][1]}")
            if not _paired(host_ipr, inside, host, nsfd):
                for index in host_ipr.link_lookup(ifname=host):
                    host_ipr.link("del", index=index)
                for index in inside.link_lookup(ifname=CONTAINER_IFNAME):
                    inside.link("del", index=index)
                host_ipr.link(
                    "add", ifname=host, kind="veth", mtu=mtu,
                    peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": nsfd, "mtu": mtu, "address": endpoint.mac},
                )
            _configure_container_end(inside, endpoint, network, mtu)
            index = _index(host_ipr, host)
            link = _link_state(host_ipr.link("get", index=index)[0], {}, ())
            if link.ipv6_addr_gen_mode != IPV6_ADDR_GEN_MODE_NONE:
                _set_inet(host_ipr, index, forwarding=None, gen_mode=IPV6_ADDR_GEN_MODE_NONE)
            host_ipr.link("set", index=index, mtu=mtu, master=_index(host_ipr, network.bridge), state="up")
    except NetlinkError as error:
        raise OverlayError(f"attaching container {endpoint.container_id} to {network.cidr} failed: {error}") from None
    finally:
        os.close(nsfd)
    return host


def _same_file(fd: int, path: str) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _paired(host_ipr: IPRoute, inside: IPRoute, host: str, nsfd: int) -> bool:
    """Is ``host`` a veth whose peer is this container's ``eth0``?"""
    host_index, inner_index = host_ipr.link_lookup(ifname=host), inside.link_lookup(ifname=CONTAINER_IFNAME)
    if not host_index or not inner_index:
        return False
    outer = host_ipr.link("get", index=host_index[0])[0]
    inner = inside.link("get", index=inner_index[0])[0]
    if (outer.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "veth"
            or inner.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "veth"
            or outer.get_attr("IFLA_LINK") != inner["index"]
            or inner.get_attr("IFLA_LINK") != outer["index"]):
        return False
    peer_nsid = outer.get_attr("IFLA_LINK_NETNSID")
    if peer_nsid is None:
        return False  # the peer is in the host's own namespace
    # The ids match within their namespaces; the namespace id (assigned by the dump above when
    # the peer lives there) proves the peer is in *this* container's namespace.
    try:
        reply = host_ipr.get_netnsid(fd=nsfd)
        nsid = reply.get("nsid") if isinstance(reply, dict) else None
    except (NetlinkError, OSError, TypeError):
        return True  # cannot ask: the cross-referenced indexes will do
    return nsid == peer_nsid


def _configure_container_end(inside: IPRoute, endpoint: EndpointSpec, network: NetworkSpec, mtu: int) -> None:
    lo = inside.link_lookup(ifname="lo")
    if lo:
        inside.link("set", index=lo[0], state="up")
    index = _index(inside, CONTAINER_IFNAME)
    link = inside.link("get", index=index)[0]
    if (link.get_attr("IFLA_ADDRESS") or "").lower() != endpoint.mac:
        inside.link("set", index=index, address=endpoint.mac)
    if link.get_attr("IFLA_MTU") != mtu:
        inside.link("set", index=index, mtu=mtu)
    want = (endpoint.ip, network.prefixlen)
    have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in inside.get_addr(index=index, family=AF_INET)}
    for address, prefixlen in have - {want}:
        inside.addr("del", index=index, address=address, prefixlen=prefixlen, family=AF_INET)
    if want not in have:
        inside.addr("add", index=index, address=endpoint.ip, prefixlen=network.prefixlen)
    inside.link("set", index=index, state="up")


def detach_container(container_id: str, *, ipr: IPRoute | None = None) -> bool:
    """Delete the container's veth pair (its host end); True if there was one. Idempotent.

    Not required when the container's network namespace dies (the kernel deletes the pair),
    nor when raft forgets the container (the reconciler deletes orphans) — it makes removal
    immediate.
    """
    host = host_veth_name(container_id)
    with _LOCK, _iproute(ipr) as host_ipr:
        _note_kernel_change()
        found = host_ipr.link_lookup(ifname=host)
        for index in found:
            try:
                host_ipr.link("del", index=index)
            except NetlinkError as error:
                if error.code not in _GONE:
                    raise OverlayError(f"cannot delete {host}: {error}") from None
        return bool(found)


def underlay_mtu(address: str, *, ipr: IPRoute | None = None) -> int:
    """MTU of the link that holds the host's underlay (VTEP) address."""
    with _iproute(ipr) as host_ipr:
        for msg in host_ipr.get_addr(family=AF_INET):
            if address in (msg.get_attr("IFA_LOCAL"), msg.get_attr("IFA_ADDRESS")):
                return host_ipr.link("get", index=msg["index"])[0].get_attr("IFLA_MTU")
    raise OverlayError(f"no interface on this host has the address {address} — check the host's underlay address")
