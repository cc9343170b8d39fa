"""Containers and the overlay on the real lab: run/exec/logs/stop/rm, limits, supervision, IPAM,
cross-host reachability, isolation, MTU and reconciliation of forwarding entries."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cantainer_agent import layout
from tests.conftest import LAB_NAME
from tests.labcli import cli, host_exec, mac_for, ok, one_line_error, ps
from tests.pingout import all_answered

pytestmark = pytest.mark.lab


class Tmux:
    """A terminal a test drives like a person: type keys, wait until the screen shows something. Its own
    tmux server per suite (`-L`, named after the suite's lab): a server another suite started would
    also run our command with that suite's environment."""

    def __init__(self, session: str, command: str) -> None:
        self.session = session
        self.tmux = ["tmux", "-L", f"cantainer-test-{LAB_NAME}"]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-t", self.session, "-p"], capture_output=True,
                              text=True).stdout

    def send(self, *keys: str, wait_for: str, timeout: float = 30) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.session, *keys], check=True)
        deadline = time.monotonic() + timeout
        while wait_for not in self.screen() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert wait_for in self.screen(), self.screen()

    def resize(self, columns: int, lines: int) -> None:
        subprocess.run([*self.tmux, "resize-window", "-t", self.session, "-x", str(columns), "-y", str(lines)],
                       check=True)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-session", "-t", self.session], capture_output=True)


def pings(inventory: Path, name: str, address: str, size: int = 56, count: int = 1) -> bool:
    result = cli(inventory, "exec", name, "--", "ping", "-c", str(count), "-W", "2", "-s", str(size), address)
    return result.returncode == 0


@pytest.fixture(scope="module")
def web(cluster):
    """c1@h1 and c2@h2 on 10.0.0.0/24, c3@h3 and c4@h1 on 10.1.0.0/24, all sleeping."""
    for name, host, network in (("c1", "h1", "10.0.0.0/24"), ("c2", "h2", "10.0.0.0/24"),
                                ("c3", "h3", "10.1.0.0/24"), ("c4", "h1", "10.1.0.0/24")):
        ok(cli(cluster, "run", "--host", host, "-n", network, "--name", name, "-d", "--", "sleep", "100000"))
    return {name: c["ip"] for name, c in ps(cluster).items()}


# -- runtime ----------------------------------------------------------------------------------------
def test_run_detached_gives_an_alpine_container_with_its_name_and_command_as_pid_1(lab, cluster, web):
    # `alpine` is the lab's base image: the pinned Alpine, or the busybox rootfs where there is none
    release = ok(cli(cluster, "exec", "c1", "--", "sh", "-c", '. /etc/os-release; echo "$ID $VERSION_ID"'))
    assert release.strip() == lab.base_image().label
    assert ok(cli(cluster, "exec", "c1", "--", "hostname")) == "c1\n"
    assert ok(cli(cluster, "exec", "c1", "--", "cat", "/proc/1/cmdline")).split("\0")[:2] == ["sleep", "100000"]
    assert ps(cluster)["c1"]["state"] == "running"


def test_run_and_exec_take_the_command_without_double_dash_like_docker(cluster):
    name, ip = ok(cli(cluster, "run", "--host", "h2", "-n", "10.2.0.0/24", "--name", "nodash", "-d",
                      "sleep", "100000")).split()
    assert ok(cli(cluster, "exec", "nodash", "sh", "-c", "echo -- $(hostname)")) == "-- nodash\n"
    assert ok(cli(cluster, "exec", name, "--", "cat", "/proc/1/cmdline")).split("\0")[:2] == ["sleep", "100000"]
    container_id = ps(cluster)["nodash"]["id"]
    assert ok(cli(cluster, "exec", container_id[:6], "hostname")) == "nodash\n"  # an id prefix, as docker takes
    assert "nodash" in ok(cli(cluster, "ps", "-q")).splitlines()
    ok(cli(cluster, "rm", "-f", container_id))


def test_exit_codes_of_run_and_exec_are_propagated_and_stderr_stays_stderr(cluster, web):
    result = cli(cluster, "run", "--host", "h2", "-n", "10.2.0.0/24", "--name", "exits", "--",
                 "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert ps(cluster)["exits"]["state"] == "exited" and ps(cluster)["exits"]["exit_code"] == 7
    logs = cli(cluster, "logs", "exits")
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "out\n", "err\n")
    only_err, only_out = cli(cluster, "logs", "--stderr", "exits"), cli(cluster, "logs", "--stdout", "exits")
    assert (only_err.stdout, only_err.stderr, only_out.stdout, only_out.stderr) == ("", "err\n", "out\n", "")
    result = cli(cluster, "exec", "c1", "sh", "-c", "echo to-out; echo to-err >&2; exit 4")
    assert (result.returncode, result.stdout, result.stderr) == (4, "to-out\n", "to-err\n")
    ok(cli(cluster, "rm", "exits"))


@pytest.mark.parametrize("args, code, needle", [
    (["run", "--host", "h1", "-n", "10.2.0.0/24", "/no/such/program"], 127, "executable file not found"),
    (["run", "--host", "h1", "-n", "10.2.0.0/24", "-d", "/etc"], 126, "permission denied"),
    (["run", "--host", "h1", "-n", "10.2.0.0/24", "--image", "nosuchimage", "true"], 125, "unknown image"),
    (["run", "--host", "h1", "-n", "10.2.0.0/24", "--frob", "true"], 125, "unknown option --frob"),
    (["exec", "c1", "/no/such/program"], 127, "executable file not found"),
    (["exec", "c1", "/etc"], 126, "permission denied"),
    (["exec", "nosuch", "true"], 125, "no container named 'nosuch'"),
])
def test_run_and_exec_exit_codes_are_dockers(cluster, web, args, code, needle):
    """125: cantainer failed; 126: the command cannot be executed; 127: it does not exist — so a
    script can tell them from the container's own exit 1."""
    result = cli(cluster, *args)
    assert result.returncode == code, result
    assert needle in result.stderr
    assert not [name for name in ps(cluster) if name.startswith("c-")]  # nothing left behind


def test_logs_tail_since_and_time_stamps(cluster):
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.2.0.0/24", "--name", "counter",
           "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done"))
    assert ok(cli(cluster, "logs", "--tail", "2", "counter")) == "line 4\nline 5\n"
    stamped = ok(cli(cluster, "logs", "-t", "--tail", "1", "counter"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z line 5\n", stamped), stamped
    assert ok(cli(cluster, "logs", "--since", "1h", "counter")).count("line") == 5
    assert ok(cli(cluster, "logs", "--since", "2099-01-01T00:00:00Z", "counter")) == ""
    one_line_error(cli(cluster, "logs", "--since", "yesterday", "counter"), "--since", "10m")
    ok(cli(cluster, "rm", "counter"))


def test_exec_prints_exactly_the_commands_output_and_its_exit_code(cluster, web):
    result = cli(cluster, "exec", "c4", "--", "sh", "-c", "printf 'a b\\n'; exit 3")
    assert result.returncode == 3 and result.stdout == "a b\n"


def test_memory_limit_oom_kill_is_recorded(cluster):
    ok(cli(cluster, "run", "--host", "h3", "-n", "10.2.0.0/24", "--name", "hog", "-d", "--memory", "16m", "--",
           "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived"))
    deadline = time.monotonic() + 30
    while ps(cluster)["hog"]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    hog = ps(cluster)["hog"]
    assert hog["state"] == "exited" and hog["reason"] == "oom-killed" and hog["oom_killed"] is True, hog
    assert re.search(r"hog .* exited \(137\), oom-killed", ok(cli(cluster, "ps", "-a")))  # not only in --json
    ok(cli(cluster, "rm", "hog"))


def test_pids_limit_is_enforced(cluster):
    result = cli(cluster, "run", "--host", "h2", "-n", "10.2.0.0/24", "--name", "forks", "--pids", "4", "--",
                 "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait; echo finished")
    assert "can't fork" in result.stdout + result.stderr or "Resource temporarily unavailable" in result.stdout
    ok(cli(cluster, "rm", "forks"))


def test_stop_then_rm_frees_the_address_and_the_next_run_reuses_it(cluster, web):
    ok(cli(cluster, "run", "--host", "h2", "-n", "10.3.0.0/24", "--name", "first", "-d", "--", "sleep", "1000"))
    ok(cli(cluster, "run", "--host", "h2", "-n", "10.3.0.0/24", "--name", "second", "-d", "--", "sleep", "1000"))
    assert ps(cluster)["first"]["ip"] == "10.3.0.2"  # .1 is the gateway
    line = one_line_error(cli(cluster, "rm", "first"), "container first is running — stop it first, or use `rm -f`")
    assert line.count("stop it first") == 1 and line.count("rm -f") == 1  # the hint, once
    ok(cli(cluster, "stop", "first", "--time", "2"))
    assert ps(cluster)["first"]["state"] == "exited"
    ok(cli(cluster, "rm", "first"))
    assert "first" not in ps(cluster)
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.3.0.0/24", "--name", "third", "-d", "--", "sleep", "1000"))
    assert ps(cluster)["third"]["ip"] == "10.3.0.2"
    ok(cli(cluster, "rm", "-f", "second"))
    ok(cli(cluster, "rm", "-f", "third"))


def test_logs_are_kept_and_survive_an_agent_kill(lab, cluster):
    ok(cli(cluster, "run", "--host", "h3", "-n", "10.2.0.0/24", "--name", "talker", "-d", "--",
           "sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"))
    pid = host_exec(lab, "h3", "cat", layout.PID_FILE).stdout.split()[0]
    assert host_exec(lab, "h3", "kill", "-9", pid).returncode == 0
    time.sleep(1.0)  # the container keeps logging while no agent runs
    ok(cli(cluster, "up", str(cluster)))
    assert ps(cluster)["talker"]["state"] == "running"
    lines = ok(cli(cluster, "logs", "talker")).splitlines()
    assert len(lines) >= 5 and lines[0] == "line 0"
    assert ok(cli(cluster, "exec", "talker", "--", "echo", "still here")) == "still here\n"
    ok(cli(cluster, "rm", "-f", "talker"))


# -- overlay ----------------------------------------------------------------------------------------
def test_same_network_reaches_across_hosts_both_ways(cluster, web):
    assert pings(cluster, "c1", web["c2"]) and pings(cluster, "c2", web["c1"])
    assert pings(cluster, "c3", web["c4"]) and pings(cluster, "c4", web["c3"])


def test_networks_are_isolated_also_on_one_host(cluster, web):
    assert not pings(cluster, "c4", web["c1"])  # same host h1, other network
    assert not pings(cluster, "c3", web["c2"])
    assert not pings(cluster, "c1", web["c4"])


def test_mtu_is_underlay_minus_50_and_large_packets_cross_hosts(cluster, web):
    assert "mtu 1450" in ok(cli(cluster, "exec", "c1", "--", "ip", "link", "show", "eth0"))
    assert pings(cluster, "c1", web["c2"], size=1400)


def test_two_containers_on_one_host_and_subnet_ping_each_other(cluster, web):
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.0.0.0/24", "--name", "c5", "-d", "--", "sleep", "100000"))
    assert pings(cluster, "c5", web["c1"])
    ok(cli(cluster, "rm", "-f", "c5"))


def test_a_new_container_is_reachable_from_another_host_right_after_run(cluster, web):
    ip = ok(cli(cluster, "run", "--host", "h2", "-n", "10.0.0.0/24", "--name", "fresh", "-d", "--",
                "sleep", "100000")).split()[1]
    # ping sends one probe per second: within 3 probes means within ~2 s of `run` returning
    assert pings(cluster, "c1", ip, count=3) is True
    ok(cli(cluster, "rm", "-f", "fresh"))


def fdb(lab, host: str, device: str = "cvx-4096") -> str:
    """The VXLAN device's own forwarding entries (MAC → remote VTEP), not the bridge's learned ones."""
    lines = host_exec(lab, host, "bridge", "fdb", "show", "dev", device).stdout.splitlines()
    return "\n".join(line for line in lines if " dst " in line)


def test_agent_restart_leaves_correct_entries_untouched(lab, cluster, web):
    before_link = host_exec(lab, "h1", "ip", "-o", "link", "show", "cvx-4096").stdout.split(":")[0]
    before = fdb(lab, "h1")
    assert mac_for(web["c2"]) in before  # c2's MAC -> h2
    pid = host_exec(lab, "h1", "cat", layout.PID_FILE).stdout.split()[0]
    host_exec(lab, "h1", "kill", "-9", pid)
    ok(cli(cluster, "up", str(cluster)))
    time.sleep(1)
    assert host_exec(lab, "h1", "ip", "-o", "link", "show", "cvx-4096").stdout.split(":")[0] == before_link
    assert fdb(lab, "h1") == before


def test_containers_keep_talking_while_every_agent_is_down(lab, cluster, web):
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.0.0.0/24", "--name", "pinger", "-d", "--",
           "ping", "-i", "0.2", "-c", "25", web["c2"]))
    time.sleep(1.0)
    for host in ("h1", "h2", "h3"):
        pid = host_exec(lab, host, "cat", layout.PID_FILE).stdout.split()[0]
        assert host_exec(lab, host, "kill", "-9", pid).returncode == 0
    time.sleep(2.5)  # no agent anywhere while the pings flow
    for host in ("h1", "h2", "h3"):
        assert "cantainer_agent" not in host_exec(lab, host, "ps", "-eo", "args").stdout
    ok(cli(cluster, "up", str(cluster)))
    deadline = time.monotonic() + 15
    while ps(cluster)["pinger"]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    log = ok(cli(cluster, "logs", "pinger"))
    assert all_answered(log, 25), log
    ok(cli(cluster, "rm", "pinger"))


def test_rm_removes_every_entry_for_the_container_on_every_host(lab, cluster, web):
    ok(cli(cluster, "run", "--host", "h2", "-n", "10.0.0.0/24", "--name", "gone", "-d", "--", "sleep", "100000"))
    ip = ps(cluster)["gone"]["ip"]
    mac = "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))
    deadline = time.monotonic() + 5
    while mac not in fdb(lab, "h1") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mac in fdb(lab, "h1")
    ok(cli(cluster, "rm", "-f", "gone"))
    deadline = time.monotonic() + 5
    while mac in fdb(lab, "h1") and time.monotonic() < deadline:
        time.sleep(0.1)
    for host in ("h1", "h2", "h3"):
        assert mac not in fdb(lab, host)
        assert ip not in host_exec(lab, host, "ip", "neigh", "show", "dev", "cvx-4096").stdout


def test_crashed_host_is_reported_and_its_entries_go(lab, cluster, web):
    mac = "02:42:" + ":".join(f"{int(octet):02x}" for octet in web["c3"].split("."))
    assert mac in fdb(lab, "h1", "cvx-4097")  # c4@h1 shares c3's network
    lab.crash("h3")
    lab.boot("h3")
    ok(cli(cluster, "up", str(cluster)))
    deadline = time.monotonic() + 10
    while ps(cluster)["c3"]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    c3 = ps(cluster)["c3"]
    assert c3["state"] == "dead" and "process is gone" in c3["reason"], c3
    assert mac not in fdb(lab, "h1", "cvx-4097")
    assert web["c3"] not in host_exec(lab, "h1", "ip", "neigh", "show", "dev", "cvx-4097").stdout
    ok(cli(cluster, "rm", "c3"))


def test_a_down_hosts_containers_are_unknown_and_rm_f_frees_them_at_once(lab, cluster):
    """kubectl's Unknown and forced delete: while h3 is down its container shows `unknown` with the
    time since; logs/exec say the host is down in one line; `rm -f` frees the name and the address
    at once; h3 removes the leftover when it returns and never runs it again."""
    from tests.labcli import host_path, wait_for

    ok(cli(cluster, "run", "--host", "h3", "-n", "10.4.0.0/24", "--name", "ghost", "-d", "sleep", "100000"))
    ghost = ps(cluster)["ghost"]
    lab.crash("h3")
    try:
        wait_for(lambda: ps(cluster)["ghost"]["state"] == "unknown", 30, what="ghost to become unknown")
        seen = ps(cluster)["ghost"]
        assert seen["reason"] == "host h3 is down" and re.fullmatch(r"\d{4}-.*Z", seen["unknown_since"]), seen
        assert re.search(r"ghost .* unknown \(host h3 down \d+s\)", ok(cli(cluster, "ps"))), ok(cli(cluster, "ps"))
        one_line_error(cli(cluster, "logs", "ghost"), "container ghost is on host h3, which is down")
        result = cli(cluster, "exec", "ghost", "true")
        assert result.returncode == 125
        one_line_error(result, "host h3, which is down", "rm -f ghost")
        one_line_error(cli(cluster, "stop", "ghost"), "host h3, which is down", "cannot stop it")
        one_line_error(cli(cluster, "rm", "ghost"), "which is down and may still run it", "rm -f")
        assert "removed ghost (its host h3 is down" in ok(cli(cluster, "rm", "-f", "ghost"))
        assert "ghost" not in ps(cluster)
        _, ip = ok(cli(cluster, "run", "--host", "h1", "-n", "10.4.0.0/24", "--name", "ghost", "-d",
                       "sleep", "100000")).split()
        assert ip == ghost["ip"]  # the address was free at once
    finally:
        lab.boot("h3")
    ok(cli(cluster, "up", str(cluster)))
    leftover = host_path(lab, "h3", f"{layout.DATA_DIR}/containers/{ghost['id']}")
    wait_for(lambda: not leftover.exists(), 30, what="h3 to remove the leftover")
    again = ps(cluster)["ghost"]
    assert (again["host"], again["state"], again["id"]) == ("h1", "running", ps(cluster)["ghost"]["id"])
    assert again["id"] != ghost["id"]
    ok(cli(cluster, "rm", "-f", "ghost"))


# -- bad input: one clear line, nothing created -------------------------------------------------------
def write_inventory_with_image(lab, tmp_path: Path, name: str, tarball: Path, sha256: str) -> Path:
    text = lab.inventory_file.read_text()
    section = f'\n[images.{name}]\npath = "{tarball}"\nsha256 = "{sha256}"\n'
    hosts_at = text.index("[[hosts]]")
    path = tmp_path / "inventory.toml"
    path.write_text(text[:hosts_at] + section + "\n" + text[hosts_at:])
    return path


def test_tarball_with_traversal_and_escaping_symlink_is_refused(lab, cluster, tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, target in (("./bin", tarfile.DIRTYPE, ""), ("./bin/escape", tarfile.SYMTYPE, "/../../etc"),
                                   ("../../evil", tarfile.REGTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    tarball = tmp_path / "evil.tar.gz"
    tarball.write_bytes(gzip.compress(raw.getvalue()))
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    inventory = write_inventory_with_image(lab, tmp_path, "evil", tarball, sha)
    line = one_line_error(
        cli(inventory, "run", "--host", "h1", "-n", "10.9.0.0/24", "--image", "evil", "-d", "--", "true"),
        "image refused",
    )
    assert "evil" not in ps(cluster)
    assert host_exec(lab, "h1", "test", "-e", "/var/lib/evil").returncode != 0, line


def resize_interrupt_and_exit(tty: Tmux) -> None:
    """What a person does with a shell on a terminal: resize it, Ctrl-C a command, exit with a code."""
    tty.resize(120, 40)
    time.sleep(0.5)
    tty.send("stty size", "Enter", wait_for="40 120")
    tty.send("sleep 100", "Enter", wait_for="sleep 100")
    tty.send("C-c", wait_for="^C")
    tty.send("echo after-$((1+1))", "Enter", wait_for="after-2")
    tty.send("exit 5", "Enter", wait_for="EXIT=5")


def test_exec_it_is_a_real_interactive_terminal(cluster, web):
    """Through tmux, as a person would: resize, Ctrl-C, exit code."""
    session = "cantainer-test-tty"
    env = f"CANTAINER_INVENTORY={cluster}"
    command = f"{env} {sys.executable} -m cantainer.cli exec -it c1 -- sh; echo EXIT=$?; sleep 30"
    tty = Tmux(session, command)
    try:
        tty.send(wait_for="/ #")  # the shell's prompt: the terminal is live
        # busybox's line editor queries the terminal (ESC[6n) as it starts and eats keys typed
        # before the answer arrives; a person types later than tmux does.
        time.sleep(1.0)
        tty.send("echo hello-$((6*7)); stty size", "Enter", wait_for="hello-42")
        assert "30 100" in tty.screen()
        tty.send("echo $((40+2))-$TERM", "Enter", wait_for="42-")
        assert re.search(r"42-[a-z]", tty.screen()), tty.screen()  # TERM is set, as docker exec -t sets it
        resize_interrupt_and_exit(tty)
    finally:
        tty.close()


def test_run_it_gives_pid_1_a_real_interactive_terminal(cluster, web):
    """`run -it ... -- sh` through tmux, like docker run -it: prompt, size, resize, Ctrl-C, exit code."""
    session = "cantainer-test-run-tty"
    env = f"CANTAINER_INVENTORY={cluster}"
    command = (f"{env} {sys.executable} -m cantainer.cli run -it --host h3 -n 10.0.0.0/24 --name runtty -- sh; "
               "echo EXIT=$?; sleep 30")
    tty = Tmux(session, command)
    try:
        tty.send(wait_for="/ #")  # the first prompt is not lost: the container waits for the attach
        time.sleep(1.0)  # see test_exec_it_is_a_real_interactive_terminal
        tty.send("echo pid-$$; tty; stty size", "Enter", wait_for="pid-1")
        assert "/dev/pts/0" in tty.screen() and "30 100" in tty.screen(), tty.screen()
        tty.send("echo $((40+2))-$TERM", "Enter", wait_for="42-")
        assert re.search(r"42-[a-z]", tty.screen()), tty.screen()  # TERM is set, as docker run -t sets it
        resize_interrupt_and_exit(tty)
    finally:
        tty.close()
    assert ps(cluster)["runtty"]["state"] == "exited"
    assert "after-2" in ok(cli(cluster, "logs", "runtty"))


def test_run_i_pipes_stdin_and_returns_the_exit_code(cluster):
    result = subprocess.run(
        [sys.executable, "-m", "cantainer.cli", "run", "-i", "--host", "h2", "-n", "10.0.0.0/24", "--name", "runpipe",
         "--", "sh", "-c", "tr a-z A-Z; echo bye >&2; exit 3"],
        input="hello pipe\n", capture_output=True, text=True, timeout=120,
        env={**os.environ, "CANTAINER_INVENTORY": str(cluster)},
    )
    assert result.returncode == 3, result
    assert (result.stdout, result.stderr) == ("HELLO PIPE\n", "bye\n")




def foreground(cluster: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cantainer.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CANTAINER_INVENTORY": str(cluster)})


TRAPS_TERM = ["sh", "-c", "trap 'exit 5' TERM; echo up; while :; do sleep 0.1; done"]


@pytest.mark.parametrize("rm", [False, True], ids=["keep", "--rm"])
def test_ctrl_c_on_a_foreground_run_stops_the_container_and_says_so(cluster, rm):
    import signal

    name = "fgrm" if rm else "fg"
    process = foreground(cluster, *(["--rm"] if rm else []), "--host", "h2", "-n", "10.2.0.0/24", "--name", name,
                         *TRAPS_TERM)
    try:
        assert process.stdout.readline() == "up\n"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip() == f"cantainer: interrupted: container {name} stopped (exit 5){' and removed' if rm else ''}"
    if rm:
        assert name not in ps(cluster)
    else:
        assert (ps(cluster)[name]["state"], ps(cluster)[name]["exit_code"]) == ("exited", 5)
        ok(cli(cluster, "rm", name))


def test_run_rm_removes_the_container_once_it_exits(cluster):
    from tests.labcli import wait_for

    result = cli(cluster, "run", "--rm", "--host", "h1", "-n", "10.2.0.0/24", "--name", "once", "sh", "-c",
                 "echo bye; exit 3")
    assert (result.returncode, result.stdout) == (3, "bye\n")
    assert "once" not in ps(cluster)
    ok(cli(cluster, "run", "--rm", "-d", "--host", "h3", "-n", "10.2.0.0/24", "--name", "brief", "sleep", "1"))
    assert ps(cluster)["brief"]["auto_remove"] is True
    wait_for(lambda: "brief" not in ps(cluster), 30, what="h3 to remove brief after it exited")


def test_network_create_says_when_it_already_exists(cluster, web):
    assert ok(cli(cluster, "network", "create", "10.0.0.0/24")).strip() == (
        "net-10-0-0-0-24 10.0.0.0/24 vni 4096 gateway 10.0.0.1 (already exists)")
    created = ok(cli(cluster, "network", "create", "10.77.0.0/24")).strip()
    assert created.startswith("net-10-77-0-0-24 10.77.0.0/24 vni ") and "exists" not in created
    assert ok(cli(cluster, "network", "rm", "10.77.0.0/24")).strip() == "removed 10.77.0.0/24"
