"""The image config and docker run's merge of it with the options."""
from __future__ import annotations

import json
import signal

import pytest

from cantainer_agent.images.config import (
    DEFAULT_PATH,
    ImageConfig,
    NoCommand,
    effective,
    effective_health,
    parse_signal,
)
from cantainer_agent.images.errors import ImageSourceError

D = "sha256:" + "c" * 64


def config(**inner) -> ImageConfig:
    return ImageConfig.parse(json.dumps({"architecture": "amd64", "os": "linux", "config": inner,
                                         "rootfs": {"type": "layers", "diff_ids": [D]}}).encode())


def test_fields_are_read():
    c = config(Entrypoint=["/entry"], Cmd=["serve", "--port", "80"], Env=["A=1", "B=x=y", "junk"], WorkingDir="/srv",
               User="web:web", StopSignal="SIGQUIT", ExposedPorts={"80/tcp": {}, "53/udp": {}})
    assert c.entrypoint == ("/entry",) and c.cmd == ("serve", "--port", "80")
    assert c.env == (("A", "1"), ("B", "x=y")) and c.workdir == "/srv" and c.user == "web:web"
    assert c.exposed_ports == ("53/udp", "80/tcp") and c.diff_ids == (D,) and c.architecture == "amd64"
    assert ImageConfig.from_dict(c.to_dict()) == c


def test_docker_merge_rules():
    c = config(Entrypoint=["/entry"], Cmd=["default"], Env=["A=1", "PATH=/bin"], WorkingDir="/srv", User="web")
    plain = effective(c)
    assert plain.argv == ("/entry", "default") and plain.workdir == "/srv" and plain.user == "web"
    assert dict(plain.env) == {"A": "1", "PATH": "/bin"} and plain.stop_signal == signal.SIGTERM
    assert effective(c, command=["other", "x"]).argv == ("/entry", "other", "x")  # command replaces Cmd only
    assert effective(c, entrypoint="/bin/sh").argv == ("/bin/sh",)  # --entrypoint drops the image's Cmd
    assert effective(c, entrypoint="/bin/sh", command=["-c", "id"]).argv == ("/bin/sh", "-c", "id")
    assert effective(c, entrypoint="", command=["id"]).argv == ("id",)
    merged = effective(c, env={"A": "2", "NEW": "3"}, workdir="/tmp", user="0:0")
    assert dict(merged.env) == {"A": "2", "PATH": "/bin", "NEW": "3"} and merged.workdir == "/tmp"
    assert merged.user == "0:0"
    assert dict(effective(config(Cmd=["x"])).env) == {"PATH": DEFAULT_PATH}
    assert effective(config(Cmd=["x"], WorkingDir="rel")).workdir == "/rel"


def test_no_command_anywhere_is_an_error():
    with pytest.raises(NoCommand, match="no Entrypoint or Cmd"):
        effective(config(), image="image reg.io/x:1")
    with pytest.raises(NoCommand):
        effective(config(Cmd=["x"]), entrypoint="")


@pytest.mark.parametrize("text, number", [("SIGQUIT", 3), ("quit", 3), ("9", 9), (15, 15), ("SIGRTMIN+1", 35)])
def test_signals(text, number):
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "99", ""])
def test_bad_signals(text):
    with pytest.raises(ValueError):
        parse_signal(text)
    if text:
        with pytest.raises(ImageSourceError, match="StopSignal"):
            effective(config(Cmd=["x"], StopSignal=text))


@pytest.mark.parametrize("document, fragment", [
    ({"config": {"Cmd": "sh -c x"}, "rootfs": {"diff_ids": []}}, "Cmd must be a list"),
    ({"config": {}, "rootfs": {"diff_ids": ["md5:1"]}}, "diff_ids"),
    ({"config": {}}, "diff_ids"),
    ({"config": {"ExposedPorts": ["80/tcp"]}, "rootfs": {"diff_ids": []}}, "ExposedPorts"),
    ({"config": {"User": 1000}, "rootfs": {"diff_ids": []}}, "User must be a string"),
])
def test_malformed_configs(document, fragment):
    with pytest.raises(ImageSourceError, match=fragment):
        ImageConfig.parse(json.dumps(document).encode())


def test_the_healthcheck_is_read_in_seconds_and_merged_with_the_options_as_docker_does():
    c = config(Cmd=["serve"], Healthcheck={"Test": ["CMD-SHELL", "wget -qO- localhost"], "Interval": 5_000_000_000,
                                           "Timeout": 0, "Retries": 2})
    assert c.healthcheck == (("CMD-SHELL", "wget -qO- localhost"), 5.0, 0.0, 0.0, 2)
    assert ImageConfig.from_dict(c.to_dict()) == c
    assert effective_health(c, None) == {"test": ["CMD-SHELL", "wget -qO- localhost"], "interval": 5.0, "retries": 2}
    assert effective_health(c, {"interval": 1.0, "timeout": 3.0}) == {
        "test": ["CMD-SHELL", "wget -qO- localhost"], "interval": 1.0, "timeout": 3.0, "retries": 2}
    assert effective_health(c, {"test": ["CMD-SHELL", "true"]})["test"] == ["CMD-SHELL", "true"]
    assert effective_health(c, {"disable": True}) is None
    assert effective_health(config(Cmd=["x"], Healthcheck={"Test": ["NONE"]}), None) is None
    assert effective_health(config(Cmd=["x"]), {"interval": 2.0}) is None  # timings alone check nothing
    with pytest.raises(ImageSourceError, match="Healthcheck.Interval"):
        config(Cmd=["x"], Healthcheck={"Test": ["CMD", "true"], "Interval": -1})
