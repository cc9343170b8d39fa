"""Stack files: the example reads as documented, and every mistake is one line naming the file, the line,
the key, what is wrong and how to fix it (the same cases run against the lab: test_stacks.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cantainer.stacks.file import StackError, load_stack, parse_stack

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["h1", "h2", "h3"]

GOOD = """\
name = "app"

[networks.front]
subnet = "10.31.0.0/24"

[volumes.db]

[services.web]
replicas = 2
ports = ["8080:80"]

[containers.db]
image = "alpine"
host = "h2"
volumes = ["db:/data"]
"""

# (what is wrong, the file, the line the error names, words the line must have)
MISTAKES = [
    ("TOML syntax", 'name = "app"\n[services.web\n', 2, ["invalid TOML", "expected ']'"]),
    ("no name", '[networks.front]\nsubnet = "10.31.0.0/24"\n', None, ["the stack has no name", 'name = "myapp"']),
    ("bad stack name", 'name = "App_1"\n', 1, ["name: stack name \"App_1\" is invalid", "lowercase"]),
    ("unknown top key", 'servces = 1\n' + GOOD, 1, ["servces: unknown key (did you mean services?)"]),
    ("unknown service key", GOOD.replace("replicas = 2", "replica = 2"), 9,
     ["services.web.replica: unknown key (did you mean replicas?)"]),
    ("replicas a string", GOOD.replace("replicas = 2", 'replicas = "2"'), 9,
     ['services.web.replicas: expected an integer, got "2" (a string)', "replicas = 3"]),
    ("negative replicas", GOOD.replace("replicas = 2", "replicas = -1"), 9, ["-1 is not a number of replicas"]),
    ("replicas with global", GOOD.replace("replicas = 2", 'replicas = 2\nmode = "global"'), 9,
     ["a global service has no replicas"]),
    ("bad mode", GOOD.replace("replicas = 2", 'mode = "globl"'), 9, ['"globl" is not a mode (did you mean global?)']),
    ("undeclared network", GOOD.replace("replicas = 2", 'networks = ["back"]'), 9,
     ['network "back" is not declared in this stack', "[networks.back]"]),
    ("two networks", GOOD.replace("replicas = 2", 'networks = ["front", "front"]'), 9,
     ["2 networks given: a container joins one network"]),
    ("undeclared volume", GOOD.replace('volumes = ["db:/data"]', 'volumes = ["logs:/data"]'), 15,
     ['volume "logs" is not declared in this stack', "[volumes.logs]"]),
    ("volume without target", GOOD.replace('volumes = ["db:/data"]', 'volumes = ["db"]'), 15,
     ["'db' is not NAME:/path[:ro]"]),
    ("bind of cantainer's data",
     GOOD.replace('volumes = ["db:/data"]', 'volumes = ["db:/data", "/var/lib/cantainer:/x"]'), 15,
     ["bind mount source /var/lib/cantainer is refused: it is /var/lib/cantainer", "bind a directory of your own"]),
    ("relative bind", GOOD.replace('volumes = ["db:/data"]', 'volumes = ["db:/data", "./conf:/etc/app"]'), 15,
     ["is not an absolute path"]),
    ("target in /proc", GOOD.replace('volumes = ["db:/data"]', 'volumes = ["db:/proc/x"]'), 15,
     ["mount target /proc/x is inside /proc"]),
    ("bad port", GOOD.replace('ports = ["8080:80"]', 'ports = ["80"]'), 10,
     ["services.web.ports: published port 80: give the host port too", 'ports = ["8080:80"]']),
    ("port range", GOOD.replace('ports = ["8080:80"]', 'ports = ["8080-8081:80-81"]'), 10,
     ["port ranges are not supported"]),
    ("ports on an internal network",
     GOOD.replace('subnet = "10.31.0.0/24"', 'subnet = "10.31.0.0/24"\ninternal = true'), 11,
     ["services.web.ports: an internal network has no published ports"]),
    ("a container's bad port", GOOD.replace('host = "h2"', 'host = "h2"\nports = ["80:99999"]'), 15,
     ["containers.db.ports: published port 80:99999: container port '99999' is not a port number"]),
    ("port twice", GOOD.replace('ports = ["8080:80"]', 'ports = ["8080:80", "8080:81"]'), 10,
     ["host port 8080/tcp is published twice"]),
    ("bad restart", GOOD.replace("replicas = 2", 'restart = "sometimes"'), 9,
     ['restart policy "sometimes" is not understood', "on-failure:MAX"]),
    ("bad constraint", GOOD.replace("replicas = 2", 'constraints = ["zone=a"]'), 9,
     ['constraint "zone=a" is not understood', "label.KEY==VALUE"]),
    ("bad subnet", GOOD.replace("10.31.0.0/24", "10.31.0.1/24"), 4, ["host bits set", "10.31.0.0/24"]),
    ("overlapping subnets", GOOD + '[networks.back]\nsubnet = "10.31.0.0/16"\n', 17,
     ["networks.back.subnet: 10.31.0.0/16 overlaps network front (10.31.0.0/24)"]),
    ("bad env name", GOOD.replace("replicas = 2", 'env = { "1X" = "a" }'), 9,
     ['environment variable name "1X" is invalid']),
    ("relative workdir", GOOD.replace("replicas = 2", 'workdir = "app"'), 9,
     ['"app" is not an absolute path', 'workdir = "/app"']),
    ("unknown host", GOOD.replace('host = "h2"', 'host = "h22"'), 14,
     ['host "h22" is not in the inventory (did you mean h2?)', "known hosts: h1, h2, h3"]),
    ("volume pinned elsewhere", GOOD.replace("[volumes.db]\n", '[volumes.db]\nhost = "h1"\n'), 15,
     ["the container runs on h2, but its volume db lives on h1"]),
    ("unused volume", GOOD + "[volumes.spare]\n", 16, ["the volume is used by nothing and has no host"]),
    ("service and container", GOOD + '[containers.web]\nhost = "h1"\n', 16, ["web is both a service and a container"]),
    ("name too long", GOOD.replace("[services.web]", "[services.a-very-long-name-for-a-service]"), 8,
     ['service name "a-very-long-name-for-a-service" is too long in this stack: app-a-very-long-name-for-a-service '
      "has 34 characters", "at most 32 characters"]),
    ("zero retries", GOOD.replace("replicas = 2", 'health = { cmd = "true", retries = 0 }'), 9,
     ["services.web.health.retries: 0 retries"]),
    ("health without cmd", GOOD.replace("replicas = 2", 'health = { interval = "5s" }'), 9,
     ["the health check has no cmd"]),
    ("bad duration", GOOD.replace("replicas = 2", 'health = { cmd = "true", interval = "5 seconds" }'), 9,
     ['"5 seconds" is not a duration']),
    ("bad memory", GOOD.replace("replicas = 2", 'resources = { memory = "lots" }'), 9, ['"lots" is not a size']),
    ("bad update order", GOOD.replace("replicas = 2", 'update = { order = "first" }'), 9,
     ['"first" is not one of start-first, stop-first']),
    ("section not a table", 'name = "app"\nservices = 3\n', 2, ["services: expected a table, got 3 (an integer)"]),
    ("empty image", GOOD.replace("replicas = 2", 'image = ""'), 9, ["services.web.image: is empty"]),
]


def test_the_example_reads_as_documented():
    stack = load_stack(ROOT / "stack.example.toml", HOSTS)
    assert stack["name"] == "shop"
    assert stack["networks"] == {"front": {"subnet": "10.20.0.0/24", "internal": None}}
    assert stack["volumes"] == {"db": {"host": None}}
    web = stack["services"]["web"]
    assert (web["replicas"], web["ports"], web["network"], web["resources"]) == (
        3, ["8080:80"], "front", {"memory": 64 << 20, "cpus": 0.5, "pids": 256})
    assert web["health"] == {"cmd": "wget -qO- http://127.0.0.1:80/", "interval": 5.0, "timeout": 2.0, "retries": 3}
    assert web["update"] == {"parallelism": 1, "order": "start-first", "monitor": 5.0, "failure_action": "rollback"}
    db = stack["services"]["db"]
    assert db["command"] == ["sh", "-c", "echo ready > /data/state; exec sleep 1d"]
    assert db["mounts"] == [{"type": "volume", "source": "db", "target": "/data", "readonly": False}]
    assert db["replicas"] is None and db["image"] == "alpine"  # not given: the cluster's default
    assert stack["containers"]["migrate"]["host"] == "h1"


@pytest.mark.parametrize("what, text, line, needles", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_every_mistake_is_one_line_with_file_line_what_and_how(what, text, line, needles, tmp_path):
    path = tmp_path / "stack.toml"
    path.write_text(text)
    with pytest.raises(StackError) as caught:
        load_stack(path, HOSTS)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: "), message
    assert " — " in message, message  # and how to fix it
    for needle in needles:
        assert needle in message, message


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(StackError, match="no such stack file"):
        load_stack(tmp_path / "nope.toml")
    with pytest.raises(StackError, match="is a directory"):
        load_stack(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(StackError, match="latin1.toml:1: not valid UTF-8"):
        load_stack(tmp_path / "latin1.toml")


def test_the_only_network_is_every_services_and_values_are_normalised():
    stack = parse_stack(GOOD.replace("replicas = 2", 'replicas = 2\nenv = { N = 3, B = true }\ncommand = "a \'b c\'"'),
                        Path("s.toml"), HOSTS)
    web = stack["services"]["web"]
    assert web["network"] == "front" and web["env"] == {"N": "3", "B": "true"} and web["command"] == ["a", "b c"]
    assert stack["containers"]["db"]["network"] == "front"


def test_the_readme_shows_the_example_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    assert "```toml\n" + (ROOT / "stack.example.toml").read_text() + "```" in readme


def test_ports_take_run_p_syntax_on_services_and_containers_and_stay_as_written():
    text = GOOD.replace('host = "h2"', 'host = "h2"\nports = ["127.0.0.1:5432:5432", "5353:53/udp"]')
    stack = parse_stack(text, Path("s.toml"), HOSTS)
    assert stack["containers"]["db"]["ports"] == ["127.0.0.1:5432:5432", "5353:53/udp"]
    assert stack["services"]["web"]["ports"] == ["8080:80"]
    assert "ports" not in parse_stack(GOOD, Path("s.toml"), HOSTS)["containers"]["db"]  # not given: not compared


def test_a_network_the_stack_makes_is_named_after_it_where_that_is_a_valid_name():
    from cantainer.stacks.plan import network_name

    assert network_name("shop", "front") == "shop-front"
    assert network_name("2048", "front") is None  # a network name starts with a letter: the default name then
