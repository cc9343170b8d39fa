"""Bad input: every mistake a user can make is answered with one clear line —
what is wrong, where, how to fix it — a non-zero exit, no traceback, and nothing changed.

All cases run end to end against one lab cluster: the real CLI as a subprocess, the real agents.
"Nothing changed" is checked after every case against a snapshot taken once when the cluster was
set up (tests.labcli.cluster_snapshot: containers, networks, agent pids, agent config and secret
on every host, the workstation's known_hosts and secret). Agent API cases talk to the agent's unix
socket from inside a lab host; the agent answers with an error line and keeps serving.
"""
from __future__ import annotations

import gzip
import secrets
from pathlib import Path
from typing import Callable

import pytest

from cantainer_agent import protocol
from tests.labcli import agent_call, agent_raw, cantainer, cli, cluster_snapshot, host_path, ok, one_line_error

pytestmark = [pytest.mark.lab, pytest.mark.reliability]
AREA = "Bad input"

HOSTS = ("h1", "h2", "h3")
USED = "10.70.0.0/24"   # holds `base`
FULL = "10.71.0.0/30"   # its gateway and its one container address taken
FREE = "10.79.0.0/24"   # never created: a run that fails on it must not create it either
MARKER = f"/tmp/pwned-bad-input-{secrets.token_hex(4)}"  # what a shell payload in a name would create


@pytest.fixture(scope="module")
def world(lab):
    """A cluster with `base` on USED and FULL exhausted; its snapshot is what every case must leave."""
    inventory = lab.inventory_file
    ok(cli(inventory, "up", str(inventory)))
    try:
        ok(cli(inventory, "run", "--host", "h1", "-n", USED, "--name", "base", "-d", "--", "sleep", "100000"))
        ok(cli(inventory, "run", "--host", "h1", "-n", FULL, "--name", "full1", "-d", "--", "sleep", "100000"))
        yield {"inventory": inventory, "snapshot": cluster_snapshot(lab, inventory)}
    finally:
        cli(inventory, "down", "--purge")
        Path(MARKER).unlink(missing_ok=True)  # only there if a case failed


def assert_nothing_changed(lab, world) -> None:
    assert cluster_snapshot(lab, world["inventory"]) == world["snapshot"]
    assert not Path(MARKER).exists()
    for host in HOSTS:
        assert not host_path(lab, host, MARKER).exists(), f"{MARKER} appeared on {host}"


def variant(lab, tmp_path: Path, edit: Callable[[str], str]) -> Path:
    """A copy of the lab's (working) inventory with one mistake made by `edit`."""
    path = tmp_path / "inventory.toml"
    path.write_text(edit(lab.inventory_file.read_text()))
    return path


def add_host(text: str, name: str, address: str | None) -> str:
    return text + f'\n[[hosts]]\nname = "{name}"\n' + (f'address = "{address}"\n' if address else "")


def first_address(text: str) -> str:
    return text.split('address = "', 1)[1].split('"', 1)[0]


# -- inventory: `up` with a broken inventory ------------------------------------------------------------
INVENTORY_CASES = [
    pytest.param(None, ["no such inventory file", "-i PATH"], id="inventory: missing file"),
    pytest.param(lambda text: "", ["the file is empty"], id="inventory: empty file"),
    pytest.param(
        lambda text: text + "\n[[hosts]\n", ["invalid TOML", "fix the TOML syntax"], id="inventory: invalid TOML"
    ),
    pytest.param(
        lambda text: text.replace("[cluster]\n", '[cluster]\ncolour = "red"\n', 1),
        ["colour", "unknown key"],
        id="inventory: unknown key",
    ),
    pytest.param(
        lambda text: add_host(text, "h1", "198.18.0.250"),
        ['"h1" is already the name of hosts[0]', "unique"],
        id="inventory: duplicate host name",
    ),
    pytest.param(
        lambda text: add_host(text, "h4", first_address(text)),
        ["is already used by", "h1"],
        id="inventory: duplicate host address",
    ),
    pytest.param(
        lambda text: add_host(text, "h4", None),
        ["address", "missing", "add address ="],
        id="inventory: host without address",
    ),
    pytest.param(
        lambda text: add_host(text, "h4", "not a host!"),
        ["not a valid IP address or DNS name"],
        id="inventory: address that is neither IP nor DNS name",
    ),
    pytest.param(
        lambda text: text.replace("[defaults]\n", "[defaults]\nport = 70000\n", 1),
        ["port", "70000 is not a valid port", "1 to 65535"],
        id="inventory: port 70000",
    ),
    pytest.param(
        lambda text: text.replace("[defaults]\n", 'port = "22"\n[defaults]\n', 1),
        ["port: unknown key", "allowed keys at the top level"],
        id="inventory: key outside any table",
    ),
    pytest.param(
        lambda text: text.replace("[defaults]\n", '[defaults]\nhost_key_checking = "off"\n', 1),
        ["host_key_checking", "strict", "accept-new"],
        id="inventory: host key checking turned off",
    ),
    pytest.param("missing-key", ["identity_file", "does not exist"], id="inventory: identity file missing"),
]


@pytest.mark.parametrize("edit, needles", INVENTORY_CASES)
def test_bad_inventory(lab, world, tmp_path, measured, edit, needles):
    if edit is None:
        path = tmp_path / "nowhere" / "inventory.toml"
    elif edit == "missing-key":
        path = variant(lab, tmp_path, lambda text: text.replace(str(lab.dir / "id_ed25519"), str(tmp_path / "no_key")))
        needles = [*needles, str(tmp_path / "no_key")]
    else:
        path = variant(lab, tmp_path, edit)
        if "invalid TOML" in needles:  # the line is named: the broken one is the last
            needles = [*needles, f"{path}:{len(path.read_text().splitlines())}:"]
    line = one_line_error(cantainer("up", str(path)), str(path), *needles)
    measured("error", line.replace(str(tmp_path), "$TMP"))
    assert_nothing_changed(lab, world)


# -- CLI: run and the other verbs against the running cluster ----------------------------------------------
def run(*options: str) -> list[str]:
    return ["run", "--host", "h1", "-n", FREE, *options, "-d", "--", "true"]


NAME_HINT = "1-63 lowercase letters, digits and hyphens"
CLI_CASES = [
    pytest.param(
        ["run", "--host", "h9", "-n", FREE, "-d", "--", "true"],
        ['unknown host "h9"', "known hosts: h1, h2, h3"],
        id="run: unknown host",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "garbage", "-d", "--", "true"],
        ["no network named 'garbage'", "network create CIDR --name garbage"],
        id="run: unknown network name",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "10.79.0.0/33", "-d", "--", "true"], ["not a valid CIDR"], id="run: CIDR /33"
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "10.79.0.1/24", "-d", "--", "true"],
        ["host bits set", "did you mean 10.79.0.0/24"],
        id="run: CIDR with host bits set",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "10.79.0.0/32", "-d", "--", "true"],
        ["too small", "/30 or shorter"],
        id="run: CIDR /32",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "10.0.0.0/7", "-d", "--", "true"],
        ["too large", "/8 or longer"],
        id="run: CIDR /7",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "10.79.0.0", "-d", "--", "true"],
        ["no prefix length"],
        id="run: CIDR without prefix length",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "fd00::/64", "-d", "--", "true"], ["IPv6", "only IPv4"], id="run: IPv6 network"
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "224.1.0.0/24", "-d", "--", "true"],
        ["multicast", "private range"],
        id="run: multicast network",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "127.0.0.0/24", "-d", "--", "true"],
        ["loopback", "private range"],
        id="run: loopback network",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", "10.70.0.0/16", "-d", "--", "true"],
        [f"overlaps existing network {USED}"],
        id="run: CIDR overlapping an existing network",
    ),
    pytest.param(
        ["run", "--host", "h3", "-n", FULL, "-d", "--", "true"],
        [f"network {FULL} is full", "larger network"],
        id="run: exhausted network",
    ),
    pytest.param(run("--image", "ubuntu"), ["unknown image 'ubuntu'", "[images]", "cantainer image load"],
                 id="run: unknown image"),
    pytest.param(
        run("--image", "fake"), ["sha256 mismatch", "fix the path or the sha256"], id="run: image sha256 mismatch"
    ),
    pytest.param(
        run("--name", "base"),
        ["container name 'base' is already in use", "pick another name"],
        id="run: duplicate container name",
    ),
    pytest.param(run("--name", "two words"), ["'two words' is invalid", NAME_HINT], id="run: name with a space"),
    pytest.param(run("--name", f"a;touch {MARKER}"), ["is invalid", NAME_HINT], id="run: name with ;"),
    pytest.param(run("--name", f"$(touch {MARKER})"), ["is invalid", NAME_HINT], id="run: name with $(...)"),
    pytest.param(run("--name", f"`touch {MARKER}`"), ["is invalid", NAME_HINT], id="run: name with backticks"),
    pytest.param(run("--name", "../../etc"), ["'../../etc' is invalid", NAME_HINT], id="run: name with ../"),
    pytest.param(run("--name", "x" * 64), ["is invalid", NAME_HINT], id="run: name of 64 characters"),
    pytest.param(run("--name", "Web"), ["'Web' is invalid", NAME_HINT], id="run: name with uppercase"),
    pytest.param(
        run("-e", "NOEQUALS"),
        ["-e 'NOEQUALS' is not KEY=VALUE", "GREETING=hello"],
        id="run: environment variable without =",
    ),
    pytest.param(
        run("-e", "A B=1"), ["environment variable name 'A B' is invalid"], id="run: environment name with a space"
    ),
    pytest.param(run("--memory", "lots"), ["--memory 'lots' is not a size", "256m"], id="run: memory not a size"),
    pytest.param(run("--memory", "1k"), ["too small", "at least 4m"], id="run: memory 1k"),
    pytest.param(run("--cpus", "nan"), ["--cpus", "'nan' is not a finite number"], id="run: --cpus nan"),
    pytest.param(run("--pids", "0"), ["--pids must be positive"], id="run: --pids 0"),
    pytest.param(
        run("-w", "relative/dir"), ["-w 'relative/dir' is not an absolute path", "-w /app"], id="run: relative workdir"
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", FREE, "-d", "--", "/no/such/program"],
        ["/no/such/program: executable file not found"],
        id="run: command not in the image",
    ),
    pytest.param(
        ["run", "--host", "h1", "-n", FREE, "-d", "-t", "--", "sh"],
        ["-d cannot be combined with -i/-t"],
        id="run: -d with -t",
    ),
    pytest.param(["run", "--host", "h1", "--", "true"], ["-n/--network", "required"], id="run: -n missing"),
    pytest.param(["run", "-n", FREE, "-d", "--cpus", "64", "--", "true"],
                 ["no host can run", "h1, h2, h3:", "CPUs free, 64 asked"], id="run: placed, no host has the CPUs"),
    pytest.param(["run", "-n", FREE, "-d", "--constraint", "label.zone==nowhere", "--", "true"],
                 ["no host that is up matches label.zone==nowhere"], id="run: placed, no host matches"),
    pytest.param(["run", "-n", FREE, "-d", "--constraint", "host==h1", "--host", "h1", "--", "true"],
                 ["--constraint places a container; --host names its host"], id="run: --constraint with --host"),
    pytest.param(run("--restart", "sometimes"), ["restart policy 'sometimes' is unknown", "on-failure[:MAX]"],
                 id="run: unknown restart policy"),
    pytest.param(run("--health-interval", "often"), ["--health-interval 'often' is not a duration"],
                 id="run: health interval not a duration"),
    pytest.param(["service", "create", "web", "-n", FREE, "--image", "nosuch:1"], ["unknown image 'nosuch:1'"],
                 id="service create: unknown image"),
    pytest.param(["service", "create", "web", "-n", FREE, "-p", "80"], ["-p 80: give the host port too", "-p 8080:80"],
                 id="service create: bad published port"),
    pytest.param(["service", "update", "nosuch", "--replicas", "2"], ["no service named 'nosuch'"],
                 id="service update: unknown service"),
    pytest.param(["service", "rm", "nosuch"], ["no service named 'nosuch'"], id="service rm: unknown service"),
    pytest.param(
        ["exec", "nosuch", "--", "true"],
        ["no container named 'nosuch'", "cantainer ps -a"],
        id="exec: unknown container",
    ),
    pytest.param(["exec", "base"], ["no command given", "cantainer exec web cat /etc/hostname"], id="exec: no command"),
    pytest.param(["logs", "nosuch"], ["no container named 'nosuch'"], id="logs: unknown container"),
    pytest.param(["rm", "nosuch"], ["no container named 'nosuch'"], id="rm: unknown container"),
    pytest.param(["rm", "base"], ["running", "rm -f"], id="rm: running container without -f"),
    pytest.param(["stop", "nosuch"], ["no container named 'nosuch'"], id="stop: unknown container"),
    pytest.param(["logs", "base", "--tail", "ten"], ["--tail 'ten' is not a number of lines", "--tail 20"],
                 id="logs: --tail not a number"),
    pytest.param(["logs", "base", "--since", "yesterday"], ["--since 'yesterday'", "10m"],
                 id="logs: --since not a time"),
    pytest.param(["down", "--purge", "--keep-containers"], ["contradict"], id="down: --purge with --keep-containers"),
    pytest.param(["down", "--time", "nan"], ["--time", "'nan' is not a finite number"], id="down: --time nan"),
    pytest.param(["stop", "base", "--time", "nan"], ["--time", "'nan' is not a finite number"], id="stop: --time nan"),
    pytest.param(["stop", "base", "--time", "-1"], ["--time -1 is out of range", "0 to 3600"], id="stop: --time -1"),
    pytest.param(["network", "create", "nonsense"], ["'nonsense' is not a valid CIDR"], id="network create: garbage"),
    pytest.param(
        ["network", "rm", "10.78.0.0/24"],
        ["network 10.78.0.0/24 does not exist", "network ls"],
        id="network rm: unknown network",
    ),
    pytest.param(
        ["network", "rm", USED],
        ["still has 1 container(s) attached (base)", "remove them first"],
        id="network rm: network in use",
    ),
    pytest.param(["run", "--host", "h1", "-n", FREE, "-v", "/var/lib/cantainer:/x", "--", "true"],
                 ["bind mount source /var/lib/cantainer is refused: it is /var/lib/cantainer"],
                 id="run: bind mount of cantainer's data"),
    pytest.param(["run", "--host", "h1", "-n", FREE, "-v", "/srv/../etc/cantainer:/x", "--", "true"],
                 ["bind mount source /etc/cantainer is refused"], id="run: bind mount reaching the secret through .."),
    pytest.param(["run", "--host", "h1", "-n", FREE, "-v", "data:/proc/sys", "--", "true"],
                 ["mount target /proc/sys is inside /proc"], id="run: volume target inside /proc"),
    pytest.param(["volume", "rm", "nosuch"], ["no volume named 'nosuch'", "volume ls"], id="volume rm: unknown volume"),
    pytest.param(["volume", "create", "a/b", "--host", "h1"], ["volume name 'a/b' is invalid"],
                 id="volume create: invalid name"),
    pytest.param(["apply", "/no/such/stack.toml"], ["/no/such/stack.toml: no such stack file"],
                 id="apply: no such stack file"),
    pytest.param(["rm-stack", "nosuch"], ["no stack named 'nosuch'", "stack ls"], id="rm-stack: unknown stack"),
    pytest.param(["frobnicate"], ["unknown command 'frobnicate'", "cantainer --help"], id="cli: unknown subcommand"),
    pytest.param(["stauts"], ["unknown command 'stauts'", "did you mean status?"], id="cli: typo of a subcommand"),
    pytest.param(["ps", "--frob"], ["unknown option --frob", "cantainer ps --help"], id="cli: unknown flag"),
    pytest.param(["ps", "--jsn"], ["unknown option --jsn", "did you mean --json?", "cantainer ps --help"],
                 id="cli: typo of a flag"),
]


def image_variant(lab, tmp_path: Path) -> Path:
    """The lab's inventory plus [images.fake]: a tarball whose sha256 is not the pinned one."""
    tarball = tmp_path / "fake.tar.gz"
    tarball.write_bytes(gzip.compress(b"not really an image"))
    section = f'[images.fake]\npath = "{tarball}"\nsha256 = "{"0" * 64}"\n\n'
    return variant(lab, tmp_path, lambda text: text.replace("[[hosts]]", section + "[[hosts]]", 1))


@pytest.mark.parametrize("args, needles", CLI_CASES)
def test_bad_command(lab, world, tmp_path, measured, args, needles):
    inventory = image_variant(lab, tmp_path) if "fake" in args else world["inventory"]
    result = cli(inventory, *args)
    line = one_line_error(result, *needles)
    if "no container named 'nosuch'" in needles:  # scripts tell "not found" apart (exec keeps docker's 125)
        assert result.returncode == (125 if args[0] == "exec" else 3), result
    measured("error", line.replace(str(tmp_path), "$TMP"))
    assert_nothing_changed(lab, world)


def test_no_inventory_given(lab, world, measured):
    """cli: no inventory given (no -i, no $CANTAINER_INVENTORY)"""
    line = one_line_error(cantainer("ps", env={"CANTAINER_INVENTORY": ""}), "no inventory given", "-i INVENTORY")
    measured("error", line)
    assert_nothing_changed(lab, world)


# -- agent API: raw lines on the agent's unix socket ------------------------------------------------------
API_CASES = [
    pytest.param(b"not json\n", 0, protocol.BAD_REQUEST, "malformed JSON", id="agent API: malformed JSON"),
    pytest.param(
        b'{"v":1,"id":1,"method":"status"\n', 0, protocol.BAD_REQUEST, "malformed JSON", id="agent API: truncated JSON"
    ),
    pytest.param(b"\xff\xfe\n", 0, protocol.BAD_REQUEST, "not valid UTF-8", id="agent API: bytes that are not UTF-8"),
    pytest.param(
        b"[1, 2]\n", 0, protocol.BAD_REQUEST, "must be a JSON object", id="agent API: JSON that is not an object"
    ),
    pytest.param(
        b'{"v":1,"id":1,"method":"frobnicate"}\n',
        0,
        protocol.UNKNOWN_METHOD,
        "unknown method 'frobnicate'",
        id="agent API: unknown method",
    ),
    pytest.param(
        b'{"v":9,"id":1,"method":"status"}\n',
        0,
        protocol.UNSUPPORTED_VERSION,
        "cantainer up",
        id="agent API: unsupported protocol version",
    ),
    pytest.param(
        b'{"v":1,"id":1,"method":"hello","params":[1]}\n',
        0,
        protocol.BAD_REQUEST,
        "params",
        id="agent API: params not an object",
    ),
    pytest.param(
        b'{"v":1,"id":1,"method":"container.stop","params":{"name":"base","timeout":"soon"}}\n',
        0,
        protocol.REJECTED,
        "stop timeout 'soon'",
        id="agent API: parameter of the wrong type",
    ),
    pytest.param(
        b'{"v":1,"id":1,"method":"container.rm","params":{"name":"../../etc"}}\n',
        0,
        protocol.REJECTED,
        "is invalid",
        id="agent API: container name with ../",
    ),
    pytest.param(
        b'{"v":1,"id":1,"method":"image.import","params":{"sha256":"' + b"0" * 64 + b'","path":"/etc/passwd"}}\n',
        0,
        protocol.REJECTED,
        "imported from /var/lib/cantainer/images/incoming only",
        id="agent API: image import from outside the incoming directory",
    ),
    pytest.param(
        b'{"v":1,"id":1,"method":"status","params":{"pad":"',
        protocol.MAX_LINE,
        protocol.TOO_LARGE,
        "exceeds",
        id="agent API: oversized request (1 MiB)",
    ),
]


@pytest.mark.parametrize("data, filler, code, needle", API_CASES)
def test_bad_api_request(lab, world, measured, data, filler, code, needle):
    tail = b'"}}\n' if filler else b""
    response = agent_raw(lab, "h1", data, filler, tail)
    assert not response.ok and response.error.code == code, response
    assert needle in response.error.message, response.error.message
    measured("error", f"{code}: {response.error.message}")
    assert agent_call(lab, "h1", "hello").result["node"] == "h1"  # still serving
    assert_nothing_changed(lab, world)
