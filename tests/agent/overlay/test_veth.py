"""A container's link is set up without forking: the netlink socket inside its namespace comes from a
thread that enters it (pyroute2's ``netns=`` forks a helper process per socket)."""
from __future__ import annotations

import os

from cantainer_agent.overlay import EndpointSpec, KernelGuard, NetworkSpec, attach_container, mac_for_ip

forks = 0


def _count_fork() -> None:
    global forks
    forks += 1


os.register_at_fork(before=_count_fork)


def test_attach_forks_nothing_and_configures_eth0_inside(make_fabric):
    fabric = make_fabric()
    host = fabric.add_host("hA")
    container = fabric.add_container("c1")
    network = NetworkSpec("10.9.0.0/24", 4097)
    endpoint = EndpointSpec("c1", network.cidr, "10.9.0.7", "hA", host.address)
    with host.ipr() as ipr:  # the host side's socket (the test's own, made before counting)
        before = forks
        attach_container(container.pid, endpoint, network, 1450, guard=KernelGuard(), ipr=ipr)
        assert forks == before  # no helper process for the container's namespace
    with container.ipr() as inside:
        eth0 = inside.link("get", ifname="eth0")[0]
        assert eth0.get_attr("IFLA_ADDRESS") == mac_for_ip("10.9.0.7") and eth0.get_attr("IFLA_MTU") == 1450
        assert [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in inside.get_addr(index=eth0["index"], family=2)] \
            == [("10.9.0.7", 24)]
    assert threads_in_this_namespace_only()


def threads_in_this_namespace_only() -> bool:
    """The thread that entered the container's namespace is gone: every thread left is in ours."""
    own = os.stat("/proc/self/ns/net").st_ino
    return all(os.stat(f"/proc/self/task/{tid}/ns/net").st_ino == own for tid in os.listdir("/proc/self/task"))
