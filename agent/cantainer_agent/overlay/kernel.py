"""The kernel side of the overlay, through netlink (pyroute2 ``IPRoute``) only — no ``ip``/``bridge``.

* :func:`observe` dumps links, addresses, routes, VXLAN FDB and neighbour entries into an
  :class:`~.model.Observed`;
* :func:`apply` executes a plan; one failing action does not stop the others (the next pass
  retries), deleting something already gone counts as done;
* :class:`~.guard.KernelGuard` (guard.py, no pyroute2) serialises every change this process makes
  to the overlay and counts the ones made outside reconcile passes (attach/detach), which void a
  reconciler's cached view;
* :func:`underlay_mtu` reads the MTU under the host's VTEP address.

Every function takes the ``IPRoute`` of the host's network namespace (``ipr``); it defaults to
a fresh ``IPRoute()`` where that makes sense. Tests pass ``IPRoute(netns=...)``.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

from pyroute2 import IPRoute
from pyroute2.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_SETLINK

from . import plan as P
from .guard import OverlayError
from .model import (
    FdbEntry,
    LinkState,
    NeighEntry,
    Observed,
    RouteEntry,
    VxlanInfo,
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
# LinkState field -> IPV4_DEVCONF_* index (include/uapi/linux/ip.h)
DEVCONF = {"ipv4_forwarding": 1, "ipv4_rp_filter": 8, "ipv4_route_localnet": 26,
           "ipv4_drop_unicast_in_l2_multicast": 30}
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
NETNS_DIR = "/run/netns"
IPV6_ADDR_GEN_MODE_NONE = P.IPV6_ADDR_GEN_MODE_NONE
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# "already gone" answers to a delete: the goal is reached
_GONE = {errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENXIO}



# ---------------------------------------------------------------------------------- observe


def observe(ipr: IPRoute) -> Observed:
    """Dump the kernel state the planner compares with the desired state."""
    return observe_links(ipr, with_entries=True)


def observe_links(ipr: IPRoute, with_entries: bool = False) -> Observed:
    """Links, addresses and routes only (cheap: a host has few links); the FDB and neighbour
    entries — thousands on a big cluster, most of an observe's cost — only *with_entries*."""
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

    fdb: set[FdbEntry] = set()
    neigh: set[NeighEntry] = set()
    if not with_entries:
        return Observed(links=links, routes=frozenset(_routes(ipr, owned)), ip_forward=read_ip_forward(ipr))
    for index, state, flags, attrs in _dump_entries(ipr, AF_BRIDGE):
        if index in vxlans and flags & NTF_SELF:
            port, vni = attrs.get(NDA_PORT), attrs.get(NDA_VNI)
            fdb.add(FdbEntry(
                dev=vxlans[index],
                mac=_mac(attrs.get(NDA_LLADDR)) or "",
                dst=_address(attrs.get(NDA_DST)),
                permanent=bool(state & NUD_PERMANENT),
                port=struct.unpack("!H", port)[0] if port is not None else None,
                vni=struct.unpack("=I", vni)[0] if vni is not None else None,
            ))

    for index, state, _flags, attrs in _dump_entries(ipr, AF_INET):
        if index in vxlans:
            neigh.add(NeighEntry(
                dev=vxlans[index],
                ip=_address(attrs.get(NDA_DST)),
                mac=_mac(attrs.get(NDA_LLADDR)),
                permanent=bool(state & NUD_PERMANENT),
            ))

    return Observed(links=links, fdb=frozenset(fdb), neigh=frozenset(neigh), routes=frozenset(_routes(ipr, owned)),
                    ip_forward=read_ip_forward(ipr))


def observe_changed_links(ipr: IPRoute, names: frozenset[str], before: Observed) -> Observed:
    """*before* with the links *names* read again, one by one: a link gone is dropped with its
    entries and routes. For changes that touched those links only (``KernelGuard.changed(links)``:
    a container's veth came or went) — a fraction of observe_links, which decodes every link, the
    host's addresses and routes (~1000 containers: 33 veths a host, one pass per local start)."""
    found = {}
    for name in sorted(names):
        try:
            found[name] = ipr.link("get", ifname=name)[0]
        except NetlinkError as error:
            if error.code not in _GONE:
                raise
    links = {name: link for name, link in before.links.items() if name not in names}
    index_names = {link.index: name for name, link in links.items()}
    index_names.update((msg["index"], name) for name, msg in found.items())
    owned = {msg["index"]: name for name, msg in found.items() if owned_kind(name)}
    addresses: dict[int, list[str]] = defaultdict(list)
    if owned:
        for msg in ipr.get_addr():
            if msg["index"] in owned:
                addresses[msg["index"]].append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
    for name, msg in found.items():
        links[name] = _link_state(msg, index_names, tuple(sorted(addresses.get(msg["index"], ()))))
    return before.replace(links=links, fdb=frozenset(e for e in before.fdb if e.dev in links),
                          neigh=frozenset(e for e in before.neigh if e.dev in links),
                          routes=frozenset(r for r in before.routes if r.dev in links))


def _dump_entries(ipr, family: int) -> Iterator[tuple[int, int, int, dict[int, bytes]]]:
    """(ifindex, state, flags, {attribute: raw value}) of every RTM_NEWNEIGH a dump of *family*
    (AF_BRIDGE: the FDB; AF_INET: neighbours) answers, read on a netlink socket of *ipr*'s
    namespace and decoded here: pyroute2 decoded each entry into objects for ~60 µs of CPU, most
    of a full observe (~2000 entries a host at 1000 containers, read every resync)."""
    sock = _in_netns_of(ipr, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                                   NETLINK_ROUTE))
    with sock:
        sock.settimeout(ACK_WAIT)
        body = struct.pack("=BxxxiHBB", family, 0, 0, 0, 0)
        sock.sendall(struct.pack("=IHHII", 16 + len(body), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    raise OverlayError("malformed netlink answer to a neighbour dump")
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code:
                        raise NetlinkError(-code, os.strerror(-code))
                elif kind == RTM_NEWNEIGH:
                    _family, index, state, flags, _type = struct.unpack_from("=BxxxiHBB", data, offset + 16)
                    attrs, at, end = {}, offset + 28, offset + length
                    while at + 4 <= end:
                        size, attr = struct.unpack_from("=HH", data, at)
                        if size < 4:
                            break
                        attrs[attr & 0x3FFF] = data[at + 4:at + size]
                        at += (size + 3) & ~3
                    yield index, state, flags, attrs
                offset += (length + 3) & ~3


def _address(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return socket.inet_ntop(AF_INET if len(raw) == 4 else AF_INET6, raw)


def _mac(raw: bytes | None) -> str | None:
    return None if raw is None else ":".join(f"{b:02x}" for b in raw)


def _routes(ipr: IPRoute, owned: dict[int, str]) -> set[RouteEntry]:
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
    return routes


def _in_netns_of(ipr: IPRoute, fn: Callable[[], object]) -> object:
    """*fn()* in the network namespace *ipr* talks to (tests give it one by name), for /proc/sys/net."""
    status = getattr(ipr, "status", None)
    netns = status.get("netns") if isinstance(status, dict) else None
    if not netns:
        return fn()
    box: dict = {}

    def body() -> None:  # a thread of its own enters the namespace: sysctls resolve per task
        try:
            fd = os.open(netns if netns.startswith("/") else f"{NETNS_DIR}/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
                box["value"] = fn()
            finally:
                os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name="netns-sysctl")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def read_ip_forward(ipr: IPRoute) -> int | None:
    def read() -> int | None:
        try:
            with open(IP_FORWARD) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None
    return _in_netns_of(ipr, read)  # type: ignore[return-value]


def _enable_forwarding(ipr: IPRoute, _action: P.EnableForwarding) -> None:
    def write() -> None:
        with open(IP_FORWARD, "w") as f:
            f.write("1\n")
    _in_netns_of(ipr, write)


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
    mac = msg.get_attr("IFLA_ADDRESS")
    return LinkState(
        name=msg.get_attr("IFLA_IFNAME"),
        index=msg["index"],
        kind=kind,
        mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP),
        master=names.get(master) if master else None,
        addresses=addresses,
        vxlan=vxlan,
        mac=mac.lower() if mac else None,
        hairpin=msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_MODE"),
        ipv6_addr_gen_mode=msg.get_nested("IFLA_AF_SPEC", "AF_INET6", "IFLA_INET6_ADDR_GEN_MODE"),
        **_ipv4_devconf(msg),
    )


def _ipv4_devconf(msg) -> dict[str, int | None]:
    """The device's net.ipv4.conf.<dev> values we manage, from IFLA_AF_SPEC/AF_INET (None: unknown).

    The attribute is AF_INET → IFLA_INET_CONF → one u32 per devconf index (1 = forwarding). pyroute2
    decodes only the first 28 indexes, so the words are read from the raw attribute: word 0 is the
    AF_INET header, word 1 the IFLA_INET_CONF header (checked before trusting the layout), word
    1 + N devconf index N.
    """
    values: dict[str, int | None] = dict.fromkeys(DEVCONF)
    try:
        inet = msg.get_nested("IFLA_AF_SPEC", "AF_INET")
        if inet is None:
            return values
        raw = bytes(inet.data[inet.offset:inet.offset + inet.length])
        words = struct.unpack_from(f"={len(raw) // 4}I", raw)
        if len(words) < 2 or (words[1] >> 16) & 0x3FFF != IFLA_INET_CONF:
            return values
        for name, index in DEVCONF.items():
            if index + 1 < len(words):
                values[name] = words[index + 1]
    except (AttributeError, KeyError, TypeError, ValueError, struct.error):
        pass
    return values


# ------------------------------------------------------------------------------------ apply


def apply(ipr: IPRoute, actions: list[P.Action], indices: dict[str, int] | None = None
          ) -> list[tuple[P.Action, Exception]]:
    """Execute actions in order; returns the ones that failed with their errors.

    *indices* (device name -> ifindex) is a cache the caller may keep across calls: an FDB or
    neighbour entry needs its device's index, and looking it up (RTM_GETLINK, then decoding the
    whole link) cost more than the entry itself. Devices this call creates or deletes leave it,
    and so does every device of a failed action (the caller drops the cache when its view of the
    kernel goes: another process may have replaced a device)."""
    failures: list[tuple[P.Action, Exception]] = []
    known = _KnownIndices(ipr, {} if indices is None else indices)
    batch: list[P.Action] = []
    for position, action in enumerate(actions):
        if isinstance(action, _ENTRY_ACTIONS):
            batch.append(action)  # consecutive entries go in one batch (_write_entries)
            if position + 1 < len(actions) and isinstance(actions[position + 1], _ENTRY_ACTIONS):
                continue
            for done, error in _write_entries(known, batch):
                _outcome(done, error, failures)
            batch = []
            continue
        if isinstance(action, (P.DeleteLink, P.CreateBridge, P.CreateVxlan)):
            known.indices.pop(action.dev, None)
        try:
            _APPLY[type(action)](known, action)
        except Exception as error:  # noqa: BLE001 - one bad action must not stop the pass
            _outcome(action, error, failures)
        else:
            _outcome(action, None, failures)
    for action, _error in failures:
        for name in (action.dev, getattr(action, "master", None)):
            known.indices.pop(name, None)  # type: ignore[arg-type]
    return failures


def _outcome(action: P.Action, error: Exception | None, failures: list) -> None:
    """Log what an action did; a failure joins *failures* (deleting what is gone is none)."""
    if error is None:
        log.info("overlay: %s", action)
    elif _is_delete(action) and (isinstance(error, LookupError)  # its device is gone, and all on it
                                 or isinstance(error, NetlinkError) and error.code in _GONE):
        log.debug("overlay: %s: already gone", action)
    elif isinstance(error, (NetlinkError, LookupError)):
        log.warning("overlay: %s failed: %s", action, error)
        failures.append((action, error))
    else:
        log.warning("overlay: %s failed: %r", action, error, exc_info=not isinstance(error, OSError))
        failures.append((action, error))


_ENTRY_ACTIONS = (P.ReplaceFdb, P.DeleteFdb, P.ReplaceNeigh, P.DeleteNeigh)
AF_BRIDGE = 7
NETLINK_ROUTE = 0
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REPLACE, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x400, 0x300
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI = 1, 2, 6, 7
ENTRY_BATCH = 256  # requests per write; their acknowledgements fit any socket buffer
ACK_WAIT = 5.0  # seconds for the kernel to acknowledge a batch


def _entry_message(ipr, action: P.Action, seq: int) -> bytes:
    """The RTM_NEWNEIGH/RTM_DELNEIGH request of an entry action — what pyroute2's ``fdb()`` and
    ``neigh()`` send (ndmsg and attributes), encoded here so that many go in one write."""
    entry = getattr(action, "entry", action)
    attrs = []
    if isinstance(action, (P.ReplaceFdb, P.DeleteFdb)):
        family, state, flags = AF_BRIDGE, NUD_PERMANENT | NUD_NOARP, NTF_SELF
        attrs.append((NDA_LLADDR, bytes.fromhex(entry.mac.replace(":", ""))))
        if entry.dst is not None:
            attrs.append((NDA_DST, socket.inet_aton(entry.dst)))
        if isinstance(action, P.DeleteFdb):
            state = 0
            if entry.port is not None:
                attrs.append((NDA_PORT, struct.pack("!H", entry.port)))
            if entry.vni is not None:
                attrs.append((NDA_VNI, struct.pack("=I", entry.vni)))
    else:
        family, state, flags = AF_INET, NUD_PERMANENT, 0
        attrs.append((NDA_DST, socket.inet_aton(entry.ip)))
        if isinstance(action, P.ReplaceNeigh):
            attrs.append((NDA_LLADDR, bytes.fromhex(entry.mac.replace(":", ""))))
        else:
            state = 0
    body = struct.pack("=BxxxiHBB", family, _index(ipr, entry.dev), state, flags, 0)
    for kind, value in attrs:
        body += struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)
    replace = isinstance(action, (P.ReplaceFdb, P.ReplaceNeigh))
    kind, extra = (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE) if replace else (RTM_DELNEIGH, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | extra, seq, 0) + body


def _write_entries(ipr, actions: list[P.Action]) -> Iterator[tuple[P.Action, Exception | None]]:
    """FDB and neighbour entries in batches: one write of up to ENTRY_BATCH requests on a netlink
    socket of *ipr*'s namespace, then their acknowledgements — instead of a pyroute2 call each
    (~1.5 ms: an event loop turn and a decoded answer; a remote container costs every host two
    entries, a host joining a big cluster thousands). Yields each action with its error (None: done)."""
    try:
        sock = _in_netns_of(ipr, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                                       NETLINK_ROUTE))
    except OSError as error:
        yield from ((action, error) for action in actions)
        return
    with sock:
        sock.settimeout(ACK_WAIT)
        for start in range(0, len(actions), ENTRY_BATCH):
            pending: dict[int, P.Action] = {}
            data = []
            for seq, action in enumerate(actions[start:start + ENTRY_BATCH], 1):
                try:
                    data.append(_entry_message(ipr, action, seq))
                    pending[seq] = action
                except Exception as error:  # noqa: BLE001 - e.g. LookupError: no such device
                    yield action, error
            try:
                if data:
                    sock.sendall(b"".join(data))
                while pending:
                    for seq, error in _acks(sock.recv(65536)):
                        if seq in pending:
                            yield pending.pop(seq), error
            except OSError as error:  # the socket failed or timed out: what it did not acknowledge failed
                yield from ((action, error) for action in pending.values())


def _acks(data: bytes) -> Iterator[tuple[int, Exception | None]]:
    """(sequence number, NetlinkError or None) of each acknowledgement in *data*."""
    offset = 0
    while offset + 20 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + 16)
            yield seq, (NetlinkError(-code, os.strerror(-code)) if code else None)
        offset += (length + 3) & ~3


class _KnownIndices:
    """An ``IPRoute`` for the actions of :func:`apply` that remembers the index of each device it
    looked up (:func:`_index`)."""

    def __init__(self, ipr: IPRoute, indices: dict[str, int]) -> None:
        self.ipr = ipr
        self.indices = indices

    def __getattr__(self, name: str):
        return getattr(self.ipr, name)


def _is_delete(action: P.Action) -> bool:
    return isinstance(action, (P.DeleteLink, P.DeleteAddress, P.DeleteRoute, P.DeleteFdb, P.DeleteNeigh))


def _index(ipr: IPRoute, name: str) -> int:
    known = ipr.indices if isinstance(ipr, _KnownIndices) else None
    if known is not None and name in known:
        return known[name]
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no link named {name}")
    if known is not None:
        known[name] = found[0]
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
                nla_map = tuple((index, name, "uint32") for name, index in DEVCONF.items())

        class inet6(nla):
            nla_flags = NLA_F_NESTED
            nla_map = ((8, "IFLA_INET6_ADDR_GEN_MODE", "uint8"),)


def _set_inet(ipr: IPRoute, index: int, gen_mode: int | None, **ipv4: int | None) -> None:
    """Set IPv6 address generation and the IPv4 devconf values named as in ``DEVCONF`` (None: leave)."""
    spec = []
    conf = [(name, value) for name, value in ipv4.items() if value is not None]
    if conf:
        spec.append(("AF_INET", {"attrs": [("IFLA_INET_CONF", {"attrs": conf})]}))
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
    ipr.link("add", ifname=a.dev, kind="bridge", mtu=a.mtu, **({"address": a.mac} if a.mac else {}))
    index = _index(ipr, a.dev)
    # routing only for a network that routes, strict rp_filter, no IPv6 link-local
    _set_inet(ipr, index, gen_mode=IPV6_ADDR_GEN_MODE_NONE, **dict(a.inet))
    ipr.link("set", index=index, state="up")
    if a.address:
        _add_address(ipr, P.AddAddress(a.dev, a.address))


def _add_address(ipr: IPRoute, a: P.AddAddress) -> None:
    address, prefixlen = a.address.rsplit("/", 1)
    try:
        ipr.addr("add", index=_index(ipr, a.dev), address=address, prefixlen=int(prefixlen))
    except NetlinkError as error:
        if error.code != errno.EEXIST:
            raise


def _create_vxlan(ipr: IPRoute, a: P.CreateVxlan) -> None:
    ipr.link(
        "add", ifname=a.dev, kind="vxlan", mtu=a.mtu,
        vxlan_id=a.vni, vxlan_local=a.local, vxlan_port=a.port,
        vxlan_learning=0, vxlan_proxy=1,
    )
    index = _index(ipr, a.dev)
    _set_inet(ipr, index, gen_mode=IPV6_ADDR_GEN_MODE_NONE)
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
    P.SetMac: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), address=a.mac),
    P.AddAddress: _add_address,
    P.SetHairpin: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), kind="bridge_slave", mode=1),
    P.EnableForwarding: _enable_forwarding,
    P.SetMaster: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), master=_index(ipr, a.master)),
    P.SetUp: lambda ipr, a: ipr.link("set", index=_index(ipr, a.dev), state="up"),
    P.SetInetConf: lambda ipr, a: _set_inet(ipr, _index(ipr, a.dev), a.ipv6_addr_gen_mode,
                                            **{name: getattr(a, name) for name in DEVCONF}),
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


@contextmanager
def iproute(ipr: IPRoute | None, netns: str | None = None) -> Iterator[IPRoute]:
    if ipr is not None:
        yield ipr
        return
    own = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        yield own
    finally:
        own.close()


def underlay_mtu(address: str, *, ipr: IPRoute | None = None) -> int:
    """MTU of the link that holds the host's underlay (VTEP) address."""
    with iproute(ipr) as host_ipr:
        for msg in host_ipr.get_addr(family=AF_INET):
            if address in (msg.get_attr("IFA_LOCAL"), msg.get_attr("IFA_ADDRESS")):
                return host_ipr.link("get", index=msg["index"])[0].get_attr("IFLA_MTU")
    raise OverlayError(f"no interface on this host has the address {address} — check the host's underlay address")
