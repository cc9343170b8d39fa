import dataclasses
import json
import os

import pytest

from cantainer_agent.config import AgentConfig, ConfigError, forget_founding, load_config, parse_config, read_secret


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("0123456789abcdef0123456789abcdef\n")
    return path


def base(secret, **over):
    cfg = {"cluster": "prod", "node": "h1", "address": "10.0.0.1", "secret_file": str(secret), "bootstrap": True}
    cfg.update(over)
    return cfg


def test_defaults(secret):
    cfg = parse_config(base(secret))
    assert isinstance(cfg, AgentConfig)
    assert (cfg.raft_port, cfg.join_port, cfg.voters, cfg.seeds, cfg.bundle) == (7480, 7481, 3, (), "")
    assert (cfg.data_dir, cfg.run_dir, cfg.log_dir) == ("/var/lib/cantainer", "/run/cantainer", "/var/log/cantainer")
    assert cfg.raft_addr == "10.0.0.1:7480" and cfg.join_addr == "10.0.0.1:7481"
    assert cfg.socket_path == "/run/cantainer/agent.sock" and cfg.pid_file == "/run/cantainer/agent.pid"
    assert cfg.heartbeat_interval == 2.0


def test_frozen(secret):
    cfg = parse_config(base(secret))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node = "other"


def test_seeds_are_deduplicated_and_own_join_address_dropped(secret):
    cfg = parse_config(base(secret, bootstrap=False,
                            seeds=["10.0.0.2:7481", "10.0.0.1:7481", "10.0.0.2:7481", "h3.lan:9000"]))
    assert cfg.seeds == ("10.0.0.2:7481", "h3.lan:9000")


def test_load_from_file(tmp_path, secret):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(base(secret, raft_port=9000, join_port=9001, data_dir="/srv/c//data/")))
    cfg = load_config(str(path))
    assert cfg.raft_port == 9000 and cfg.data_dir == "/srv/c/data"


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"colour": "red"}, "unknown key(s) 'colour'"),
        ({"node": "bad name"}, "'node'"),
        ({"node": ""}, "'node'"),
        ({"cluster": 7}, "'cluster'"),
        ({"address": "not-an-ip"}, "'address' must be an IPv4"),
        ({"address": "0.0.0.0"}, "concrete host address"),
        ({"raft_port": 0}, "'raft_port'"),
        ({"raft_port": "7480"}, "'raft_port'"),
        ({"join_port": True}, "'join_port'"),
        ({"raft_port": 9000, "join_port": 9000}, "must differ"),
        ({"seeds": "10.0.0.2:7481"}, "'seeds' must be a list"),
        ({"seeds": ["10.0.0.2"]}, "seeds[0]"),
        ({"seeds": ["10.0.0.2:99999"]}, "seeds[0]"),
        ({"bootstrap": "yes"}, "'bootstrap'"),
        ({"initial_voters": "10.0.0.1:7480"}, "'initial_voters' must be a list"),
        ({"initial_voters": ["10.0.0.1"]}, "initial_voters[0]"),
        ({"initial_voters": ["10.0.0.2:7480", "10.0.0.3:7480"]}, "does not list this node's raft address 10.0.0.1"),
        ({"initial_voters": ["10.0.0.1:7480"], "bootstrap": False, "seeds": ["10.0.0.2:7481"]},
         "'bootstrap' is false"),
        ({"initial_voters": [f"10.0.0.{i}:7480" for i in range(1, 10)]}, "at most 7 vote"),
        ({"voters": 2}, "'voters'"),
        ({"voters": 11}, "'voters'"),
        ({"data_dir": "relative/path"}, "'data_dir' must be an absolute path"),
        ({"bundle": "has space"}, "'bundle'"),
        ({"heartbeat_interval": 0}, "'heartbeat_interval'"),
        ({"labels": {"Zone": "a"}}, "'labels': label key 'Zone' is invalid"),
        ({"labels": {"zone": ""}}, "'labels': label zone"),
        ({"labels": ["zone=a"]}, "'labels'"),
        ({"reschedule_after": 0}, "'reschedule_after'"),
        ({"reschedule_after": "30"}, "'reschedule_after'"),
    ],
)
def test_invalid_values_name_the_key(secret, over, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(base(secret, **over), where="/etc/cantainer/agent.json")
    msg = str(info.value)
    assert msg.startswith("/etc/cantainer/agent.json: ")
    assert fragment in msg


def test_labels_and_reschedule_after(secret):
    cfg = parse_config(base(secret, labels={"zone": "a", "disk": "ssd"}, reschedule_after=12))
    assert cfg.labels == (("disk", "ssd"), ("zone", "a")) and cfg.reschedule_after == 12.0
    assert parse_config(base(secret)).reschedule_after == 30.0 and parse_config(base(secret)).labels == ()


def test_missing_required(secret):
    cfg = base(secret)
    del cfg["node"], cfg["secret_file"]
    with pytest.raises(ConfigError, match="missing required key\\(s\\) 'node', 'secret_file'"):
        parse_config(cfg)


def test_not_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config([1, 2])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"cluster": "x",\n  oops}')
    with pytest.raises(ConfigError, match="invalid JSON at line 2"):
        load_config(str(bad))


def test_secret_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="refuses to start without a cluster secret"):
        parse_config(base(tmp_path / "missing"))
    # without file checks the structure alone validates
    assert parse_config(base(tmp_path / "missing"), check_files=False).node == "h1"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_secret_must_be_private(secret, mode):
    os.chmod(secret, mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}.*chmod 600"):
        parse_config(base(secret))


def test_secret_must_be_a_file(tmp_path):
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        parse_config(base(d))


def test_read_secret(secret, tmp_path):
    assert read_secret(str(secret)) == b"0123456789abcdef0123456789abcdef"
    weak = tmp_path / "weak"
    fd = os.open(weak, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="weak"):
        read_secret(str(weak))


def test_identity_names_what_the_agent_runs_with_founding_keys_and_defaults_aside(secret):
    """`up` takes a running agent as its own when the identities match (cantainer/bootstrap.py)."""
    from cantainer_agent.config import identity

    seeds = {"seeds": ["10.0.0.2:7481"]}
    founding = parse_config(base(secret, **seeds, initial_voters=["10.0.0.1:7480", "10.0.0.2:7480"]))
    member = parse_config(base(secret, **seeds, bootstrap=False))  # the same node after its cluster exists
    explicit = parse_config(base(secret, **seeds, raft_port=7480, labels={}))  # defaults spelt out
    assert founding.identity == member.identity == explicit.identity == identity(base(secret, **seeds))
    for change in ({"raft_port": 7490}, {"labels": {"zone": "a"}}, {"bundle": "ab" * 32}, {"node": "h2"}):
        assert parse_config(base(secret, **seeds, **change)).identity != founding.identity, change


def test_a_node_with_state_forgets_its_founding_keys_and_keeps_the_rest(secret, tmp_path):
    path = tmp_path / "agent.json"
    founding = base(secret, seeds=["10.0.0.2:7481"], initial_voters=["10.0.0.1:7480", "10.0.0.2:7480"])
    path.write_text(json.dumps(founding, indent=1) + "\n")
    os.chmod(path, 0o600)
    before = load_config(str(path))
    assert forget_founding(str(path)) is True
    after = load_config(str(path))
    assert json.loads(path.read_text()) == {**{k: v for k, v in founding.items() if k != "initial_voters"},
                                            "bootstrap": False}
    assert path.stat().st_mode & 0o777 == 0o600 and after.path == str(path)
    assert (after.bootstrap, after.initial_voters) == (False, ()) and after.identity == before.identity
    inode = path.stat().st_ino
    assert forget_founding(str(path)) is False and path.stat().st_ino == inode  # nothing left to drop: untouched


def test_forgetting_founding_keys_of_a_broken_file_raises_and_changes_nothing(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text("{not json")
    with pytest.raises(ValueError):
        forget_founding(str(path))
    assert path.read_text() == "{not json"

