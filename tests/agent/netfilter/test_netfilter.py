"""The netfilter controller against the real kernel (libnftables), in private network namespaces.

Layout: namespace ``host`` (10.99.0.1 on eth0, the table under test, a UDP socket on the VXLAN
port) and namespace ``peer`` (10.99.0.2 = a member and 10.99.0.3 = a stranger, on one veth);
namespace ``tenant`` hangs off a bridge ``cbr-9`` in ``host`` through ``cv0123456789ab``, as a
container does. Nothing is made in the machine's own namespace; finalizers remove everything.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from cantainer_agent.controllers.netfilter import NetfilterController, remove_table
from cantainer_agent.netfilter import Nft, ruleset
from cantainer_agent.resync import RESYNC_MIN
from cantainer_agent.runtime import linux

pytestmark = pytest.mark.root
PORT = 4789
BRIDGE_RULE = "tenant bridges never reach the host"
VXLAN_RULE = "VXLAN from cluster members only"


def in_netns(name: str, fn):
    """Run fn() in a thread that has entered network namespace *name*; return its result."""
    box: dict = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            linux.setns(fd, linux.CLONE_NEWNET)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Clock:
    """A monotonic clock the test moves: when the controller's next full read is due."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def resync_due(self) -> None:
        self.now += RESYNC_MIN


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def fabric():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables)")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"nftest-{tag}-{role}" for role in ("host", "peer", "tenant")}
    try:
        for name in names.values():
            ip("netns", "add", name)
        host, peer, tenant = names["host"], names["peer"], names["tenant"]
        ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
        ip("-n", host, "addr", "add", "10.99.0.1/24", "dev", "eth0")
        ip("-n", peer, "addr", "add", "10.99.0.2/24", "dev", "eth0")
        ip("-n", peer, "addr", "add", "10.99.0.3/24", "dev", "eth0")
        ip("-n", host, "link", "add", "cbr-9", "type", "bridge")
        ip("-n", host, "link", "add", "cv0123456789ab", "type", "veth", "peer", "name", "eth0", "netns", tenant)
        ip("-n", host, "link", "set", "cv0123456789ab", "master", "cbr-9")
        ip("-n", tenant, "addr", "add", "10.98.0.5/24", "dev", "eth0")
        for ns, devs in ((host, ("lo", "eth0", "cbr-9", "cv0123456789ab")), (peer, ("lo", "eth0")),
                         (tenant, ("lo", "eth0"))):
            for dev in devs:
                ip("-n", ns, "link", "set", dev, "up")
        yield names
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


# The members sets matter once the cluster has a network (VXLAN, what a network may reach):
# snapshots carry one unless a test says otherwise.
NETWORK = {"10.9.0.0/24": {"cidr": "10.9.0.0/24", "vni": 9, "gateway": "10.9.0.1", "internal": False}}


def snapshot(*addresses: str, ready: bool = True, networks: dict | None = None) -> dict:
    return {"ready": ready, "state": {"nodes": {f"n{i}": {"address": a} for i, a in enumerate(addresses)},
                                      "networks": dict(NETWORK if networks is None else networks),
                                      "containers": {}}}


def send(source: str, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(payload, ("10.99.0.1", PORT))


def counters(host: str) -> dict[str, int]:
    """Packets counted by each drop rule, by comment (the IPv4 and IPv6 VXLAN rules summed)."""
    def read() -> dict[str, int]:
        with Nft() as nft:
            listing = nft.run(ruleset.list_command())
        counts: dict[str, int] = {}
        for item in listing:
            rule = item.get("rule")
            if rule and any("counter" in e for e in rule["expr"]):
                packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
                counts[rule["comment"]] = counts.get(rule["comment"], 0) + packets
        return counts
    return in_netns(host, read)


def listing(host: str) -> ruleset.Observed | None:
    return in_netns(host, lambda: NetfilterController("10.99.0.1", PORT).observe())


def test_stranger_and_tenant_packets_are_dropped_members_pass(fabric):
    host, peer, tenant = fabric["host"], fabric["peer"], fabric["tenant"]
    receiver = in_netns(host, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    receiver.bind(("0.0.0.0", PORT))
    receiver.settimeout(20)
    try:
        controller = in_netns(host, lambda: NetfilterController("10.99.0.1", PORT))
        in_netns(host, lambda: controller.sync(snapshot("10.99.0.1", "10.99.0.2")))
        # the stranger first: had it passed, it would arrive before the member's datagram (same path)
        in_netns(peer, lambda: send("10.99.0.3", b"stranger"))
        in_netns(peer, lambda: send("10.99.0.2", b"member"))
        assert receiver.recvfrom(100)[0] == b"member"
        assert counters(host)[VXLAN_RULE] == 1

        # a tenant aims a datagram at the host's address through its bridge (the bridge's MAC)
        mac = ip("-n", host, "-br", "link", "show", "cbr-9").split()[2]
        ip("-n", tenant, "route", "add", "10.99.0.1/32", "dev", "eth0")
        ip("-n", tenant, "neigh", "replace", "10.99.0.1", "lladdr", mac, "dev", "eth0", "nud", "permanent")
        in_netns(tenant, lambda: send("10.98.0.5", b"tenant"))
        deadline = time.monotonic() + 20
        while counters(host).get(BRIDGE_RULE, 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counters(host)[BRIDGE_RULE] == 1  # counted by a drop rule: it never reached the socket
        in_netns(peer, lambda: send("10.99.0.2", b"member again"))
        assert receiver.recvfrom(100)[0] == b"member again"
    finally:
        receiver.close()


def test_sync_is_idempotent_follows_members_and_repairs_tampering(fabric):
    host = fabric["host"]
    clock = Clock()
    controller = in_netns(host, lambda: NetfilterController("10.99.0.1", PORT, clock=clock))
    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2")))
    assert controller.changes == 1
    first = listing(host)
    assert first.elements["members4"] == {"10.99.0.1", "10.99.0.2"}  # ourselves, even unregistered
    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2")))
    assert controller.changes == 1  # nothing to do: nothing done

    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2", "10.99.0.7", "fd00::7")))
    assert controller.changes == 2
    second = listing(host)
    assert second.structure == first.structure  # changed in place, not re-created
    assert {name: second.elements[name] for name in ("members4", "members6")} == {
        "members4": {"10.99.0.1", "10.99.0.2", "10.99.0.7"}, "members6": {"fd00::7"}}

    # someone deletes a rule and a member: the next pass due to list re-creates the table as it should be
    def tamper() -> None:
        with Nft() as nft:
            handle = next(item["rule"]["handle"] for item in nft.run(ruleset.list_command()) if "rule" in item
                          and item["rule"]["chain"] == "input")
            nft.run([{"delete": {"rule": {"family": "inet", "table": "cantainer", "chain": "input",
                                          "handle": handle}}}])
    in_netns(host, tamper)
    assert listing(host).structure != first.structure
    clock.resync_due()
    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2", "10.99.0.7", "fd00::7")))
    assert listing(host).structure == first.structure and controller.changes == 3

    # a new agent (restart) re-creates once, then is quiet; the table stayed while none ran
    restarted = in_netns(host, lambda: NetfilterController("10.99.0.1", PORT))
    in_netns(host, lambda: restarted.sync(snapshot("10.99.0.2", "10.99.0.7", "fd00::7")))
    in_netns(host, lambda: restarted.sync(snapshot("10.99.0.2", "10.99.0.7", "fd00::7")))
    assert restarted.changes == 1

    # a replica still catching up keeps the rules it finds (it may know too few members) ...
    in_netns(host, lambda: restarted.sync(snapshot(ready=False)))
    assert listing(host).elements["members4"] == {"10.99.0.1", "10.99.0.2", "10.99.0.7"}
    # ... but with no table at all (a reboot), what it knows beats no rules
    in_netns(host, remove_table)
    assert listing(host) is None
    in_netns(host, lambda: restarted.sync(snapshot("10.99.0.2", ready=False)))
    assert listing(host).elements["members4"] == {"10.99.0.1", "10.99.0.2"}
    in_netns(host, remove_table)
    in_netns(host, remove_table)  # removing an absent table is not an error
    assert listing(host) is None


def test_a_pass_woken_by_commits_that_left_the_members_alone_does_not_list_the_table(fabric):
    """A commits-only pass whose members, networks and published ports are those of the last good pass
    asks libnftables nothing; a new network (or port) is looked at; a pass due to read still compares."""
    host = fabric["host"]
    clock = Clock()
    controller = in_netns(host, lambda: NetfilterController("10.99.0.1", PORT, clock=clock))
    calls = []
    real_run = controller._nft.run
    controller._nft.run = lambda commands: (calls.append(commands), real_run(commands))[1]

    def commits_only(*addresses: str) -> dict:
        return {**snapshot(*addresses), "commits_only": True, "changes": {("networks", "10.1.0.0/24")}}

    in_netns(host, lambda: controller.sync(commits_only("10.99.0.2")))  # first pass: nothing synced yet
    assert calls and controller.changes == 1
    calls.clear()
    in_netns(host, lambda: controller.sync(commits_only("10.99.0.2")))
    assert calls == []
    in_netns(host, lambda: controller.sync(commits_only("10.99.0.2", "10.99.0.7")))  # a new member: look
    assert calls and listing(host).elements["members4"] == {"10.99.0.1", "10.99.0.2", "10.99.0.7"}
    calls.clear()
    with_network = commits_only("10.99.0.2", "10.99.0.7")
    with_network["state"]["networks"]["10.1.0.0/24"] = {"cidr": "10.1.0.0/24", "vni": 1, "gateway": "10.1.0.1",
                                                        "internal": False}
    in_netns(host, lambda: controller.sync(with_network))  # a network: its rules depend on it
    assert calls
    in_netns(host, lambda: controller.sync(commits_only("10.99.0.2", "10.99.0.7")))  # and gone again
    in_netns(host, remove_table)  # removed behind our back: the next pass due to read puts it back
    calls.clear()
    in_netns(host, lambda: controller.sync(commits_only("10.99.0.2", "10.99.0.7")))
    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2", "10.99.0.7")))  # a full pass, not due yet
    assert calls == [] and listing(host) is None
    clock.resync_due()
    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2", "10.99.0.7")))
    assert listing(host).elements["members4"] == {"10.99.0.1", "10.99.0.2", "10.99.0.7"}
    in_netns(host, remove_table)


def test_a_commits_only_pass_changes_elements_from_what_the_last_pass_programmed(fabric):
    """A commits-only pass whose inputs did change (a network comes and goes) changes the elements that
    differ from what the last good pass left, without listing the tables back; a full pass lists and
    repairs what was changed behind the controller's back; a failed pass makes the next one list."""
    host = fabric["host"]
    clock = Clock()
    controller = in_netns(host, lambda: NetfilterController("10.99.0.1", PORT, clock=clock))
    net = {"cidr": "10.1.0.0/24", "vni": 1, "gateway": "10.1.0.1", "internal": False}

    def commits_only(with_network: bool) -> dict:
        snap = {**snapshot("10.99.0.2", networks={}), "commits_only": True, "changes": {("networks", "10.1.0.0/24")}}
        if with_network:
            snap["state"]["networks"]["10.1.0.0/24"] = net
        return snap

    in_netns(host, lambda: controller.sync(snapshot("10.99.0.2", networks={})))  # full pass: lists, creates
    listed = controller.listings
    in_netns(host, lambda: controller.sync(commits_only(True)))
    assert controller.listings == listed  # nothing listed ...
    have = listing(host).elements
    assert have["overlay4"] == {"10.1.0.0/24"} and have["egress4"] == {"10.1.0.0/24"}  # ... the kernel has it
    assert have["dns4"] == {("cbr-1", "10.1.0.1")}
    in_netns(host, lambda: controller.sync(commits_only(False)))
    assert controller.listings == listed
    assert listing(host).elements["overlay4"] == frozenset()

    # an element deleted behind our back: a full pass lists and puts it back
    in_netns(host, lambda: controller.sync(commits_only(True)))
    prefix = {"prefix": {"addr": "10.1.0.0", "len": 24}}
    in_netns(host, lambda: Nft().run([{"delete": {"element": {"family": "inet", "table": "cantainer",
                                                              "name": "overlay4", "elem": [prefix]}}}]))
    assert listing(host).elements["overlay4"] == frozenset()
    full = snapshot("10.99.0.2", networks={})
    full["state"]["networks"]["10.1.0.0/24"] = net
    clock.resync_due()
    in_netns(host, lambda: controller.sync(full))
    assert controller.listings > listed and listing(host).elements["overlay4"] == {"10.1.0.0/24"}

    # a failing pass leaves nothing trusted: the next commits-only pass lists again
    real_run = controller._nft.run

    def failing(commands):
        if any("element" in next(iter(c.values())) for c in commands):
            raise OSError("injected")
        return real_run(commands)

    controller._nft.run = failing
    with pytest.raises(OSError):
        in_netns(host, lambda: controller.sync(commits_only(False)))
    controller._nft.run = real_run
    listed = controller.listings
    in_netns(host, lambda: controller.sync(commits_only(False)))
    assert controller.listings > listed and listing(host).elements["overlay4"] == frozenset()
    in_netns(host, remove_table)


def test_without_a_network_the_members_sets_hold_this_host_alone_and_joins_cost_nothing(fabric):
    """No network: no VXLAN device, no bridge, nothing the members sets filter. A node's registration
    then changes nothing in the kernel (a cold `up` of N hosts made N² nft calls); the join port
    still knows every member; the first network brings them all in."""
    host = fabric["host"]
    controller = in_netns(host, lambda: NetfilterController("10.99.0.1", PORT))
    calls = []
    real_run = controller._nft.run
    controller._nft.run = lambda commands: (calls.append(commands), real_run(commands))[1]

    def commits_only(*addresses: str, networks: dict | None = None) -> dict:
        return {**snapshot(*addresses, networks=networks or {}), "commits_only": True, "changes": set()}

    in_netns(host, lambda: controller.sync(snapshot("10.99.0.1", networks={})))  # the start: tables made
    assert listing(host).elements["members4"] == {"10.99.0.1"}
    calls.clear()
    for joined in range(2, 6):  # hosts register, one commit each
        registered = commits_only(*(f"10.99.0.{i}" for i in range(1, joined + 1)))
        in_netns(host, lambda snap=registered: controller.sync(snap))
    assert calls == [] and listing(host).elements["members4"] == {"10.99.0.1"}
    assert controller.is_member("10.99.0.5") and not controller.is_member("10.99.0.6")
    in_netns(host, lambda: controller.sync(commits_only(*(f"10.99.0.{i}" for i in range(1, 6)), networks=NETWORK)))
    assert len(calls) == 1  # one batch of element changes, nothing listed
    assert listing(host).elements["members4"] == {f"10.99.0.{i}" for i in range(1, 6)}
    assert listing(host).elements["overlay4"] == {"10.9.0.0/24"}
    in_netns(host, remove_table)
