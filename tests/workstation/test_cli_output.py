"""What the CLI prints: ps tables that never cut key fields, states in words, RFC 3339 times, --since,
logs options, and what `down` says per host."""
from __future__ import annotations

import argparse

import pytest

from cantainer.cli import output
from cantainer.cli.cluster import down_line
from cantainer.cli.containers import PS_HEADER, logs_request, ps_rows
from cantainer.errors import UsageError
from cantainer.teardown import HostTeardown

NOW = 1_700_000_000.0
COMMAND = ["python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", "/srv/www/static", "8080"]


def container(**over) -> dict:
    base = {"name": "frontend-web-production-1", "id": "0123456789ab", "host": "storage-node-eu-west-1",
            "network": "172.31.240.0/20", "ip": "172.31.255.254", "state": "running", "exit_code": None,
            "reason": None, "created_at": NOW - 300, "command": COMMAND, "unknown_since": None,
            "image": "registry.example.org:5000/team/web:1.4", "ports": ["8080/tcp"]}
    return {**base, **over}


KEYS = ("frontend-web-production-1", "0123456789ab", "storage-node-eu-west-1", "172.31.240.0/20", "172.31.255.254",
        "registry.example.org:5000/team/web:1.4", "8080/tcp")


def ps_lines(width: int | None, **over) -> list[str]:
    return output.table(PS_HEADER, ps_rows([container(**over)], NOW), shrink=("COMMAND",), width=width)


def test_piped_ps_is_not_width_limited():
    text = "\n".join(ps_lines(None))
    assert " ".join(COMMAND) in text and all(key in text for key in KEYS)


@pytest.mark.parametrize("width", [None, 80])
def test_a_command_with_newlines_and_escapes_stays_on_its_row_and_inert(width):
    """`sh -c` scripts carry newlines, and a command is whatever the container was started with:
    neither may break a row or reach the terminal as an escape sequence."""
    lines = ps_lines(width, command=["sh", "-c", "echo a\necho b\x1b[2J\r\t"])
    assert len(lines) == 2 if width is None else all("\n" not in line for line in lines)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\r" not in text and "\t" not in text
    assert "echo a\\necho b\\x1b[2J\\r\\t" in text if width is None else "echo a\\necho" in text
    assert output.printable("café — ok") == "café — ok"  # printable text, non-ASCII too, is left alone


@pytest.mark.parametrize("width", [200, 220])
def test_ps_on_a_terminal_shrinks_only_the_command(width):
    lines = ps_lines(width)
    assert all(key in lines[1] for key in KEYS) and "5m" in lines[1]
    assert lines[1].endswith("…") and max(map(len, lines)) <= width


@pytest.mark.parametrize("width", [60, 80, 120])
def test_ps_on_a_narrow_terminal_wraps_rows_without_cutting_keys(width):
    lines = ps_lines(width)
    text = "\n".join(lines)
    assert lines[0] == "frontend-web-production-1" and all(key in text for key in KEYS)
    assert "IP 172.31.255.254" in text and max(map(len, lines)) <= width


@pytest.mark.parametrize("over, shown", [
    ({}, "running"),
    ({"state": "exited", "exit_code": 0}, "exited (0)"),
    ({"state": "exited", "exit_code": 137, "reason": "oom-killed"}, "exited (137), oom-killed"),
    ({"state": "exited", "exit_code": 143, "reason": "stopped by down"}, "exited (143), stopped by down"),
    ({"state": "dead", "reason": "its process is gone (host restarted?)"},
     "dead, its process is gone (host restarted?)"),
    ({"state": "unknown", "reason": "host h3 is down", "unknown_since": NOW - 17},
     "unknown (host storage-node-eu-west-1 down 17s)"),
])
def test_state_in_words(over, shown):
    assert output.state_text(container(**over), NOW) == shown


def test_json_times_are_rfc3339():
    doc = {"containers": [{"created_at": 0.5, "started_at": None, "exit_code": 3, "oom_killed": False}],
           "nodes": [{"last_seen": 1_700_000_000.25, "joined_at": 1_700_000_000}]}
    assert output.json_times(doc) == {
        "containers": [{"created_at": "1970-01-01T00:00:00.500000Z", "started_at": None, "exit_code": 3,
                        "oom_killed": False}],
        "nodes": [{"last_seen": "2023-11-14T22:13:20.250000Z", "joined_at": "2023-11-14T22:13:20.000000Z"}]}


@pytest.mark.parametrize("text, expected", [
    ("90s", NOW - 90), ("10m", NOW - 600), ("1h30m", NOW - 5400), ("2d", NOW - 172800),
    ("2023-11-14T22:13:20Z", 1_700_000_000.0), ("2023-11-14T22:13:20", 1_700_000_000.0),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
])
def test_since_is_a_duration_or_a_time(text, expected):
    assert output.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "m"])
def test_since_refuses_anything_else(text):
    with pytest.raises(ValueError):
        output.parse_since(text, NOW)


def test_ages_are_compact():
    assert [output.age(NOW - s, NOW) for s in (5, 75, 7200, 200000)] == ["5s", "1m", "2h", "2d"]
    assert output.age(None, NOW) == "-"


def logs_args(**over) -> argparse.Namespace:
    base = {"follow": False, "tail": None, "since": None, "timestamps": False, "stdout": False, "stderr": False}
    return argparse.Namespace(**{**base, **over})


def test_logs_options_become_the_tools_arguments():
    request = logs_request(logs_args(follow=True, tail="20", timestamps=True, stderr=True))
    assert request.tool_args() == ["--follow", "--tail", "20", "--timestamps", "--stderr"]
    assert logs_request(logs_args(tail="all")).tool_args() == []
    since = logs_request(logs_args(since="2023-11-14T22:13:20Z")).tool_args()
    assert since == ["--since", "2023-11-14T22:13:20.000000Z"]


@pytest.mark.parametrize("over, needle", [({"tail": "ten"}, "--tail 'ten'"), ({"since": "soon"}, "--since")])
def test_bad_logs_options_are_usage_errors(over, needle):
    with pytest.raises(UsageError, match=needle):
        logs_request(logs_args(**over))


@pytest.mark.parametrize("outcome, purge, line", [
    (HostTeardown(True, stopped=2), False, "h1: agent stopped, 2 containers stopped"),
    (HostTeardown(True, stopped=1), False, "h1: agent stopped, 1 container stopped"),
    (HostTeardown(False, stopped=0), False, "h1: agent was not running, no container running"),
    (HostTeardown(True, kept=3), False, "h1: agent stopped, 3 containers left running"),
    (HostTeardown(True, stopped=1, removed=4), True, "h1: agent stopped, 1 container stopped, 4 containers removed, "
                                                     "state purged"),
])
def test_down_says_what_it_did_per_host(outcome, purge, line):
    assert down_line("h1", outcome, purge) == line
