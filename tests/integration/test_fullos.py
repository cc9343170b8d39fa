"""Full-OS lab hosts (`lab up --os debian`): systemd as PID 1, a sudo user, the agent as a systemd unit.

One module-scoped lab of three debootstrapped Debian hosts booted by systemd-nspawn; `cantainer up`
logs in as `ops` with `become = true`, exactly as on a fleet of Ubuntu VMs. Cgroup layout proved
here: this machine's hybrid one (v1 controllers, a controller-less cgroup2), see docs/design/lab.md.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cantainer_agent import layout
from lab import fullos, underlay
from lab.lab import Lab, LabError
from lab.procs import pids_in_netns, start_time
from tests.conftest import LAB_NAME, require_root
from tests.labcli import cantainer, cli, container_processes, host_exec, host_path, ok, ps, status, wait_for

pytestmark = pytest.mark.lab

FULLOS_LAB = os.environ.get("CANTAINER_TEST_FULLOS_LAB", f"{LAB_NAME[:6]}o")


@pytest.fixture(scope="module")
def fos(request):
    require_root()
    instance = Lab(FULLOS_LAB)
    instance.down(keep_logs=True)
    try:
        instance.up(3, os_name="debian")
        yield instance
    finally:
        instance.down(keep_logs=request.session.testsfailed > 0)


@pytest.fixture(scope="module")
def inventory(fos) -> Path:
    ok(cli(fos.inventory_file, "up", str(fos.inventory_file)))
    return fos.inventory_file


def sh(lab: Lab, host: str, script: str, timeout: float = 30) -> str:
    result = host_exec(lab, host, "sh", "-c", script, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def unit_pid(lab: Lab, host: str) -> int:
    return int(sh(lab, host, f"systemctl show -p MainPID --value {layout.UNIT_NAME}").strip())


def agent_ready(inventory: Path, host: str) -> bool:
    result = cantainer("status", "--json", "-i", str(inventory))
    if result.returncode != 0:
        return False
    nodes = {n["name"]: n for n in json.loads(result.stdout)["nodes"]}
    return nodes.get(host, {}).get("state") == "up"


# -- the hosts ---------------------------------------------------------------------------------------
def test_each_host_boots_its_own_debian_with_systemd_as_pid_1_and_a_sudo_user(fos):
    for host in ("h1", "h2", "h3"):
        assert sh(fos, host, "cat /proc/1/comm") == "systemd\n"
        assert sh(fos, host, "systemctl is-system-running") == "running\n"
        assert sh(fos, host, "hostname") == f"{host}\n"
        assert sh(fos, host, "systemctl is-active ssh") == "active\n"
    # its own root filesystem: a file made in h1's / is neither on h2 nor on this machine
    sh(fos, "h1", "echo mine > /etc/only-on-h1")
    assert host_exec(fos, "h2", "test", "-e", "/etc/only-on-h1").returncode != 0
    assert not Path("/etc/only-on-h1").exists()
    ssh = ["ssh", "-i", str(fos.dir / "id_ed25519"), "-o", f"UserKnownHostsFile={fos.dir / 'known_hosts'}",
           "-o", "BatchMode=yes", f"{fullos.SUDO_USER}@{fos.load().hosts['h1'].address}"]
    result = subprocess.run([*ssh, "id -un; sudo -n id -u"], capture_output=True, text=True, timeout=30)
    assert result.stdout == "ops\n0\n", result.stderr


def test_lab_refuses_an_unknown_os_and_a_change_of_host_kind_with_one_line(fos):
    for args, needle in ((["--os", "plan9"], "is not known"), ([], "full-OS (debian) hosts")):
        result = subprocess.run([sys.executable, "-m", "lab", "up", "--name", fos.name, *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert all(host["running"] for host in fos.describe())


# -- cantainer on systemd hosts -------------------------------------------------------------------------
def test_up_as_sudo_user_installs_an_enabled_unit_that_runs_the_agent(fos, inventory):
    for host in ("h1", "h2", "h3"):
        state = sh(fos, host, f"systemctl is-enabled {layout.UNIT_NAME}; systemctl is-active {layout.UNIT_NAME}")
        assert state == "enabled\nactive\n"
        settings = sh(fos, host, f"systemctl show -p Restart -p KillMode {layout.UNIT_NAME}").split()
        assert sorted(settings) == ["KillMode=process", "Restart=always"]
        pid = unit_pid(fos, host)
        assert "cantainer_agent" in sh(fos, host, f"cat /proc/{pid}/cmdline")
        assert sh(fos, host, f"cat {layout.PID_FILE}").split()[0] == str(pid)
    assert {n["name"]: n["state"] for n in status(inventory)["nodes"]} == {"h1": "up", "h2": "up", "h3": "up"}
    again = cli(inventory, "up", str(inventory))
    assert again.returncode == 0 and again.stdout.count("unchanged") == 3, again.stdout + again.stderr


def test_sigkilled_agent_is_restarted_by_systemd_and_its_containers_are_untouched(fos, inventory):
    ok(cli(inventory, "run", "--host", "h1", "-n", "10.9.0.0/24", "--name", "keep", "-d", "--", "sleep", "100000"))
    before = container_processes(fos, "h1")
    old = unit_pid(fos, "h1")
    sh(fos, "h1", f"kill -9 {old}")
    new = wait_for(lambda: (pid := unit_pid(fos, "h1")) not in (0, old) and pid, 30,
                   what="systemd to restart the agent")
    assert "cantainer_agent" in sh(fos, "h1", f"cat /proc/{new}/cmdline")
    wait_for(lambda: agent_ready(inventory, "h1"), 30, what="the restarted agent to rejoin")
    after = container_processes(fos, "h1")
    assert after == before and all(c["alive"] for c in after.values())  # same pid, same start time
    assert ps(inventory)["keep"]["state"] == "running"
    ok(cli(inventory, "rm", "-f", "keep"))


def _container_cgroup_file(lab: Lab, inventory: Path, name: str, controller: str, filename: str) -> str:
    """A cgroup file of container `name`'s init process, read inside its host (the host's /sys/fs/cgroup)."""
    container = ps(inventory)[name]
    pid = container_processes(lab, container["host"])[container["id"]]["pid"]
    rows = sh(lab, container["host"], f"cat /proc/{pid}/cgroup").splitlines()
    path = [row.split(":", 2)[2] for row in rows if row.split(":")[1] == controller][0]
    return sh(lab, container["host"], f"cat /sys/fs/cgroup/{controller}{path}/{filename}").strip()


def test_limits_are_enforced_under_systemd_and_an_oom_kill_is_recorded(fos, inventory):
    ok(cli(inventory, "run", "--host", "h2", "-n", "10.9.0.0/24", "--name", "capped", "-d", "--memory", "32m",
           "--cpus", "0.5", "--pids", "20", "--", "sleep", "100000"))
    try:
        # cgroup v1, as this machine's hybrid layout gives the host (docs/design/lab.md)
        assert _container_cgroup_file(fos, inventory, "capped", "memory", "memory.limit_in_bytes") == str(32 << 20)
        assert _container_cgroup_file(fos, inventory, "capped", "cpu", "cpu.cfs_quota_us") == "50000"
        assert _container_cgroup_file(fos, inventory, "capped", "pids", "pids.max") == "20"
    finally:
        ok(cli(inventory, "rm", "-f", "capped"))
    ok(cli(inventory, "run", "--host", "h2", "-n", "10.9.0.0/24", "--name", "hog", "-d", "--memory", "16m", "--",
           "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived"))
    hog = wait_for(lambda: (c := ps(inventory)["hog"])["state"] != "running" and c, 60, what="the hog to be killed")
    assert hog["state"] == "exited" and hog["reason"] == "oom-killed", hog
    ok(cli(inventory, "rm", "hog"))


def test_a_changed_config_restarts_each_agent_through_systemd_and_leaves_containers_running(fos, inventory, tmp_path):
    """The upgrade path of the README: `up` with something changed rewrites the unit and restarts
    the agents one at a time through systemd; containers keep running (KillMode=process)."""
    ok(cli(inventory, "run", "--host", "h3", "-n", "10.9.0.0/24", "--name", "stays", "-d", "--", "sleep", "100000"))
    containers = container_processes(fos, "h3")
    before = {host: unit_pid(fos, host) for host in ("h1", "h2", "h3")}
    changed = tmp_path / "inventory.toml"
    changed.write_text(inventory.read_text().replace("[cluster]\n", "[cluster]\nvoters = 5\n", 1))
    result = cantainer("up", str(changed))
    assert result.returncode == 0 and result.stdout.count("restarted") == 3, result.stdout + result.stderr
    after = {host: unit_pid(fos, host) for host in ("h1", "h2", "h3")}
    assert all(after[host] not in (0, before[host]) for host in after)
    assert '"voters": 5' in sh(fos, "h2", f"cat {layout.CONFIG_FILE}")
    assert container_processes(fos, "h3") == containers and ps(inventory)["stays"]["state"] == "running"
    ok(cli(inventory, "up", str(inventory)))  # back to the original config
    ok(cli(inventory, "rm", "-f", "stays"))


# Run inside a host with the pushed agent bundle: the runtime's cgroup v2 code on the host's
# controller-less cgroup2 mount (creation, a process joining, removal), then a memory limit on it.
_V2_PROBE = r"""
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from cantainer_agent.runtime import CgroupError, CgroupLayout, CgroupManager, Limits
manager = CgroupManager("cantainer-v2probe", layout=CgroupLayout(2, v2_mount=sys.argv[2]))
cgroup = manager.cgroup("c1")
cgroup.create()
child = subprocess.Popen(["sleep", "60"])
cgroup.add(child.pid)
joined = open(f"/proc/{child.pid}/cgroup").read()
members = sorted(cgroup.pids())
child.kill(); child.wait()
cgroup.remove()
error = None
try:
    manager.cgroup("c2").create(Limits(memory=16 << 20))
except CgroupError as exc:
    error = str(exc)
exists = os.path.exists(manager.cgroup("c2").dirs[0])
manager.remove_parent()
print(json.dumps({"pid": child.pid, "members": members, "joined": joined, "error": error, "leftover": exists,
                  "parent_left": os.path.exists(manager.parent_dirs()[0])}))
"""


def test_cgroup_v2_code_path_on_the_hosts_controller_less_cgroup2(fos, inventory):
    bundle = layout.bundle_dir(json.loads(sh(fos, "h3", f"cat {layout.CONFIG_FILE}"))["bundle"])
    assert "cgroup2" in sh(fos, "h3", "stat -f -c %T /sys/fs/cgroup/unified") + "cgroup2"
    assert sh(fos, "h3", "cat /sys/fs/cgroup/unified/cgroup.controllers").strip() == ""
    result = host_exec(fos, "h3", "python3", "-c", _V2_PROBE, bundle, "/sys/fs/cgroup/unified")
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["members"] == [probe["pid"]]
    assert "0::/cantainer-v2probe/c1" in probe["joined"]
    assert probe["error"] and "memory" in probe["error"] and "\n" not in probe["error"], probe["error"]
    assert not probe["leftover"] and not probe["parent_left"]


def test_crash_kills_every_process_and_boot_brings_the_agent_back_by_itself(fos, inventory):
    inode = underlay.netns_inode(underlay.netns_name(fos.name, "h3"))
    victims = pids_in_netns(inode)
    assert len(victims) >= 5  # nspawn, systemd, journald, sshd, the agent, ...
    fos.crash("h3")
    assert all(start_time(pid) is None for pid in victims)
    assert host_exec(fos, "h3", "true").returncode != 0
    fos.boot("h3")  # no `cantainer up`: systemd starts the enabled unit
    assert sh(fos, "h3", f"systemctl is-enabled {layout.UNIT_NAME}") == "enabled\n"
    wait_for(lambda: agent_ready(inventory, "h3"), 60, what="h3's agent to come back after boot")
    assert sh(fos, "h3", "cat /etc/only-on-h1 2>/dev/null; cat /etc/hostname") == "h3\n"


def _argv(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0") + ["", "", ""]
    except OSError:
        return ["", "", ""]


def test_a_sudo_relay_that_went_away_is_a_host_error_not_a_crash(fos, inventory):
    """With become, the agent API goes through a relay under sudo, whose SSH session opens even when
    the socket is not there yet (an agent systemd has only just started) and then closes: writing
    to it must be "the agent closed the connection" (which `up` retries), not a BrokenPipeError."""
    import asyncio

    from cantainer.client import AgentClient
    from cantainer.inventory import load_inventory
    from cantainer.ssh import HostError, connect

    (host,) = [h for h in load_inventory(inventory).hosts if h.name == "h1"]

    async def scenario() -> None:
        connection = await connect(host)
        client = AgentClient(connection)
        try:
            assert (await client.call("hello"))["node"] == "h1"
            proc = host_path(fos, "h1", "/proc")
            relays = [pid for pid in os.listdir(proc) if pid.isdigit()
                      and "-c" in _argv(proc / pid) and "pump_in" in " ".join(_argv(proc / pid))]
            assert relays, "no relay process on h1"
            sh(fos, "h1", f"kill -9 {' '.join(relays)}")
            await asyncio.wait_for(client._writer.channel.wait_closed(), 10)
            with pytest.raises(HostError, match="agent closed the connection during `hello`"):
                await client.call("hello")
            assert (await client.call("hello"))["node"] == "h1"  # a new relay
        finally:
            client.close()
            connection.close()
            await connection.wait_closed()

    asyncio.run(scenario())


def test_sudo_that_asks_for_a_password_is_one_clear_error(fos, inventory, tmp_path):
    text = fos.inventory_file.read_text()
    text = text.replace(f'user = "{fullos.SUDO_USER}"', f'user = "{fullos.PASSWORD_SUDO_USER}"')
    first_host = text.index("[[hosts]]")
    only_h1 = text[:text.index("[[hosts]]", first_host + 1)]
    changed = tmp_path / "inventory.toml"
    changed.write_text(only_h1)
    result = cantainer("up", str(changed))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: h1: sudo asks user 'dev' for a password (cantainer runs `sudo -n`, which never "
                      "prompts) — give dev passwordless sudo (a sudoers line `dev ALL=(ALL) NOPASSWD:ALL`) "
                      "or log in as root"], result.stdout
    assert agent_ready(inventory, "h1")  # nothing changed on the host
    sh(fos, "h1", "mv /usr/bin/sudo /usr/bin/sudo.away")
    try:
        result = cantainer("up", str(changed))
    finally:
        sh(fos, "h1", "mv /usr/bin/sudo.away /usr/bin/sudo")
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and errors == [
        "error: h1: sudo is not installed on the host, but the inventory sets become = true — "
        "install sudo there or log in as root"], result.stdout + result.stderr


def test_down_purge_removes_the_unit_and_everything_cantainer_wrote(fos, inventory):
    ok(cli(inventory, "down", "--purge"))
    for host in ("h1", "h2", "h3"):
        assert host_exec(fos, host, "test", "-e", layout.UNIT_FILE).returncode != 0
        assert sh(fos, host, f"systemctl is-enabled {layout.UNIT_NAME} || true").strip() in ("", "not-found")
        assert sh(fos, host, f"systemctl is-active {layout.UNIT_NAME} || true").strip() == "inactive"
        assert "cantainer_agent" not in sh(fos, host, "ps -eo args")
        for path in (layout.CONFIG_DIR, layout.LOG_DIR, layout.RUN_DIR):
            assert host_exec(fos, host, "test", "-e", path).returncode != 0, path
        # the lab mounts a real disk there (docs/design/lab.md): emptied, the mount point stays
        assert sh(fos, host, f"ls -A {layout.DATA_DIR}") == ""


# -- a bastion-fronted fleet ------------------------------------------------------------------------
def _route_unreachable(network: str, add: bool) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.route("add" if add else "del", dst=network, type="unreachable")


def test_up_reaches_hosts_only_through_a_proxyjump_host_from_ssh_config(fos, tmp_path):
    """h1 and h2 get addresses on a subnet this machine routes nowhere (an `unreachable` route,
    so a direct attempt fails at once and sends nothing); h3 is the bastion, reached directly,
    named in ~/.ssh/config as `jump` with `Host h*  ProxyJump jump`. The inventory names h1/h2
    by their aliases only."""
    hosts = fos.load().hosts
    hidden = underlay.default_subnet(f"{fos.name}hid", fos.bridge)
    inner = {name: str(hidden[index + 2]) for index, name in enumerate(("h1", "h2", "h3"))}
    _route_unreachable(str(hidden), add=True)
    try:
        for name, address in inner.items():
            sh(fos, name, f"ip addr add {address}/{hidden.prefixlen} dev eth0")
        with pytest.raises(OSError):  # no direct way in from the workstation
            socket.create_connection((inner["h1"], 22), timeout=3).close()
        keys = {name: (fos.host_dir(name) / "ssh_host_ed25519_key.pub").read_text().split()[:2] for name in inner}
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"{name},{inner[name]} {' '.join(keys[name])}\n" for name in ("h1", "h2")))
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "config").write_text(
            f"Host jump\n  Hostname {hosts['h3'].address}\n  User {fullos.SUDO_USER}\n"
            f"  IdentityFile {fos.dir / 'id_ed25519'}\n  UserKnownHostsFile {fos.dir / 'known_hosts'}\n"
            "Host h*\n  ProxyJump jump\n"
            + "".join(f"Host {name}\n  Hostname {inner[name]}\n" for name in ("h1", "h2")))
        inventory = tmp_path / "inventory.toml"
        inventory.write_text(
            f'[defaults]\nuser = "{fullos.SUDO_USER}"\nbecome = true\nidentity_file = "{fos.dir / "id_ed25519"}"\n'
            f'known_hosts = "{known}"\n\n[cluster]\nname = "jumped"\nsecret_file = "{tmp_path / "secret"}"\n'
            '\n[[hosts]]\nname = "h1"\naddress = "h1"\n\n[[hosts]]\nname = "h2"\naddress = "h2"\n')
        env = {"HOME": str(home)}
        result = cantainer("up", str(inventory), env=env, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        doc = json.loads(ok(cantainer("status", "--json", "-i", str(inventory), env=env)))
        assert {n["name"]: n["state"] for n in doc["nodes"]} == {"h1": "up", "h2": "up"}
        config = json.loads(sh(fos, "h1", f"cat {layout.CONFIG_FILE}"))
        assert config["address"] == inner["h1"]  # raft runs on the inner network, behind the bastion
        ok(cantainer("down", "--purge", "-i", str(inventory), env=env))
    finally:
        for name, address in inner.items():
            host_exec(fos, name, "ip", "addr", "del", f"{address}/{hidden.prefixlen}", "dev", "eth0")
        _route_unreachable(str(hidden), add=False)


# -- lab verbs: errors carry the console ---------------------------------------------------------------
def test_a_host_that_never_answers_fails_with_the_tail_of_its_console_log(fos):
    import asyncio

    from lab.lab import _wait_for_sshd

    state = fos.load()
    unused = str(state.network[200])  # on the lab bridge, no host: the connect goes nowhere else
    with pytest.raises(LabError) as error:
        asyncio.run(_wait_for_sshd({"h1": unused}, 1.0, fos.console_tail))
    message = str(error.value)
    assert "did not come up within 1s" in message and "console.log ends:" in message
    assert "\n" not in message and "Reached target" in message  # h1's last boot, as systemd printed it


def test_a_host_whose_boot_ends_degraded_is_an_error_naming_the_failed_unit(fos):
    unit = "/etc/systemd/system/lab-broken.service"
    sh(fos, "h2", f"printf '[Service]\\nExecStart=/bin/false\\n[Install]\\nWantedBy=multi-user.target\\n' > {unit}; "
                  "ln -s ../lab-broken.service /etc/systemd/system/multi-user.target.wants/lab-broken.service")
    fos.crash("h2")
    try:
        with pytest.raises(LabError) as error:
            fos.boot("h2")
        message = str(error.value)
        assert "systemd on h2 is 'degraded' after boot (failed units: lab-broken.service)" in message, message
        assert "console.log ends:" in message and "\n" not in message
    finally:
        sh(fos, "h2", f"rm -f {unit} /etc/systemd/system/multi-user.target.wants/lab-broken.service")
        fos.crash("h2")
        fos.boot("h2")
    assert sh(fos, "h2", "systemctl is-system-running") == "running\n"


def test_rootfs_build_errors_are_one_line_and_create_nothing(tmp_path):
    """A fresh cache: without debootstrap on PATH, and with a mirror that refuses (loopback)."""
    require_root()
    env = {**os.environ, "CANTAINER_LAB_CACHE": str(tmp_path / "cache")}
    cases = (({"PATH": "/usr/bin:/bin"}, "debootstrap is not installed — run `sudo make setup`"),
             ({"CANTAINER_LAB_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"},
              "debootstrap of bookworm from http://127.0.0.1:9/debian failed"))
    for extra, needle in cases:
        result = subprocess.run([sys.executable, "-m", "lab", "up", "--name", f"{FULLOS_LAB[:6]}x", "--os", "debian"],
                                capture_output=True, text=True, timeout=300, env={**env, **extra})
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
        assert not Lab(f"{FULLOS_LAB[:6]}x").dir.exists()
    # no half-built image is left; only the lock and the build log the error names
    left = sorted(p.name for p in (tmp_path / "cache" / "rootfs").iterdir())
    assert left == [".lock", f"{fullos.rootfs_path(fullos.recipe_for('debian')).name}.build.log"], left
