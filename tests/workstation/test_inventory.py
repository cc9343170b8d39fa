"""Inventory model and strict validation.

Invalid cases mark the line the error must point at with a trailing ``# <-`` comment, so the expected
line number is read from the case itself rather than counted by hand.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cantainer.errors import CantainerError
from cantainer.inventory import (
    Cluster,
    Host,
    ImageSource,
    InventoryError,
    UnknownHostError,
    find_key_line,
    format_key_path,
    load_inventory,
    parse_inventory,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "ab" * 32
MARK = "# <-"

TWO_HOSTS = """
[[hosts]]
name = "h1"
address = "10.0.0.1"

[[hosts]]
name = "h2"
address = "10.0.0.2"
"""


def write(tmp_path: Path, text: str, name: str = "inventory.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def marked_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.rstrip().endswith(MARK):
            return number
    return None


def assert_one_line(err: InventoryError) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert err.hint, "every error says how to fix it"


# ---------------------------------------------------------------------------------------- valid


def test_full_inventory_round_trip(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_test").write_text("key")
    (tmp_path / "alpine.tar.gz").write_bytes(b"tar")
    path = write(tmp_path, f"""
[defaults]
user = "deploy"
port = 2222
identity_file = "keys/id_test"
known_hosts = "keys/known_hosts"
host_key_checking = "accept-new"
become = true
python = "/usr/local/bin/python3.11"
connect_timeout = 2.5

[cluster]
name = "prod-1"
raft_port = 9000
join_port = 9001
vxlan_port = 4790
voters = 5
secret_file = "secrets/prod.secret"

[images.alpine]
path = "alpine.tar.gz"
sha256 = "{SHA}"

[images."web.v2"]
url = "https://example.org/web.tar.gz"
sha256 = "{SHA}"

[[hosts]]
name = "h1"
address = "10.0.0.1"

[[hosts]]
name = "db-2"
address = "db2.example.org"
underlay_address = "fd00:0:0::12"
""")
    inventory = load_inventory(path)

    assert inventory.path == path
    assert inventory.cluster == Cluster(
        name="prod-1", raft_port=9000, join_port=9001, vxlan_port=4790, voters=5,
        secret_file=tmp_path / "secrets" / "prod.secret",
    )
    assert inventory.images == {
        "alpine": ImageSource(name="alpine", sha256=SHA, path=tmp_path / "alpine.tar.gz", url=None),
        "web.v2": ImageSource(name="web.v2", sha256=SHA, path=None, url="https://example.org/web.tar.gz"),
    }
    common = dict(
        port=2222, user="deploy", identity_file=tmp_path / "keys" / "id_test",
        known_hosts=tmp_path / "keys" / "known_hosts", host_key_checking="accept-new", become=True,
        python="/usr/local/bin/python3.11", connect_timeout=2.5,
    )
    assert inventory.hosts == (
        Host(name="h1", address="10.0.0.1", underlay_address="10.0.0.1", **common),
        Host(name="db-2", address="db2.example.org", underlay_address="fd00::12", **common),
    )
    assert inventory.host("db-2") is inventory.hosts[1]


def test_minimal_inventory_gets_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    inventory = parse_inventory('[[hosts]]\nname = "h1"\naddress = "node1.lan"\n', tmp_path / "inv.toml")

    assert inventory.cluster == Cluster(
        name="default", raft_port=7480, join_port=7481, vxlan_port=4789, voters=3,
        secret_file=tmp_path / "home" / ".config" / "cantainer" / "default.secret",
    )
    assert inventory.images == {}
    assert inventory.hosts == (Host(
        name="h1", address="node1.lan", port=22, user="root", identity_file=None, known_hosts=None,
        host_key_checking="strict", become=False, python="/usr/bin/python3", connect_timeout=10.0,
        underlay_address=None,
    ),)


def test_defaults_are_inherited_and_hosts_override_them(tmp_path: Path) -> None:
    key = tmp_path / "id_default"
    key.write_text("key")
    own_key = tmp_path / "id_own"
    own_key.write_text("key")
    inventory = parse_inventory(f"""
[defaults]
user = "deploy"
port = 2200
become = true
connect_timeout = 3
identity_file = "{key}"

[[hosts]]
name = "h1"
address = "10.0.0.1"

[[hosts]]
name = "h2"
address = "10.0.0.2"
user = "root"
port = 22
become = false
connect_timeout = 1.5
identity_file = "id_own"
host_key_checking = "accept-new"
""", tmp_path / "inventory.toml")

    inherited, overriding = inventory.hosts
    assert (inherited.user, inherited.port, inherited.become, inherited.connect_timeout) == ("deploy", 2200, True, 3.0)
    assert inherited.identity_file == key
    assert inherited.host_key_checking == "strict"
    assert (overriding.user, overriding.port, overriding.become, overriding.connect_timeout) == ("root", 22, False, 1.5)
    assert overriding.identity_file == own_key
    assert overriding.host_key_checking == "accept-new"
    assert isinstance(inherited.connect_timeout, float)


def test_home_relative_paths_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    inventory = parse_inventory(
        '[defaults]\nidentity_file = "~/.ssh/id_ed25519"\nknown_hosts = "~/kh"\n' + TWO_HOSTS,
        Path("/elsewhere/inventory.toml"),
    )
    assert inventory.hosts[0].identity_file == tmp_path / ".ssh" / "id_ed25519"
    assert inventory.hosts[0].known_hosts == tmp_path / "kh"


def test_same_address_on_different_ports_is_allowed_with_distinct_underlay(tmp_path: Path) -> None:
    inventory = parse_inventory("""
[[hosts]]
name = "h1"
address = "gateway.example"
port = 2201
[[hosts]]
name = "h2"
address = "GATEWAY.example."
port = 2202
""", tmp_path / "inventory.toml")
    assert [host.port for host in inventory.hosts] == [2201, 2202]


def test_example_inventory_validates() -> None:
    inventory = load_inventory(REPO_ROOT / "inventory.example.toml")

    assert [host.name for host in inventory.hosts] == ["h1", "h2", "h3"]
    assert [host.underlay_address for host in inventory.hosts] == ["10.20.0.11", "10.20.0.12", "10.20.0.13"]
    assert inventory.hosts[2].user == "deploy" and inventory.hosts[2].become
    assert set(inventory.images) == {"alpine"}


def test_labels_and_reschedule_after_reach_the_agent_config(tmp_path: Path) -> None:
    from cantainer.plan import desired_config

    inventory = load_inventory(write(tmp_path, '[cluster]\nreschedule_after = 12\n' + HOST
                                     + 'labels = { zone = "a", disk = "ssd" }\n'))
    host = inventory.hosts[0]
    assert host.labels == (("disk", "ssd"), ("zone", "a")) and inventory.cluster.reschedule_after == 12.0
    config = desired_config(inventory, host, {"h1": "10.0.0.1"}, "d" * 64, bootstrap=True)
    assert config["labels"] == {"disk": "ssd", "zone": "a"} and config["reschedule_after"] == 12.0
    plain = load_inventory(write(tmp_path, HOST, "plain.toml"))
    config = desired_config(plain, plain.hosts[0], {"h1": "10.0.0.1"}, "d" * 64, bootstrap=True)
    assert "labels" not in config and "reschedule_after" not in config  # unchanged configs: no restarts


def test_registries_are_read_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    path = write(tmp_path, '[registries."reg.io:5000"]\nusername = "u"\npassword_file = "pw"\npull = "hosts"\n'
                 '[registries.localhost]\ninsecure = true\n' + HOST)
    inventory = load_inventory(path)
    private = inventory.registry("reg.io:5000")
    assert (private.username, private.password_file, private.pull, private.insecure) == (
        "u", tmp_path / "pw", "hosts", False)
    assert inventory.registry("localhost").insecure and inventory.registry("localhost").pull == "workstation"
    assert inventory.registry("other.org").username is None  # no table: defaults


def test_unknown_host_names_the_host_and_lists_known_ones(tmp_path: Path) -> None:
    inventory = parse_inventory(TWO_HOSTS, tmp_path / "inventory.toml")
    with pytest.raises(UnknownHostError) as caught:
        inventory.host("h3")
    assert isinstance(caught.value, CantainerError)
    assert '"h3"' in str(caught.value)
    assert "known hosts: h1, h2" in str(caught.value)


# -------------------------------------------------------------------------------------- invalid

HOST = '[[hosts]]\nname = "h1"\naddress = "10.0.0.1"\n'

INVALID_CASES = [
    # (id, inventory text, key path expected in the message, words expected in the message)
    ("port-out-of-range", TWO_HOSTS + "port = 70000  # <-\n", "hosts[1].port",
     "70000 is not a valid port — use a number from 1 to 65535"),
    ("port-as-string", '[defaults]\nport = "22"  # <-\n' + HOST, "defaults.port", "expected an integer"),
    ("port-as-bool", HOST + "port = true  # <-\n", "hosts[0].port", "true (a boolean)"),
    ("become-as-string", HOST + 'become = "yes"  # <-\n', "hosts[0].become", "expected true or false"),
    ("timeout-as-string", '[defaults]\nconnect_timeout = "10"  # <-\n' + HOST, "defaults.connect_timeout",
     "expected a number"),
    ("timeout-zero", HOST + "connect_timeout = 0  # <-\n", "hosts[0].connect_timeout", "positive"),
    ("timeout-infinite", HOST + "connect_timeout = inf  # <-\n", "hosts[0].connect_timeout", "positive"),
    ("unknown-top-level-key", 'host = "x"  # <-\n' + HOST, "host", 'did you mean hosts?'),
    ("unknown-defaults-key", '[defaults]\nusr = "x"  # <-\n' + HOST, "defaults.usr", "allowed keys in [defaults]"),
    ("unknown-cluster-key", '[cluster]\nraft = 1  # <-\n' + HOST, "cluster.raft", "raft_port"),
    ("unknown-host-key", TWO_HOSTS + 'adress = "x"  # <-\n', "hosts[1].adress", 'did you mean address?'),
    ("unknown-image-key", f'[images.a]\nurl = "http://x.org/a"\nsha256 = "{SHA}"\nsize = 1  # <-\n' + HOST,
     "images.a.size", "allowed keys in [images.a]: path, url, sha256"),
    ("duplicate-host-name", HOST + '[[hosts]]\nname = "h1"  # <-\naddress = "10.0.0.2"\n', "hosts[1].name",
     "already the name of hosts[0]"),
    ("duplicate-address-and-port", HOST + '[[hosts]]\nname = "h2"\naddress = "10.0.0.1"  # <-\n',
     "hosts[1].address", "10.0.0.1 port 22 is already used by hosts[0] (h1)"),
    ("duplicate-underlay", HOST + '[[hosts]]\nname = "h2"\naddress = "n2"\nunderlay_address = "10.0.0.1"  # <-\n',
     "hosts[1].underlay_address", "already used by hosts[0]"),
    ("missing-address", HOST + '[[hosts]]  # <-\nname = "h2"\n', "hosts[1].address", "missing"),
    ("missing-name", '[[hosts]]  # <-\naddress = "10.0.0.1"\n', "hosts[0].name", "missing"),
    ("no-hosts", '[defaults]\nuser = "root"\n', "hosts", "no hosts defined"),
    ("hosts-as-single-table", '[hosts]  # <-\nname = "h1"\naddress = "10.0.0.1"\n', "hosts",
     "expected [[hosts]] tables"),
    ("defaults-not-a-table", "defaults = 3  # <-\n" + HOST, "defaults", "expected a table"),
    ("bad-host-name", '[[hosts]]\nname = "H1"  # <-\naddress = "10.0.0.1"\n', "hosts[0].name", "not a valid host name"),
    ("bad-address", '[[hosts]]\nname = "h1"\naddress = "10.0.0.300"  # <-\n', "hosts[0].address",
     "not a valid IP address or DNS name"),
    ("option-like-address", '[[hosts]]\nname = "h1"\naddress = "-oProxyCommand=x"  # <-\n', "hosts[0].address",
     "not a valid IP address or DNS name"),
    ("bracketed-address", '[[hosts]]\nname = "h1"\naddress = "[fd00::1]"  # <-\n', "hosts[0].address", "brackets"),
    ("underlay-not-ip", HOST + 'underlay_address = "node1"  # <-\n', "hosts[0].underlay_address", "not an IP address"),
    ("bad-user", HOST + 'user = "bad user"  # <-\n', "hosts[0].user", "not a valid user name"),
    ("bad-host-key-mode", '[defaults]\nhost_key_checking = "no"  # <-\n' + HOST, "defaults.host_key_checking",
     "not a host key checking mode"),
    ("relative-python", HOST + 'python = "python3"  # <-\n', "hosts[0].python", "absolute path"),
    ("shell-in-python", HOST + 'python = "/usr/bin/python3; rm -rf /"  # <-\n', "hosts[0].python", "absolute path"),
    ("missing-identity-file", '[defaults]\nidentity_file = "no/such/key"  # <-\n' + HOST, "defaults.identity_file",
     "no/such/key does not exist"),
    ("bad-cluster-name", '[cluster]\nname = "Prod"  # <-\n' + HOST, "cluster.name", "not a valid cluster name"),
    ("join-equals-raft", '[cluster]\nraft_port = 7000\njoin_port = 7000  # <-\n' + HOST, "cluster.join_port",
     "raft_port and join_port are both 7000"),
    ("raft-equals-default-join", '[cluster]\nraft_port = 7481  # <-\n' + HOST, "cluster.raft_port", "both 7481"),
    ("vxlan-port-zero", '[cluster]\nvxlan_port = 0  # <-\n' + HOST, "cluster.vxlan_port", "not a valid port"),
    ("even-voters", '[cluster]\nvoters = 4  # <-\n' + HOST, "cluster.voters", "use 1, 3, 5 or 7"),
    ("too-many-voters", '[cluster]\nvoters = 9  # <-\n' + HOST, "cluster.voters", "not a valid number of voters"),
    ("bad-image-name", f'[images.Alpine]  # <-\nurl = "https://x.org/a"\nsha256 = "{SHA}"\n' + HOST, "images.Alpine",
     "not a valid image name"),
    # path names the inventory itself only because it must exist to get as far as the clash.
    ("image-path-and-url",
     f'[images.a]\npath = "inventory.toml"\nurl = "https://x.org/a"  # <-\nsha256 = "{SHA}"\n' + HOST,
     "images.a.url", "not both"),
    ("image-neither-path-nor-url", f'[images.a]  # <-\nsha256 = "{SHA}"\n' + HOST, "images.a", "neither path nor url"),
    ("image-missing-sha", '[images.a]  # <-\nurl = "https://x.org/a"\n' + HOST, "images.a.sha256", "missing"),
    ("image-uppercase-sha", f'[images.a]\nurl = "https://x.org/a"\nsha256 = "{SHA.upper()}"  # <-\n' + HOST,
     "images.a.sha256", "lowercase"),
    ("image-short-sha", '[images.a]\nurl = "https://x.org/a"\nsha256 = "abc"  # <-\n' + HOST, "images.a.sha256",
     "not a SHA-256 digest"),
    ("image-ftp-url", f'[images.a]\nurl = "ftp://x.org/a"  # <-\nsha256 = "{SHA}"\n' + HOST, "images.a.url",
     "not an http(s) URL"),
    ("image-missing-path", f'[images.a]\npath = "gone.tar.gz"  # <-\nsha256 = "{SHA}"\n' + HOST, "images.a.path",
     "gone.tar.gz does not exist"),
    ("registry-not-a-host", '[registries.web]  # <-\ninsecure = true\n' + HOST, "registries.web",
     "not a registry host"),
    ("registry-user-without-password", '[registries."reg.io:5000"]  # <-\nusername = "u"\n' + HOST,
     'registries."reg.io:5000".password_file', "credentials need a username and a password_file"),
    ("registry-bad-pull", '[registries."reg.io"]\npull = "always"  # <-\n' + HOST, 'registries."reg.io".pull',
     "not a pull mode"),
    ("registry-unknown-key", '[registries."reg.io"]\npassword = "x"  # <-\n' + HOST,
     'registries."reg.io".password', "allowed keys"),
    ("registry-missing-password-file", '[registries."reg.io"]\nusername = "u"\npassword_file = "nope"  # <-\n'
     + HOST, 'registries."reg.io".password_file', "does not exist"),
    ("newline-in-value", HOST + 'user = "a\\nb"  # <-\n', "hosts[0].user", r'"a\nb" is not a valid user name'),
    ("labels-not-a-table", HOST + 'labels = "zone=a"  # <-\n', "hosts[0].labels", "expected a table"),
    ("label-bad-key", HOST + 'labels = { Zone = "a" }  # <-\n', "hosts[0].labels.Zone", "not a valid label key"),
    ("label-bad-value", HOST + 'labels = { zone = 1 }  # <-\n', "hosts[0].labels.zone", "not a valid label value"),
    ("reschedule-after-zero", '[cluster]\nreschedule_after = 0  # <-\n' + HOST, "cluster.reschedule_after",
     "from 1 to 86400"),
    ("toml-syntax", HOST + "port = = 22  # <-\n", None, "invalid TOML"),
    ("toml-duplicate-key", HOST + 'name = "again"  # <-\n', None, "defined twice"),
    ("empty-file", "  \n\n", None, "the file is empty"),
]


@pytest.mark.parametrize(("text", "key_path", "words"), [case[1:] for case in INVALID_CASES],
                         ids=[case[0] for case in INVALID_CASES])
def test_invalid_inventory_is_one_precise_line(tmp_path: Path, text: str, key_path: str | None, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)

    err = caught.value
    line = marked_line(text)
    where = f"{path}:{line}" if line else str(path)
    prefix = f"{where}: {key_path}: " if key_path else f"{where}: "
    assert str(err).startswith(prefix), str(err)
    assert words in str(err)
    assert (err.line, err.key) == (line, key_path)
    assert_one_line(err)


def test_port_error_reads_exactly_as_documented(tmp_path: Path) -> None:
    text = "\n" * 3 + TWO_HOSTS + "port = 70000\n"
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, Path("inventory.toml"))
    assert str(caught.value) == (
        "inventory.toml:12: hosts[1].port: 70000 is not a valid port — use a number from 1 to 65535"
    )


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(HOST + 'adress = "x"\n', tmp_path / "inventory.toml")
    assert "name, address, underlay_address, user, port" in caught.value.hint


# --------------------------------------------------------------------------------- file problems


def test_missing_file_names_path_and_how_to_pass_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "-i" in caught.value.hint and "CANTAINER_INVENTORY" in caught.value.hint
    assert_one_line(caught.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path}: is a directory")
    assert_one_line(caught.value)


def test_non_utf8_file_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_bytes(HOST.encode() + b'user = "\xff"\n')
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}:4: not valid UTF-8 text (byte 0xff)")
    assert_one_line(caught.value)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, HOST)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    # Simulated: the tests may run as root, for whom chmod 000 does not stop reading.
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: cannot be read: permission denied")


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_bytes(b"\xef\xbb\xbf" + HOST.encode())
    assert load_inventory(path).hosts[0].name == "h1"


# ------------------------------------------------------------------------------- the line locator

LOCATOR_TEXT = '''\
top = 1
[defaults]
user = "root"
[cluster]  # a comment
  name = "c"
[[hosts]]
name = "h1"
[[hosts]]
name = "h2"
note = """
port = 1
"""
port = 2
[images."web.v2"]
sha256 = "x"
dotted.key = 3
'''


@pytest.mark.parametrize(("key_path", "line"), [
    (("top",), 1),
    (("defaults", "user"), 3),
    (("cluster",), 4),
    (("cluster", "name"), 5),
    (("hosts", 0), 6),
    (("hosts", 0, "name"), 7),
    (("hosts", 1, "name"), 9),
    (("hosts", 1, "port"), 13),
    (("images", "web.v2"), 14),
    (("images", "web.v2", "sha256"), 15),
    (("images", "web.v2", "dotted", "key"), 16),
    (("hosts", 2), None),
    (("defaults", "port"), None),
])
def test_find_key_line(key_path: tuple[str | int, ...], line: int | None) -> None:
    assert find_key_line(LOCATOR_TEXT, key_path) == line


def test_find_key_line_gives_up_on_inline_tables() -> None:
    assert find_key_line('defaults = { user = "x" }\n', ("defaults", "user")) is None
    assert find_key_line('defaults = { user = "x" }\n', ("defaults",)) == 1


def test_format_key_path() -> None:
    assert format_key_path(("hosts", 1, "port")) == "hosts[1].port"
    assert format_key_path(("images", "web.v2", "url")) == 'images."web.v2".url'
    assert format_key_path(("a b",)) == '"a b"'
