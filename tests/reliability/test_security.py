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
import json
import os
import pickle
import secrets
import socket
import stat
import struct
import time
import zlib
from pathlib import Path

import pytest

from cantainer_agent import layout
from tests.labcli import (
    cantainer,
    cli,
    cluster_snapshot,
    host_exec,
    host_path,
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
    found += [name for name in containers if cli(inventory, "exec", name, "--", "test", "-e", path).returncode == 0]
    return found


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
    """No TCP API: hosts listen on sshd, raft and join only, bound to the underlay address"""
    state = lab.load()
    for host in HOSTS:
        address = state.hosts[host].address
        assert listening(lab, host) == {(address, 22), (address, 7480), (address, 7481)}
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
    assert places_with(lab, cluster, marker, containers=()) == []
    assert agent_pids(lab) == before  # no agent died
    wait_for(lambda: healthy(cluster), 30, what="a healthy cluster (3 up, one leader)")
    assert not Path(marker).exists() and not any(host_path(lab, h, marker).exists() for h in HOSTS)
    measured("answers", " / ".join(sorted(answers)))
    measured("file created", "nowhere")


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
    assert all(secret not in text for text in outputs)
    for host in HOSTS:
        for path in (layout.SECRET_FILE, layout.CONFIG_FILE):
            info = os.stat(host_path(lab, host, path))
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0, (host, path, oct(info.st_mode))
        assert host_path(lab, host, layout.SECRET_FILE).read_text().strip() == secret
        assert secret not in host_path(lab, host, f"{layout.LOG_DIR}/agent.log").read_text(errors="replace")
        pid = host_path(lab, host, layout.PID_FILE).read_text().split()[0]
        process = host_exec(lab, host, "cat", f"/proc/{pid}/cmdline", f"/proc/{pid}/environ")
        assert process.returncode == 0 and secret not in process.stdout
    result = cli(cluster, "exec", "target", "--", "cat", layout.SECRET_FILE)
    assert result.returncode != 0 and secret not in result.stdout + result.stderr  # not visible in a container
    measured("modes", "0600 root on workstation and every host; not found in 6 outputs, 3 agent logs, argv, environ")


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
    measured("modes", "file 0600, directory 0700")


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
    assert ok(cli(cluster, "exec", "inj-env", "--", "printenv", "X")) == payload + "\n"
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
                         needles=["unknown image"]), id="shell payload as image name (run --image): refused"),
    pytest.param(inject_inventory_image, id="shell payload as image name in the inventory: refused"),
    pytest.param(refused("run", "--host", "h1", "-n", NET, "-w", None, "-d", "--", "true", needles=[]),
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
        assert places_with(lab, cluster, marker, ("target", *created)) == []
    finally:
        for name in created:
            cli(cluster, "rm", "-f", name)
    assert set(ps(cluster)) == {"target"}
    measured("file created", "nowhere (workstation, 3 hosts, " + ", ".join(("target", *created)) + ")")
