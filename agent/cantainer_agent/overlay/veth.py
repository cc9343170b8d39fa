"""A container's link to its network: a veth pair from the network's bridge into the container's
network namespace, its end born there as ``eth0`` (no temporary name in the host).

Both operations hold the host's :class:`~.kernel.KernelGuard` and count as a change made outside a
reconcile pass. The VXLAN device and the remote entries are the reconciler's job. The netlink socket
inside the container's namespace is made by a short-lived thread that enters it (setns is per
thread), not by pyroute2's ``netns=``, which forks a helper process for every socket (~18 ms).
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import plan as P
from .guard import KernelGuard, OverlayError
from .kernel import (
    _GONE,
    AF_INET,
    IPV6_ADDR_GEN_MODE_NONE,
    _index,
    _link_state,
    _set_inet,
    apply,
    iproute,
)
from .model import CONTAINER_IFNAME, EndpointSpec, NetworkSpec, host_veth_name


def attach_container(pid: int, endpoint: EndpointSpec, network: NetworkSpec, mtu: int, *, guard: KernelGuard,
                     ipr: IPRoute | None = None) -> str:
    """Give the network namespace of process ``pid`` an ``eth0`` on ``network``'s bridge.

    A veth pair is created with its container end born inside ``/proc/<pid>/ns/net`` as
    ``eth0`` (no temporary name in the host), MAC = :func:`~.model.mac_for_ip` of the IP,
    ``ip/prefix`` of the network, ``mtu`` (pass ``DesiredHost.mtu``, the underlay MTU − 50),
    up, and ``lo`` up; the host end (:func:`~.model.host_veth_name`) gets the same MTU, no IPv6
    link-local address, and joins the bridge (created here if the reconciler has not yet, with the
    gateway). A network that routes (``NetworkSpec.routed``) gives the container its default route
    via the gateway; otherwise it has its subnet's route only.

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
        with guard, iproute(ipr) as host_ipr, IPRoute(fileno=_netlink_socket_in(nsfd).detach(), groups=0) as inside:
            guard.changed((host, network.bridge))  # the veth, and the bridge it joins
            if not host_ipr.link_lookup(ifname=network.bridge):
                guard.changed()  # a new bridge brings its address and route
                failures = apply(host_ipr, [P.CreateBridge(network.bridge, mtu, network.gateway_mac,
                                                           network.gateway_address,
                                                           tuple(P.bridge_inet(network).items()))])
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
                _set_inet(host_ipr, index, gen_mode=IPV6_ADDR_GEN_MODE_NONE)
            host_ipr.link("set", index=index, mtu=mtu, master=_index(host_ipr, network.bridge), state="up")
            if network.routed:  # plan.SetHairpin says why
                host_ipr.link("set", index=index, kind="bridge_slave", mode=1)
    except NetlinkError as error:
        raise OverlayError(f"attaching container {endpoint.container_id} to {network.cidr} failed: {error}") from None
    finally:
        os.close(nsfd)
    return host


CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0


def _netlink_socket_in(nsfd: int) -> socket.socket:
    """A NETLINK_ROUTE socket of the network namespace *nsfd* (a socket stays in the namespace it was
    made in). A thread of its own enters the namespace, makes it and ends there, so no other code ever
    runs in that namespace by mistake."""
    made: list = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(nsfd, CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns into the container's network namespace: {os.strerror(error)}")
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            made.append(error)

    thread = threading.Thread(target=enter_and_make, name="netns-socket")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise OverlayError(str(made[0]))
    return made[0]


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
    if network.routed:
        inside.route("replace", dst="0.0.0.0/0", gateway=network.gateway, oif=index)


def detach_container(container_id: str, *, guard: KernelGuard, ipr: IPRoute | None = None) -> bool:
    """Delete the container's veth pair (its host end); True if there was one. Idempotent.

    Not required when the container's network namespace dies (the kernel deletes the pair),
    nor when raft forgets the container (the reconciler deletes orphans) — it makes removal
    immediate.
    """
    host = host_veth_name(container_id)
    with guard, iproute(ipr) as host_ipr:
        guard.changed((host,))  # (the reconciler reads the bridge it was a port of too)
        found = host_ipr.link_lookup(ifname=host)
        for index in found:
            try:
                host_ipr.link("del", index=index)
            except NetlinkError as error:
                if error.code not in _GONE:
                    raise OverlayError(f"cannot delete {host}: {error}") from None
        return bool(found)
