"""The CLI's side of networking: -p parsed before anything is done, PORTS in ps, network verbs (pure)."""
from __future__ import annotations

import pytest

from cantainer.cli import build_parser, main
from cantainer.cli.containers import ps_rows
from cantainer.cli.output import ports_text
from cantainer.containers import RunRequest, parse_publish, run_params


def test_publish_flags_parse_into_the_request():
    args = build_parser().parse_args(["run", "--host", "h1", "-n", "backend", "-p", "8080:80", "-p",
                                      "127.0.0.1:5353:53/udp", "--", "true"])
    assert args.network == "backend"
    published = parse_publish(args.publish)
    assert published == [{"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80, "protocol": "tcp"},
                         {"host_ip": "127.0.0.1", "host_port": 5353, "container_port": 53, "protocol": "udp"}]

    class Image:
        def params(self):
            return {}
    params = run_params(RunRequest(host="h1", network="backend", publish=published), Image())
    assert params["publish"] == published and params["network"] == "backend"
    assert "publish" not in run_params(RunRequest(host="h1", network="backend"), Image())


@pytest.mark.parametrize("flags, needle", [
    (["-p", "80"], "-p 80: give the host port too"),
    (["-p", "8080:80/sctp"], "protocol 'sctp' is not tcp or udp"),
    (["-p", "99999:80"], "host port '99999' is not a port number from 1 to 65535"),
    (["-p", "8080:80", "-p", "8080:81"], "host port 8080/tcp is published twice"),
    (["-p", "example.org:80:80"], "'example.org' is not an IPv4 address"),
])
def test_bad_publish_flags_are_one_line_before_any_connection(flags, needle, capsys, tmp_path):
    argv = ["run", "--inventory", str(tmp_path / "missing.toml"), "--host", "h1", "-n", "10.0.0.0/24", *flags,
            "--", "true"]
    assert main(argv) == 125  # run's own failure, as docker run reports a bad -p
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cantainer: error:") and needle in err[0], err


def test_ps_shows_published_then_exposed_ports_and_the_network_name():
    container = {"name": "web", "id": "a1", "host": "h1", "network": "10.0.0.0/24", "network_name": "backend",
                 "ip": "10.0.0.2", "state": "running", "created_at": 0.0, "image": "alpine", "command": ["sh"],
                 "ports": ["80/tcp", "443/tcp"],
                 "publish": [{"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80, "protocol": "tcp"}]}
    assert ports_text(container) == "0.0.0.0:8080->80/tcp, 443/tcp"
    assert ports_text({"ports": [], "publish": []}) == "-"
    row = ps_rows([container], now=10.0)[0]
    assert row[3] == "backend" and row[10] == "0.0.0.0:8080->80/tcp, 443/tcp"
    assert ps_rows([{**container, "network_name": None}], now=10.0)[0][3] == "10.0.0.0/24"  # an older agent


def test_network_verbs_parse():
    args = build_parser().parse_args(["network", "create", "10.1.0.0/24", "--name", "backend", "--internal"])
    assert (args.cidr, args.name, args.internal) == ("10.1.0.0/24", "backend", True)
    assert build_parser().parse_args(["network", "rm", "backend"]).network == "backend"
    assert build_parser().parse_args(["network", "ls", "--json"]).json
