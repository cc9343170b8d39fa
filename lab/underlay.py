"""The lab's underlay network: a bridge in the machine's namespace, one veth per host, via netlink.

Names are derived from the lab name so `down` can find every link and namespace again even when
the lab's state file was never written (the lab tool crashed half-way). So are MAC addresses: a
host's eth0 and the bridge keep theirs across crash/boot, as a real NIC does, so no neighbour cache
(the workstation's, the other hosts') is left pointing at a MAC that no longer exists.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import time
import zlib

from pyroute2 import IPRoute, netns

LAB_SUPERNET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range
HOST_IFNAME = "eth0"
NETNS_PREFIX = "cantainer-"


class UnderlayError(Exception):
    """A lab network problem the user can fix (overlap, bad subnet)."""


def bridge_name(lab: str) -> str:
    return f"cl-{lab}"


def veth_name(lab: str, host: str) -> str:
    return f"cl-{lab}-{host}"


def netns_name(lab: str, host: str) -> str:
    return f"{NETNS_PREFIX}{lab}-{host}"


def stable_mac(*parts: str) -> str:
    """A locally administered unicast MAC derived from `parts` (same parts, same MAC, every boot)."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x0E, *digest[:5]))


def machine_networks(ignore_link: str | None = None) -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 network this machine has an address or a (non-default) route in, with its source."""
    found = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=2):
            ifname = names.get(addr["index"], "?")
            if ifname == ignore_link:
                continue
            net = ipaddress.ip_network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False)
            found.append((net, f"address on {ifname}"))
        for route in ipr.get_routes(family=2, table=254):
            if route["dst_len"] == 0:
                continue  # the default route overlaps everything by definition
            ifname = names.get(route.get_attr("RTA_OIF"), "?")
            if ifname == ignore_link:
                continue
            net = ipaddress.ip_network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}", strict=False)
            found.append((net, f"route via {ifname}"))
    return found


def check_no_overlap(subnet: ipaddress.IPv4Network, own_bridge: str) -> None:
    for net, source in machine_networks(ignore_link=own_bridge):
        if net.overlaps(subnet):
            raise UnderlayError(
                f"subnet {subnet} overlaps {net} ({source}) on this machine — "
                f"pick another with --subnet, e.g. one inside {LAB_SUPERNET}"
            )


def default_subnet(lab: str, own_bridge: str) -> ipaddress.IPv4Network:
    """A /24 inside 198.18.0.0/15 chosen from the lab name, skipping any that overlap the machine."""
    candidates = list(LAB_SUPERNET.subnets(new_prefix=24))
    taken = [net for net, _ in machine_networks(ignore_link=own_bridge)]
    first = zlib.crc32(lab.encode()) % len(candidates)
    for offset in range(len(candidates)):
        subnet = candidates[(first + offset) % len(candidates)]
        if not any(net.overlaps(subnet) for net in taken):
            return subnet
    raise UnderlayError(f"no free /24 left in {LAB_SUPERNET} — remove a lab with `python -m lab down`")


def ensure_bridge(name: str, address: ipaddress.IPv4Interface) -> None:
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=name):
            # An explicit address: otherwise the bridge takes its lowest port's MAC, which changes
            # when a crashed host's port goes and comes back, stranding the hosts' ARP entries.
            ipr.link("add", ifname=name, kind="bridge", address=stable_mac("bridge", name))
        index = ipr.link_lookup(ifname=name)[0]
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        if (str(address.ip), address.network.prefixlen) not in have:
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=index, state="up")


def ensure_netns(name: str) -> None:
    if name not in netns.listnetns():
        netns.create(name)


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(netns.NETNS_RUN_DIR, name)).st_ino
    except FileNotFoundError:
        return None


def ensure_host_link(bridge: str, veth: str, ns: str, address: ipaddress.IPv4Interface, mtu: int) -> None:
    """veth pair: `veth` on the bridge in the machine's namespace, eth0 with `address` inside `ns`.

    eth0's MAC is derived from the veth's name, so a host booted after a crash answers at the MAC
    every neighbour cache still holds: a random one made `lab boot` wait up to a minute (or fail)
    for the workstation's stale REACHABLE entry to expire (docs/design/lab.md)."""
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=veth):
            ipr.link("add", ifname=veth, kind="veth", mtu=mtu, address=stable_mac("port", veth),
                     peer={"ifname": HOST_IFNAME, "net_ns_fd": ns, "mtu": mtu, "address": stable_mac("eth0", veth)})
        index = ipr.link_lookup(ifname=veth)[0]
        ipr.link("set", index=index, master=ipr.link_lookup(ifname=bridge)[0], state="up")
    with IPRoute(netns=ns) as inside:
        inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
        eth = inside.link_lookup(ifname=HOST_IFNAME)[0]
        have = {a.get_attr("IFA_ADDRESS") for a in inside.get_addr(index=eth, family=2)}
        if str(address.ip) not in have:
            inside.addr("add", index=eth, address=str(address.ip), prefixlen=address.network.prefixlen)
        inside.link("set", index=eth, state="up")


def set_link_state(ifname: str, up: bool) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise UnderlayError(f"link {ifname} does not exist — is the host booted? (`python -m lab boot`)")
        ipr.link("set", index=found[0], state="up" if up else "down")


def link_is_up(ifname: str) -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        return ipr.get_links(found[0])[0]["flags"] & 1 == 1


def lab_links(lab: str) -> list[str]:
    """Links in the machine's namespace that belong to this lab (its bridge and host veths)."""
    prefix = f"cl-{lab}-"
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [name for name in names if name == bridge_name(lab) or name.startswith(prefix)]


def lab_netns(lab: str) -> list[str]:
    prefix = f"{NETNS_PREFIX}{lab}-"
    return [name for name in netns.listnetns() if name.startswith(prefix)]


def delete_links(names: list[str], timeout: float = 5.0) -> None:
    """Delete links and wait until the kernel has really removed them (teardown is asynchronous)."""
    with IPRoute() as ipr:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                try:
                    ipr.link("del", index=index)
                except Exception:  # already gone with its peer or namespace
                    pass
        deadline = time.monotonic() + timeout
        while any(ipr.link_lookup(ifname=name) for name in names) and time.monotonic() < deadline:
            time.sleep(0.01)


def remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)
