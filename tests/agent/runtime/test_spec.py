"""ContainerSpec / Limits validation and serialisation (pure)."""
from __future__ import annotations

import pickle

import pytest

from cantainer_agent.runtime import ContainerSpec, Limits, SpecError, parse_bytes

SHA = "a" * 64


def spec(**kwargs) -> ContainerSpec:
    base = {"id": "c1", "name": "web", "image": SHA}
    base.update(kwargs)
    return ContainerSpec(**base)


def test_defaults_and_hostname():
    s = spec()
    assert s.command == ("/bin/sh",)
    assert s.hostname == "web"
    assert s.workdir == "/"
    assert s.limits == Limits()
    env = s.environ()
    assert env["HOSTNAME"] == "web" and env["PATH"].startswith("/usr/local/sbin")
    assert "HOME" not in env  # init sets it from the image's /etc/passwd (runtime/users.py)


def test_normalisation_makes_it_immutable_and_hashable():
    s = spec(command=["sh", "-c", "echo hi"], env={"A": "1", "B": "x=y"},
             hosts=[("10.0.0.2", "db db.local"), ("fd00::1", ["v6"])], limits={"memory": 64 << 20})
    assert s.command == ("sh", "-c", "echo hi")
    assert s.env == (("A", "1"), ("B", "x=y"))
    assert s.hosts == (("10.0.0.2", ("db", "db.local")), ("fd00::1", ("v6",)))
    assert s.limits.memory == 64 << 20
    hash(s)
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(AttributeError):
        s.name = "other"  # type: ignore[misc]
    assert s.environ()["A"] == "1"


def test_roundtrip_dict():
    s = spec(command=["/bin/true"], env={"K": "V"}, workdir="/srv", hosts=[("10.0.0.3", "x")],
             resolv_conf="nameserver 10.0.0.1\n", limits=Limits(memory=6 << 20, cpus=0.5, pids=10),
             cap_add=["NET_RAW"], cap_drop=["ALL"], seccomp="unconfined")
    assert ContainerSpec.from_dict(s.to_dict()) == s


def test_capabilities_follow_dockers_rules():
    from cantainer_agent.capabilities import CAPABILITIES, DEFAULT_CAPS

    assert set(spec().capabilities()) == set(DEFAULT_CAPS)
    assert "CAP_NET_RAW" not in DEFAULT_CAPS and "CAP_MKNOD" not in DEFAULT_CAPS
    s = spec(cap_add=["net_raw", "CAP_NET_RAW", "sys_ptrace"], cap_drop=["chown"])
    assert s.cap_add == ("CAP_NET_RAW", "CAP_SYS_PTRACE") and s.cap_drop == ("CAP_CHOWN",)
    assert set(s.capabilities()) == (set(DEFAULT_CAPS) | {"CAP_NET_RAW", "CAP_SYS_PTRACE"}) - {"CAP_CHOWN"}
    assert spec(cap_drop=["all"], cap_add=["kill"]).capabilities() == ("CAP_KILL",)
    assert set(spec(cap_add=["ALL"], cap_drop=["SYS_ADMIN"]).capabilities()) == set(CAPABILITIES) - {"CAP_SYS_ADMIN"}
    assert spec(cap_drop=["ALL"]).capabilities() == ()


def test_hosts_file():
    text = spec(hosts=[("10.0.0.2", "web")]).hosts_file()
    assert text.splitlines()[0] == "127.0.0.1\tlocalhost"
    assert "10.0.0.2\tweb" in text.splitlines()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"id": "../x"}, "container id"),
    ({"id": ""}, "container id"),
    ({"id": "a/b"}, "container id"),
    ({"name": "-web"}, "container name"),
    ({"name": "a" * 64}, "container name"),
    ({"name": "we b"}, "container name"),
    ({"image": "alpine"}, "sha256"),
    ({"image": "A" * 64}, "sha256"),
    ({"command": "echo hi"}, "list of strings"),
    ({"command": []}, "empty"),
    ({"command": [""]}, "empty"),
    ({"command": ["a\x00b"]}, "NUL"),
    ({"command": ["ok", 3]}, "must be a string"),
    ({"env": {"A=B": "1"}}, "env name"),
    ({"env": {"": "1"}}, "env name"),
    ({"env": {"A": "\x00"}}, "NUL"),
    ({"env": [("A",)]}, "pair"),
    ({"workdir": "relative"}, "absolute"),
    ({"hosts": [("not-an-ip", "x")]}, "IP address"),
    ({"hosts": [("10.0.0.1", "")]}, "no names"),
    ({"hosts": [("10.0.0.1", "bad name!")]}, "valid host name"),
    ({"limits": Limits(memory=None, pids=None)}, None),
    ({"cap_add": ["NET_FOO"]}, "cap-add: unknown capability 'NET_FOO'"),
    ({"cap_drop": ["chown", 3]}, "cap-drop: 3 is not a capability name"),
    ({"cap_add": "NET_RAW"}, "list of capability names"),
    ({"seccomp": "/etc/profile.json"}, "seccomp profile '/etc/profile.json' is not supported"),
])
def test_invalid_fields(kwargs, fragment):
    if fragment is None:
        spec(**kwargs)
        return
    with pytest.raises(SpecError) as caught:
        spec(**kwargs)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"memory": 1024}, "minimum"),
    ({"memory": True}, "integer"),
    ({"memory": 1.5e9}, "integer"),
    ({"cpus": 0}, "minimum"),
    ({"cpus": float("nan")}, "number"),
    ({"cpus": "1"}, "number"),
    ({"pids": 0}, "range"),
    ({"pids": 10 ** 9}, "range"),
])
def test_invalid_limits(kwargs, fragment):
    with pytest.raises(SpecError) as caught:
        Limits(**kwargs)
    assert fragment in str(caught.value)


def test_from_dict_errors():
    with pytest.raises(SpecError, match="unknown container spec field"):
        ContainerSpec.from_dict({"id": "c", "name": "n", "image": SHA, "privileged": True})
    with pytest.raises(SpecError, match="lacks"):
        ContainerSpec.from_dict({"id": "c"})
    with pytest.raises(SpecError, match="unknown limits field"):
        Limits.from_dict({"swap": 1})


@pytest.mark.parametrize("text, value", [
    ("512m", 512 << 20), ("1g", 1 << 30), ("1G", 1 << 30), ("100", 100), ("64MiB", 64 << 20), ("1.5k", 1536),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "m", "12x", "-1m", "1 2"])
def test_parse_bytes_invalid(text):
    with pytest.raises(SpecError):
        parse_bytes(text)
