"""The lab is real: sshd per host, private directories, an underlay, partitions and power loss."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncssh
import pytest
import tomllib

from lab import underlay
from lab.lab import Lab, LabError
from lab.procs import pids_in_netns, start_time

pytestmark = pytest.mark.lab


def hosts_of(lab: Lab) -> dict[str, str]:
    return {h.name: h.address for h in lab.load().hosts.values()}


def lab_exec(lab: Lab, host: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "exec", "--name", lab.name, host, "--", *command],
                          capture_output=True, text=True, timeout=30)


async def ssh_run(lab: Lab, address: str, command: str) -> str:
    async with asyncssh.connect(address, username="root", client_keys=[str(lab.dir / "id_ed25519")],
                                known_hosts=str(lab.dir / "known_hosts"), config=None) as conn:
        return (await conn.run(command, check=True)).stdout


def test_inventory_lists_every_host_with_key_and_known_hosts(lab):
    inventory = tomllib.loads(lab.inventory_file.read_text())
    assert [h["name"] for h in inventory["hosts"]] == ["h1", "h2", "h3"]
    assert os.path.exists(inventory["defaults"]["identity_file"])
    assert os.path.exists(inventory["defaults"]["known_hosts"])


def test_ssh_into_each_host_with_host_key_checking(lab):
    async def main():
        return {name: (await ssh_run(lab, address, "hostname")).strip() for name, address in hosts_of(lab).items()}

    assert asyncio.run(main()) == {"h1": "h1", "h2": "h2", "h3": "h3"}


def test_unknown_host_key_is_refused(lab, tmp_path):
    wrong = tmp_path / "known_hosts"
    address = hosts_of(lab)["h1"]
    wrong.write_text(f"{address} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n")

    async def main():
        await asyncssh.connect(address, username="root", client_keys=[str(lab.dir / "id_ed25519")],
                               known_hosts=str(wrong), config=None)

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(main())


def test_run_and_agent_directories_are_private_per_host(lab):
    for directory in ("/run", "/var/lib/cantainer", "/tmp", "/root", "/etc/cantainer", "/var/log/cantainer"):
        assert lab_exec(lab, "h1", "sh", "-c", f"echo h1 > {directory}/isolation-probe").returncode == 0
        seen = lab_exec(lab, "h2", "cat", f"{directory}/isolation-probe")
        assert seen.returncode != 0, f"h2 sees h1's {directory}"
        assert lab_exec(lab, "h1", "rm", f"{directory}/isolation-probe").returncode == 0


def test_each_host_has_its_own_pid_namespace_and_cgroup_subtree(lab):
    pid1 = lab_exec(lab, "h2", "cat", "/proc/1/comm")
    assert pid1.stdout.strip() == "sshd"
    assert lab_exec(lab, "h2", "cat", "/proc/self/cgroup").stdout.strip().endswith(":/")


def test_hosts_ping_each_other_over_the_underlay(lab):
    addresses = hosts_of(lab)
    for source in addresses:
        for target, address in addresses.items():
            if source != target:
                assert lab_exec(lab, source, "ping", "-c1", "-W2", address).returncode == 0


def test_exec_propagates_exit_code(lab):
    assert lab_exec(lab, "h3", "sh", "-c", "exit 7").returncode == 7


def test_cut_partitions_a_host_and_heal_restores_it(lab):
    address = hosts_of(lab)["h2"]
    lab.cut("h2")
    try:
        assert lab_exec(lab, "h1", "ping", "-c1", "-W1", address).returncode != 0
    finally:
        lab.cut("h2", up=True)
    assert lab_exec(lab, "h1", "ping", "-c1", "-W3", address).returncode == 0


def eth0_and_bridge_macs(lab: Lab, host: str) -> tuple[str, str]:
    from pyroute2 import IPRoute

    with IPRoute(netns=underlay.netns_name(lab.name, host)) as inside:
        eth0 = inside.get_links(inside.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")
    with IPRoute() as ipr:
        bridge = ipr.get_links(ipr.link_lookup(ifname=lab.bridge)[0])[0].get_attr("IFLA_ADDRESS")
    return eth0, bridge


def test_crash_kills_everything_and_boot_keeps_disk_state(lab):
    assert lab_exec(lab, "h3", "sh", "-c", "echo kept > /var/lib/cantainer/disk; echo lost > /run/volatile; "
                    "setsid sleep 1000 < /dev/null > /dev/null 2>&1 &").returncode == 0
    _, host = lab.host("h3")
    inode = underlay.netns_inode(underlay.netns_name(lab.name, "h3"))
    victims = pids_in_netns(inode)
    assert len(victims) >= 2  # sshd and the sleeper
    macs = eth0_and_bridge_macs(lab, "h3")
    lab.crash("h3")
    assert all(start_time(pid) is None for pid in victims)  # gone or a zombie awaiting its reaper
    assert lab_exec(lab, "h3", "true").returncode != 0
    lab.boot("h3")
    # Same MACs as before the crash, like a real NIC: neighbour caches stay right (the boot flake)
    assert eth0_and_bridge_macs(lab, "h3") == macs
    assert lab_exec(lab, "h3", "cat", "/var/lib/cantainer/disk").stdout == "kept\n"
    assert lab_exec(lab, "h3", "cat", "/run/volatile").returncode != 0
    assert asyncio.run(ssh_run(lab, hosts_of(lab)["h3"], "hostname")).strip() == "h3"


def test_overlapping_subnet_is_refused_with_one_clear_line(lab):
    taken = lab.load().subnet
    result = subprocess.run([sys.executable, "-m", "lab", "up", "--name", "cover", "--hosts", "1", "--subnet", taken],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "overlaps" in result.stderr and "Traceback" not in result.stderr
    assert not Lab("cover").exists()
    machine = subprocess.run([sys.executable, "-m", "lab", "up", "--name", "cover", "--subnet", "192.0.2.0/24"],
                             capture_output=True, text=True)
    assert machine.returncode == 1 and "overlaps" in machine.stderr


def test_invalid_lab_name_is_refused():
    with pytest.raises(LabError, match="lab name"):
        Lab("Bad Name")
