"""Security, end to end on the lab: the agent API is reachable only as root through
its unix socket, no TCP API exists, the raft and join ports never act on (or unpickle) input from a
stranger, a changed host key is refused, the cluster secret stays 0600 and out of every output and
log, and no user string reaches a shell on the workstation, a host or in a container.

Every payload that would run a command is `touch /tmp/pwned-<random>`; a case passes only if that
file appears nowhere: not on the workstation, not on any host (their private /tmp, read through
/proc/<host init>/root), not in a container.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import pickle
import secrets
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from cantainer_agent import layout
from tests import udpnet
from tests.labcli import (
    cantainer,
    cli,
    cluster_snapshot,
    container_processes,
    host_exec,
    host_path,
    mac_for,
    ok,
    one_line_error,
    ps,
    status,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.reliability]
AREA = "Security"

HOSTS = ("h1", "h2", "h3")
NET = "10.72.0.0/24"


@pytest.fixture(scope="module")
def cluster(lab):
    """A cluster with one long-running container, `target` on h2."""
    inventory = lab.inventory_file
    ok(cli(inventory, "up", str(inventory)))
    try:
        ok(cli(inventory, "run", "--host", "h2", "-n", NET, "--name", "target", "-d", "--", "sleep", "100000"))
        yield inventory
    finally:
        cli(inventory, "down", "--purge")


@pytest.fixture
def marker(lab):
    """A fresh path a successful injection would create, removed wherever it appeared."""
    path = f"/tmp/pwned-{secrets.token_hex(5)}"
    yield path
    Path(path).unlink(missing_ok=True)
    for host in HOSTS:
        host_path(lab, host, path).unlink(missing_ok=True)


def shell_payload(path: str) -> str:
    """Every way a shell would run `touch path` from a string spliced into a command line."""
    return (f'$(touch {path}); touch {path}; `touch {path}` | touch {path} && touch {path}\n'
            f'touch {path} \'"$(touch {path})"\'')


def places_with(lab, inventory: Path, path: str, containers: tuple[str, ...] = ("target",)) -> list[str]:
    """Where `path` exists: the workstation, any lab host, any of `containers` (via exec)."""
    found = ["workstation"] if Path(path).exists() else []
    found += [host for host in HOSTS if host_path(lab, host, path).exists()]
    for name in containers:
        probe = cli(inventory, "exec", name, "--", "test", "-e", path)
        assert probe.returncode in (0, 1), probe  # 1 is "absent"; anything else means we could not look
        if probe.returncode == 0:
            found.append(name)
    return found


def searched(found: list[str], containers: tuple[str, ...]) -> str:
    """The report's figure for a places_with() search: how many places held the file, of how many."""
    places = ["workstation", *HOSTS, *containers]
    return f"in {len(found)} of {len(places)} places ({', '.join(places)})" + (f": {found}" if found else "")


def healthy(inventory: Path) -> bool:
    doc = status(inventory)
    return doc["leader"] in HOSTS and all(n["state"] == "up" for n in doc["nodes"]) and len(doc["nodes"]) == 3


def agent_pids(lab) -> dict[str, str]:
    return {host: host_path(lab, host, layout.PID_FILE).read_text().split()[0] for host in HOSTS}


# -- the agent API: root-only unix socket, no TCP ----------------------------------------------------------
_CONNECT = r"""
import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
    print("connected")
except OSError as error:
    print(type(error).__name__)
"""


def test_agent_socket_is_root_only(lab, cluster, measured):
    """Agent socket: mode 0600, owned by root, refused to a non-root user on the host"""
    for host in HOSTS:
        info = os.stat(host_path(lab, host, layout.SOCKET_PATH))
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
        assert (info.st_uid, info.st_gid) == (0, 0)
        run_dir = os.stat(host_path(lab, host, layout.RUN_DIR))
        assert run_dir.st_uid == 0 and not stat.S_IMODE(run_dir.st_mode) & 0o022  # nobody else may replace it
    result = host_exec(lab, "h1", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "python3", "-c", _CONNECT, layout.SOCKET_PATH)
    assert result.stdout.strip() == "PermissionError", result.stdout + result.stderr
    measured("socket", f"mode 0600 root:root; uid 65534 gets {result.stdout.strip()}")


def listening(lab, host: str) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket in the host's network namespace."""
    found = set()
    _, entry = lab.host(host)
    for name in ("tcp", "tcp6"):
        lines = Path(f"/proc/{entry.pid1.pid}/net/{name}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            if len(raw) == 4:
                text = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.add((text, int(port, 16)))
    return found


def test_no_tcp_api(lab, cluster, measured):
    """No TCP API: hosts listen on sshd, raft and join only, bound to the underlay address (and DNS on the
    gateways of their networks, which only that network's containers reach)"""
    state = lab.load()
    doc = status(cluster)
    for host in HOSTS:
        address = state.hosts[host].address
        local = {c["network"] for c in doc["containers"] if c["host"] == host and c["state"] == "running"}
        gateways = {(n["gateway"], 53) for n in doc["networks"] if n["cidr"] in local and n.get("gateway")}
        assert listening(lab, host) == {(address, 22), (address, 7480), (address, 7481)} | gateways
    measured("listening on h1", ", ".join(f"{a}:{p}" for a, p in sorted(listening(lab, "h1"))))


# -- raft and join ports: unauthenticated input is dropped, never unpickled --------------------------------
class Touch:
    """Unpickling this runs `touch <path>` (pickle calls os.system with the argument)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def raft_frames(path: str) -> list[bytes]:
    payload = pickle.dumps(Touch(path), protocol=2)
    framed = zlib.compress(payload)
    return [struct.pack("i", len(framed)) + framed, struct.pack("i", len(payload)) + payload, payload]


def join_lines(path: str) -> list[bytes]:
    payload = pickle.dumps(Touch(path), protocol=2)
    forged = json.dumps({"v": 1, "kind": "req", "ts": int(time.time()), "nonce": "0" * 32, "re": "",
                         "body": payload.decode("latin-1"), "mac": "0" * 64}).encode() + b"\n"
    return [payload + b"\n", forged]


PORT_CASES = [
    pytest.param(7480, lambda path: [os.urandom(4096)], id="raft port: 4 KiB of random bytes"),
    pytest.param(
        7480, raft_frames, id="raft port: pickles that run `touch` (raw, length-prefixed, zlib-framed as PySyncObj)"
    ),
    pytest.param(
        7480,
        lambda path: [struct.pack("i", 2**31 - 1) + b"x" * (256 * 1024)],
        id="raft port: frame announcing 2 GiB, 256 KiB sent",
    ),
    pytest.param(7481, lambda path: [b"garbage\n", b"{" * 5000 + b"\n"], id="join port: garbage lines"),
    pytest.param(7481, join_lines, id="join port: pickle that runs `touch`, raw and in a forged envelope"),
    pytest.param(7481, lambda path: [b"x" * (1 << 20)], id="join port: 1 MiB line"),
]


def send(address: str, port: int, data: bytes) -> str:
    """Send `data` on a fresh connection; what came back: the first bytes, 'closed' or 'reset'."""
    with socket.create_connection((address, port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(200)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except OSError as error:
            if error.errno != errno.ENOTCONN:  # the agent dropped it before we finished sending
                raise
            return "reset"
        except socket.timeout:
            return "no answer in 10 s"
    return answer.decode("latin-1").strip() if answer else "closed"


@pytest.mark.parametrize("port, messages", PORT_CASES)
def test_unauthenticated_input_on_raft_and_join_ports(lab, cluster, marker, measured, port, messages):
    before = agent_pids(lab)
    state = lab.load()
    answers = set()
    for host in HOSTS:
        for data in messages(marker):
            answer = send(state.hosts[host].address, port, data)
            assert answer in ("closed", "reset", '{"v":1,"kind":"reject","reason":"unauthenticated"}'), answer
            answers.add(answer)
    assert agent_pids(lab) == before  # no agent died
    wait_for(lambda: healthy(cluster), 30, what="a healthy cluster (3 up, one leader)")
    found = places_with(lab, cluster, marker, containers=())
    assert found == []
    measured("answers", " / ".join(sorted(answers)))
    measured("marker file", searched(found, ()))


# -- SSH host keys ----------------------------------------------------------------------------------------
def rotated_known_hosts(lab, tmp_path: Path) -> Path:
    """known_hosts where every lab host's address carries the next host's key: a man in the middle."""
    lines = (lab.dir / "known_hosts").read_text().splitlines()
    addresses = [line.split()[0] for line in lines]
    keys = [line.split(None, 1)[1] for line in lines]
    path = tmp_path / "known_hosts"
    path.write_text("".join(f"{addresses[i]} {keys[(i + 1) % len(keys)]}\n" for i in range(len(lines))))
    return path


def test_host_key_mismatch_is_refused(lab, cluster, tmp_path, measured):
    """Host key mismatch: refused by every command, also with accept-new; nothing changed"""
    known_hosts = rotated_known_hosts(lab, tmp_path)
    recorded = known_hosts.read_text()
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(lab.inventory_file.read_text().replace(str(lab.dir / "known_hosts"), str(known_hosts)))
    before = cluster_snapshot(lab, cluster)
    line = one_line_error(cli(inventory, "ps"), "does not match", "man-in-the-middle")
    measured("ps", line)
    for mode in ("strict", "accept-new"):
        text = lab.inventory_file.read_text().replace(str(lab.dir / "known_hosts"), str(known_hosts))
        inventory.write_text(text.replace("[defaults]\n", f'[defaults]\nhost_key_checking = "{mode}"\n', 1))
        result = cantainer("up", str(inventory))
        assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
        for host in HOSTS:
            assert f"{host}: host key of " in result.stdout and "does not match" in result.stdout, result.stdout
        assert "0/3 hosts ready" in result.stdout
    assert known_hosts.read_text() == recorded  # accept-new never replaces a recorded key
    assert cluster_snapshot(lab, cluster) == before


# -- the cluster secret --------------------------------------------------------------------------------------
def test_secret_files_are_0600_and_never_printed(lab, cluster, measured):
    """Cluster secret: 0600 on workstation and hosts, never in output, logs, argv, environment or containers"""
    workstation = lab.dir / "cluster.secret"
    assert stat.S_IMODE(workstation.stat().st_mode) == 0o600
    secret = workstation.read_text().strip()
    assert len(secret) >= 32
    outputs = [ok(cantainer("up", str(cluster))), ok(cantainer("status", "-i", str(cluster))),
               ok(cantainer("status", "--json", "-i", str(cluster))), ok(cli(cluster, "ps", "-a", "--json")),
               ok(cli(cluster, "logs", "target")), ok(cli(cluster, "exec", "target", "--", "env"))]
    texts = {f"output {i + 1}": text for i, text in enumerate(outputs)}
    modes = {"workstation": oct(stat.S_IMODE(workstation.stat().st_mode))}
    for host in HOSTS:
        for path in (layout.SECRET_FILE, layout.CONFIG_FILE):
            info = os.stat(host_path(lab, host, path))
            modes[f"{host}:{path}"] = f"{oct(stat.S_IMODE(info.st_mode))} uid {info.st_uid}"
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0, (host, path, oct(info.st_mode))
        assert host_path(lab, host, layout.SECRET_FILE).read_text().strip() == secret
        texts[f"{host} agent.log"] = host_path(lab, host, f"{layout.LOG_DIR}/agent.log").read_text(errors="replace")
        pid = host_path(lab, host, layout.PID_FILE).read_text().split()[0]
        process = host_exec(lab, host, "cat", f"/proc/{pid}/cmdline", f"/proc/{pid}/environ")
        assert process.returncode == 0
        texts[f"{host} agent argv+environ"] = process.stdout
    result = cli(cluster, "exec", "target", "--", "cat", layout.SECRET_FILE)
    assert result.returncode != 0  # not visible in a container
    texts["container read attempt"] = result.stdout + result.stderr
    holding = [where for where, text in texts.items() if secret in text]
    assert holding == [], holding
    measured("modes", ", ".join(sorted(set(modes.values()))))
    measured("secret found", f"in {len(holding)} of {len(texts)} texts searched ({', '.join(texts)})")


def test_secret_readable_by_others_is_refused(lab, cluster, tmp_path, measured):
    """Cluster secret readable by others: `up` refuses (one line, how to fix); nothing changed"""
    loose = tmp_path / "loose.secret"
    loose.write_bytes((lab.dir / "cluster.secret").read_bytes())
    loose.chmod(0o644)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(lab.inventory_file.read_text().replace(str(lab.dir / "cluster.secret"), str(loose)))
    before = cluster_snapshot(lab, cluster)
    line = one_line_error(cantainer("up", str(inventory)), str(loose), "accessible by group or others", "chmod 600")
    measured("error", line.replace(str(tmp_path), "$TMP"))
    assert cluster_snapshot(lab, cluster) == before


def test_new_secret_is_0600_in_a_0700_directory(lab, tmp_path, measured):
    """Cluster secret made by `up`: 0600 in a 0700 directory, not printed"""
    ghost = lab.load().network[200]  # nobody answers there: `up` makes the secret, then fails to connect
    secret_file = tmp_path / "fresh" / "dir" / "c.secret"
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f'[defaults]\nconnect_timeout = 1\nknown_hosts = "{tmp_path / "known_hosts"}"\n'
                         f'[cluster]\nname = "ghost"\nsecret_file = "{secret_file}"\n'
                         f'[[hosts]]\nname = "ghost"\naddress = "{ghost}"\n')
    result = cantainer("up", str(inventory))
    assert result.returncode == 1 and "ghost: unreachable" in result.stdout, result.stdout + result.stderr
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    assert secret_file.read_text().strip() not in result.stdout + result.stderr
    measured("modes", f"file {oct(stat.S_IMODE(secret_file.stat().st_mode))}, "
                      f"directory {oct(stat.S_IMODE(secret_file.parent.stat().st_mode))}")


# -- no shell injection --------------------------------------------------------------------------------------
def inject_run_args(lab, cluster, tmp_path, payload):
    """The payload as an argument of the container's command: the container's own sh prints "$1"."""
    result = cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "inj-args", "-d", "--",
                 "sh", "-c", 'printf "%s" "$1" > /tmp/seen; exec sleep 100000', "sh", payload)
    ok(result)
    wait_for(lambda: cli(cluster, "exec", "inj-args", "--", "cat", "/tmp/seen").stdout == payload, 30,
             what="the payload to arrive literally")
    return ("inj-args",)


def inject_env(lab, cluster, tmp_path, payload):
    ok(cli(cluster, "run", "--host", "h3", "-n", NET, "--name", "inj-env", "-e", f"X={payload}", "-d", "--",
           "sleep", "100000"))
    # what printenv does, in sh (busybox-static has no printenv): "$X" is expanded once, never re-parsed
    assert ok(cli(cluster, "exec", "inj-env", "--", "sh", "-c", 'printf "%s\\n" "$X"')) == payload + "\n"
    return ("inj-env",)


def inject_exec(lab, cluster, tmp_path, payload):
    assert ok(cli(cluster, "exec", "target", "--", "echo", payload)) == payload + "\n"
    return ()


def inject_logs_name(lab, cluster, tmp_path, payload):
    for verb in ("logs", "rm", "stop"):
        one_line_error(cli(cluster, verb, payload), "no container named")
    return ()


def refused(*args, needles=()):
    def inject(lab, cluster, tmp_path, payload):
        one_line_error(cli(cluster, *[payload if arg is None else arg for arg in args]), *needles)
        return ()
    return inject


def inject_inventory_image(lab, cluster, tmp_path, payload):
    tarball = tmp_path / "image.tar.gz"
    tarball.write_bytes(b"x")
    section = f'[images.{json.dumps(payload)}]\npath = "{tarball}"\nsha256 = "{"0" * 64}"\n\n'
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(lab.inventory_file.read_text().replace("[[hosts]]", section + "[[hosts]]", 1))
    one_line_error(cli(inventory, "run", "--host", "h1", "-n", NET, "--image", payload, "-d", "--", "true"),
                   "is not a valid image name")
    return ()


INJECTION_CASES = [
    pytest.param(inject_run_args, id="shell payload as container command argument (run)"),
    pytest.param(inject_env, id="shell payload as environment value (run -e)"),
    pytest.param(inject_exec, id="shell payload as exec argument"),
    pytest.param(refused("run", "--host", "h1", "-n", NET, "--name", None, "-d", "--", "true", needles=["is invalid"]),
                 id="shell payload as container name (run --name): refused"),
    pytest.param(inject_logs_name, id="shell payload as container name (logs, rm, stop): not found"),
    pytest.param(refused("run", "--host", "h1", "-n", NET, "--image", None, "-d", "--", "true",
                         needles=["is invalid"]), id="shell payload as image name (run --image): refused"),
    pytest.param(inject_inventory_image, id="shell payload as image name in the inventory: refused"),
    pytest.param(refused("run", "--host", "h1", "-n", NET, "-w", None, "-d", "--", "true",
                         needles=["is not an absolute path"]),
                 id="shell payload as working directory (run -w): refused"),
    pytest.param(refused("run", "--host", "h1", "-n", None, "-d", "--", "true", needles=["not a valid CIDR"]),
                 id="shell payload as network (run -n): refused"),
    pytest.param(refused("run", "--host", None, "-n", NET, "-d", "--", "true", needles=["unknown host"]),
                 id="shell payload as host (run --host): refused"),
]


@pytest.mark.parametrize("inject", INJECTION_CASES)
def test_no_shell_injection(lab, cluster, tmp_path, marker, measured, inject):
    payload = shell_payload(marker)
    created: tuple[str, ...] = ()
    try:
        created = inject(lab, cluster, tmp_path, payload)
        found = places_with(lab, cluster, marker, ("target", *created))
        assert found == []
    except BaseException:
        for name in set(ps(cluster)) - {"target", *created}:  # what a failed case left must not fail the next
            cli(cluster, "rm", "-f", name)
        raise
    finally:
        for name in created:
            cli(cluster, "rm", "-f", name)
    assert set(ps(cluster)) == {"target"}
    measured("marker file", searched(found, ("target", *created)))


# == issue 22: the overlay, the join and raft ports, containers, host keys ==================================
REPO = Path(__file__).resolve().parents[2]
OTHER_NET = "10.73.0.0/24"
PORT = 5555
VXLAN = layout.VXLAN_PORT


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 packet carrying one UDP datagram (UDP checksum 0: none, as VXLAN senders do)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def ethernet(dst_mac: str, src_mac: str, packet: bytes) -> bytes:
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00" + packet


def vxlan(vni: int, frame: bytes) -> bytes:
    return struct.pack("!B3xI", 0x08, vni << 8) + frame


def network_vni(inventory: Path, cidr: str) -> int:
    return next(n["vni"] for n in status(inventory)["networks"] if n["cidr"] == cidr)


def nft_counters(lab, host: str) -> dict[str, int]:
    """Packets counted by each rule of `host`'s table inet cantainer, by comment (same comments summed)."""
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]);"
              "from cantainer_agent.netfilter import Nft, ruleset;"
              "print(json.dumps(Nft().run(ruleset.list_command())))")
    bundle = layout.bundle_dir(json.loads(host_path(lab, host, layout.CONFIG_FILE).read_text())["bundle"])
    result = host_exec(lab, host, "python3", "-c", script, bundle)  # the host's python, the agent's bundle
    assert result.returncode == 0, result.stderr
    counts: dict[str, int] = {}
    for item in json.loads(result.stdout):
        rule = item.get("rule")
        if rule and any("counter" in e for e in rule["expr"]):  # accept rules count nothing
            packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            counts[rule["comment"]] = counts.get(rule["comment"], 0) + packets
    return counts


def rp_filter_drops(lab, host: str) -> int:
    """The kernel's count of packets dropped by reverse-path filtering in `host`'s network namespace."""
    _, entry = lab.host(host)
    lines = Path(f"/proc/{entry.pid1.pid}/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["IPReversePathFilter"])
    raise AssertionError("no TcpExt line in netstat")


@pytest.fixture
def receiver(lab, cluster):
    """`rx` on h1 in NET and an endpoint in its network namespace recording every UDP datagram to
    PORT until 'legit' comes (tests/udpnet.py)."""
    name = f"rx-{secrets.token_hex(2)}"
    ok(cli(cluster, "run", "--host", "h1", "-n", NET, "--name", name, "-d", "--", "sleep", "100000"))
    try:
        record = ps(cluster)[name]
        pid = container_processes(lab, "h1")[record["id"]]["pid"]
        with udpnet.receiver(lab, "h1", pid, PORT, until=b"legit\n") as endpoint:
            yield endpoint, record["ip"]
    finally:
        cli(cluster, "rm", "-f", name)


def legit_datagram_then_read(lab, inventory: Path, endpoint: udpnet.Endpoint, ip: str) -> list[bytes]:
    """Send 'legit' from `target` (h2, the member path); every datagram the receiver got, in order."""
    target = container_processes(lab, "h2")[ps(inventory)["target"]["id"]]["pid"]
    udpnet.send(lab, "h2", target, ip, PORT, b"legit\n")
    return endpoint.finish(timeout=30)


def test_vxlan_from_a_non_member_is_dropped(lab, cluster, receiver, measured):
    """VXLAN from a non-member underlay address (the workstation) never reaches a container or its bridge"""
    endpoint, ip = receiver
    state = lab.load()
    vni = network_vni(cluster, NET)
    forged_mac = "02:42:0a:48:00:63"  # a container of NET that does not exist
    inner = ethernet(mac_for(ip), forged_mac, ipv4_udp("10.72.0.99", ip, 40000, PORT, b"FORGED\n"))
    before = nft_counters(lab, "h1").get("VXLAN from cluster members only", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((str(state.network[1]), 0))  # the workstation: on the underlay, not a member
        for _ in range(3):
            sock.sendto(vxlan(vni, inner), (state.hosts["h1"].address, VXLAN))
    got = legit_datagram_then_read(lab, cluster, endpoint, ip)
    assert got == [b"legit\n"], got  # the forged datagrams (sent first) never arrived
    dropped = nft_counters(lab, "h1")["VXLAN from cluster members only"] - before
    assert dropped == 3
    learned = host_exec(lab, "h1", "bridge", "fdb", "show", "br", f"cbr-{vni}").stdout
    assert forged_mac not in learned  # and the bridge learned nothing from it
    measured("forged VXLAN datagrams", f"3 sent from {state.network[1]}, {dropped} dropped by nftables on h1; "
                                       f"the receiver got {[d.decode().strip() for d in got]}")


def test_container_with_raw_sockets_cannot_reach_another_network(lab, cluster, receiver, measured):
    """A container of another network with CAP_NET_RAW forges VXLAN to its host: nothing crosses"""
    endpoint, ip = receiver
    state = lab.load()
    vni = network_vni(cluster, NET)
    ok(cli(cluster, "run", "--host", "h1", "-n", OTHER_NET, "--name", "raw", "--cap-add", "NET_RAW", "-d", "--",
           "sleep", "100000"))
    try:
        caps = cli(cluster, "exec", "raw", "--", "grep", "CapEff", "/proc/self/status").stdout
        assert int(caps.split()[1], 16) & (1 << 13)  # --cap-add NET_RAW gave it raw sockets
        attacker = ps(cluster)["raw"]
        pid = container_processes(lab, "h1")[attacker["id"]]["pid"]
        bridge_mac = host_exec(lab, "h1", "cat", f"/sys/class/net/cbr-{network_vni(cluster, OTHER_NET)}/address")
        inner = ethernet(mac_for(ip), mac_for("10.72.0.98"), ipv4_udp("10.72.0.98", ip, 40001, PORT, b"CROSSED\n"))
        # outer source: a member's address (h2), so only where it comes from can give it away
        outer = ipv4_udp(state.hosts["h2"].address, state.hosts["h1"].address, 40002, VXLAN, vxlan(vni, inner))
        frames = [ethernet("ff:ff:ff:ff:ff:ff", attacker["mac"], outer),  # to everyone on its bridge
                  ethernet(bridge_mac.stdout.strip(), attacker["mac"], outer)]  # to the bridge (the host) itself
        script = ("import socket, sys; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0));"
                  "[s.send(bytes.fromhex(f)) for f in sys.argv[1:] for _ in range(3)]")
        before = nft_counters(lab, "h1"), rp_filter_drops(lab, "h1")
        # the sender runs in the container's network namespace with raw sockets, as code in the container
        # could (Alpine has no packet tool: the host's python3 does the sending)
        sent = host_exec(lab, "h1", "nsenter", "-t", str(pid), "-n", "python3", "-c", script,
                         *(frame.hex() for frame in frames))
        assert sent.returncode == 0, sent.stderr
        got = legit_datagram_then_read(lab, cluster, endpoint, ip)
        assert got == [b"legit\n"], got  # nothing crossed into NET (sent first, it would have come first)
        nft = nft_counters(lab, "h1").get("tenant bridges never reach the host", 0) - \
            before[0].get("tenant bridges never reach the host", 0)
        rpf = rp_filter_drops(lab, "h1") - before[1]
        # the bridge's rp_filter stops the unicast frames before nftables sees them (nftables stops them
        # alone where rp_filter is off: tests/agent/netfilter); drop_unicast_in_l2_multicast the broadcast ones
        assert rpf + nft >= 3, (rpf, nft)
        for other in (OTHER_NET,):
            other_vni = network_vni(cluster, other)
            for setting in ("rp_filter", "drop_unicast_in_l2_multicast"):
                value = host_exec(lab, "h1", "sysctl", "-n", f"net.ipv4.conf.cbr-{other_vni}.{setting}").stdout
                assert value.strip() == "1", (setting, value)
        measured("forged frames", f"6 sent from a NET_RAW container of {OTHER_NET} (3 broadcast, 3 to the bridge): "
                                  f"{rpf} stopped by rp_filter, {nft} by nftables, 0 delivered into {NET}")
    finally:
        cli(cluster, "rm", "-f", "raw")


def test_no_raw_sockets_nested_user_namespaces_or_unconfined_by_default(lab, cluster, measured):
    """Default container: no CAP_NET_RAW (ping still works), seccomp filter on, `unshare -U -r` refused"""
    status_lines = ok(cli(cluster, "exec", "target", "--", "grep", "-E", "^(CapEff|Seccomp|NoNewPrivs)",
                          "/proc/self/status"))
    fields = dict(line.split(":\t") for line in status_lines.splitlines())
    assert not int(fields["CapEff"], 16) & (1 << 13) and fields["Seccomp"].strip() == "2"
    assert fields["NoNewPrivs"].strip() == "1"
    nested = cli(cluster, "exec", "target", "--", "unshare", "-U", "-r", "-m", "-n", "sh", "-c",
                 "mount -t tmpfs none /mnt && echo mounted")
    assert nested.returncode != 0 and "mounted" not in nested.stdout
    assert "Operation not permitted" in nested.stderr + nested.stdout, nested
    h1_peer = ps(cluster)["target"]["ip"]
    ok(cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "pinger", "-d", "--", "sleep", "100000"))
    ok(cli(cluster, "run", "--host", "h3", "-n", NET, "--name", "open", "--security-opt", "seccomp=unconfined", "-d",
           "--", "sleep", "100000"))
    try:
        ok(cli(cluster, "exec", "pinger", "--", "ping", "-c", "1", "-W", "5", h1_peer))  # ICMP socket, no raw one
        opened = ok(cli(cluster, "exec", "open", "--", "unshare", "-U", "-r", "sh", "-c",
                        "grep -E '^(CapEff|Seccomp):' /proc/self/status"))
        assert "Seccomp:\t0" in opened  # the opt-out works, and is visible
    finally:
        cli(cluster, "rm", "-f", "pinger")
        cli(cluster, "rm", "-f", "open")
    refusal = (nested.stderr + nested.stdout).strip().splitlines()[-1]
    measured("default container", f"CapEff {fields['CapEff'].strip()}, Seccomp {fields['Seccomp'].strip()}, "
                                  f"NoNewPrivs {fields['NoNewPrivs'].strip()}; unshare -U -r: {refusal!r}")


@pytest.fixture
def stranger(lab):
    """A namespace on the lab's underlay that is no cluster member (a host about to join, say)."""
    from lab import underlay

    state = lab.load()
    ns, veth = underlay.netns_name(lab.name, "stranger"), underlay.veth_name(lab.name, "s9")
    address = ipaddress.ip_interface(f"{state.network[200]}/{state.network.prefixlen}")
    underlay.ensure_netns(ns)
    try:
        underlay.ensure_host_link(underlay.bridge_name(lab.name), veth, ns, address, 1500)
        yield ns, str(address.ip)
    finally:
        underlay.delete_links([veth])
        underlay.remove_netns(ns)


SIGNED_PING = r"""
import sys
sys.path.insert(0, sys.argv[1])
from cantainer_agent.join.wire import request
secret = open(sys.argv[2], "rb").read().strip()
body = request(sys.argv[3], secret, "ping", {}, timeout=10)
print("ok" if body.get("ok") else body)
"""


def signed_ping_from(ns: str, lab, target: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SIGNED_PING, str(REPO / "agent"),
                             str(lab.dir / "cluster.secret"), target], capture_output=True, text=True, timeout=60)
    return result.stdout.strip() or result.stderr.strip().splitlines()[-1]


def test_slow_strangers_cannot_starve_the_join_port(lab, cluster, stranger, measured):
    """Join port slowloris: 40 connections trickling a byte every 4 s; signed requests of a stranger still served"""
    ns, _ = stranger
    state = lab.load()
    h1 = (state.hosts["h1"].address, layout.JOIN_PORT)
    slow = []
    try:
        for _ in range(40):
            sock = socket.create_connection(h1, timeout=10, source_address=(str(state.network[1]), 0))
            slow.append(sock)
        answers = []
        alive = set(range(len(slow)))
        for _ in range(4):  # ~16 s: each connection sends more often than the old 5 s read timeout
            for index in list(alive):
                try:
                    slow[index].sendall(b"{")
                except OSError:
                    alive.discard(index)  # the agent closed it: as it should, at its deadline
            answers.append(signed_ping_from(ns, lab, f"{h1[0]}:{h1[1]}"))
            time.sleep(4)
        assert answers == ["ok"] * 4, answers
        assert len(alive) < len(slow), "the agent kept every trickling connection"
    finally:
        for sock in slow:
            sock.close()
    assert healthy(cluster)
    measured("signed requests during the attack", f"{answers.count('ok')}/4 answered; "
                                                 f"{len(slow) - len(alive)}/40 slow connections closed by the agent")


def log_size(lab, host: str) -> int:
    return host_path(lab, host, f"{layout.LOG_DIR}/agent.log").stat().st_size


def test_a_flood_of_rejected_connections_costs_a_few_log_lines(lab, cluster, measured):
    """Log flood: 3000 garbage connections to the join port and 1000 to the raft port grow agent.log by < 4 KiB"""
    state = lab.load()
    h1 = state.hosts["h1"].address
    before = log_size(lab, "h1")
    flooded = {layout.JOIN_PORT: 3000, layout.RAFT_PORT: 1000}
    for port, count in flooded.items():
        for _ in range(count):
            try:
                with socket.create_connection((h1, port), timeout=10) as sock:
                    sock.sendall(b"garbage\n" if port == layout.JOIN_PORT else os.urandom(70 * 1024))
            except OSError:
                pass  # dropped unread: fine

    def summary() -> str | None:  # every rejection is reported: the first at once, the rest summarised
        text = host_path(lab, "h1", f"{layout.LOG_DIR}/agent.log").read_bytes()[before:].decode("utf-8", "replace")
        return text if "more connection(s)" in text else None

    text = wait_for(summary, 60, what="the rejection summary")
    grown = log_size(lab, "h1") - before
    assert grown < 4096, text
    assert "join port: rejected" in text
    assert healthy(cluster)
    measured("agent.log growth", f"{grown} bytes for {sum(flooded.values())} rejected connections")


def test_fork_bomb_stops_at_the_pids_limit_and_the_host_keeps_answering(lab, cluster, measured):
    """Fork bomb in a container: stopped by the default pids limit; agent, raft and other containers unaffected"""
    ok(cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "bomb", "-d", "--",
           "sh", "-c", "f() { f | f & }; f; sleep 100000"))
    try:
        cid = ps(cluster)["bomb"]["id"]
        cgroup = host_path(lab, "h1", f"/sys/fs/cgroup/pids/cantainer/{cid}")
        assert (cgroup / "pids.max").read_text().strip() == str(layout.CONTAINER_PIDS)
        parent = int((cgroup.parent / "pids.max").read_text())
        seen = host_exec(lab, "h1", "cat", "/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max").stdout.split()
        tasks = min(map(int, seen))  # as the host sees it (a lab host's pid namespace has its own pid_max)
        assert parent == tasks - max(1024, tasks // 10)  # all containers together leave the host headroom
        wait_for(lambda: int((cgroup / "pids.current").read_text()) >= layout.CONTAINER_PIDS - 8, 60,
                 what="the bomb to reach its limit")
        # while it runs at its limit: the agent answers, raft commits, containers start and exec
        assert healthy(cluster)
        ok(cli(cluster, "run", "--host", "h1", "-n", NET, "--name", "bystander", "-d", "--", "sleep", "100000"))
        assert ok(cli(cluster, "exec", "bystander", "--", "echo", "alive")) == "alive\n"
        peak = int((cgroup / "pids.current").read_text())
        assert peak <= layout.CONTAINER_PIDS
    finally:
        ok(cli(cluster, "rm", "-f", "bomb"))
        cli(cluster, "rm", "-f", "bystander")
    assert healthy(cluster)
    measured("fork bomb", f"held at {peak}/{layout.CONTAINER_PIDS} tasks; status, run and exec on h1 answered")


# -- accept-new asks asyncssh's own lookup --------------------------------------------------------------------
def ssh_home(tmp_path: Path, config: str) -> dict:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / ".ssh" / "config").write_text(config)
    return {"HOME": str(home)}


def accept_new_inventory(lab, tmp_path: Path, addresses: dict[str, str] | None = None) -> Path:
    text = lab.inventory_file.read_text().replace(f'known_hosts = "{lab.dir / "known_hosts"}"\n', "")
    text = text.replace("[defaults]\n", '[defaults]\nhost_key_checking = "accept-new"\n', 1)
    for old, new in (addresses or {}).items():
        text = text.replace(f'address = "{old}"', f'address = "{new}"')
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    return path


def wrong_keys(lab) -> dict[str, str]:
    """address -> the next host's key line: what a man in the middle would present (rotated)."""
    lines = (lab.dir / "known_hosts").read_text().splitlines()
    return {lines[i].split()[0]: lines[(i + 1) % len(lines)].split(None, 1)[1] for i in range(len(lines))}


def test_accept_new_honours_global_known_hosts_file(lab, cluster, tmp_path, measured):
    """accept-new: a key recorded only in GlobalKnownHostsFile counts, a different key is refused"""
    global_file = tmp_path / "ssh_known_hosts"
    global_file.write_text("".join(f"{address} {key}\n" for address, key in wrong_keys(lab).items()))
    env = ssh_home(tmp_path, f"Host *\n  GlobalKnownHostsFile {global_file}\n")
    before = cluster_snapshot(lab, cluster)
    result = cantainer("up", str(accept_new_inventory(lab, tmp_path)), env=env)
    assert result.returncode == 1 and "0/3 hosts ready" in result.stdout, result.stdout + result.stderr
    refusals = result.stdout.count("does not match the key recorded")
    assert refusals == 3
    assert not (tmp_path / "home" / ".ssh" / "known_hosts").exists()  # nothing recorded
    assert cluster_snapshot(lab, cluster) == before
    measured("up", f"{refusals} of {len(HOSTS)} hosts refused (key differs from GlobalKnownHostsFile)")


def test_accept_new_honours_host_key_alias_and_the_peer_ip(lab, cluster, tmp_path, measured):
    """accept-new: entries under a HostKeyAlias or under the host's IP (inventory names a DNS alias) count"""
    state = lab.load()
    keys = wrong_keys(lab)
    h1, h2, h3 = (state.hosts[h].address for h in HOSTS)
    known = tmp_path / "home" / ".ssh" / "known_hosts"
    env = ssh_home(tmp_path, f"Host {h1}\n  HostKeyAlias h1-alias\nHost h2name\n  HostName {h2}\n")
    # h1 under its alias, h2 under its IP while the inventory calls it h2name, h3 plainly
    known.write_text(f"h1-alias {keys[h1]}\n{h2} {keys[h2]}\n{h3} {keys[h3]}\n")
    before = cluster_snapshot(lab, cluster)
    result = cantainer("up", str(accept_new_inventory(lab, tmp_path, {h2: "h2name"})), env=env)
    assert result.returncode == 1 and "0/3 hosts ready" in result.stdout, result.stdout + result.stderr
    for host in HOSTS:
        assert f"{host}: host key of " in result.stdout, result.stdout
    refused_hosts = [host for host in HOSTS if f"{host}: host key of " in result.stdout]
    assert result.stdout.count("does not match the key recorded") == 3
    assert cluster_snapshot(lab, cluster) == before
    measured("up", f"refused {refused_hosts} (h1 recorded under its HostKeyAlias, h2 under its IP "
                   f"while reached as h2name, h3 plainly)")


def test_accept_new_records_a_really_new_host_and_then_checks_it(lab, cluster, tmp_path, measured):
    """accept-new: a host with no entry anywhere is recorded once, then checked strictly"""
    env = ssh_home(tmp_path, "")
    inventory = accept_new_inventory(lab, tmp_path)
    ok(cantainer("up", str(inventory), env=env))
    recorded = (tmp_path / "home" / ".ssh" / "known_hosts").read_text()
    assert len(recorded.splitlines()) == 3
    strict = inventory.read_text().replace('host_key_checking = "accept-new"\n', "")
    inventory.write_text(strict)
    ok(cantainer("up", str(inventory), env=env))  # strict mode trusts what accept-new recorded
    assert (tmp_path / "home" / ".ssh" / "known_hosts").read_text() == recorded
    measured("known_hosts", f"{len(recorded.splitlines())} keys recorded by accept-new, "
                            "then accepted by strict checking")
