"""Command-line parsing: one clear line for a usage mistake, the container command kept verbatim."""
from __future__ import annotations

import pytest

from cantainer.cli import build_parser, main, split_command


def test_everything_after_the_first_double_dash_is_the_container_command():
    assert split_command(["run", "--host", "h1", "--", "sh", "-c", "echo -- x"]) == (
        ["run", "--host", "h1"], ["sh", "-c", "echo -- x"])
    assert split_command(["ps", "-a"]) == (["ps", "-a"], [])


def test_run_options_parse():
    args = build_parser().parse_args(["run", "--host", "h1", "-n", "10.0.0.0/24", "--cpus", "0.5", "-e", "A=1",
                                      "-e", "B=2", "-d", "--inventory", "inv.toml"])
    assert (args.host, args.network, args.cpus, args.env, args.detach, args.inventory) == (
        "h1", "10.0.0.0/24", 0.5, ["A=1", "B=2"], True, "inv.toml")


@pytest.mark.parametrize("argv, needle", [
    (["run", "--host", "h1", "-n", "10.0.0.0/24", "--cpus", "nan"], "not a finite number"),
    (["stop", "web", "--time", "inf"], "not a finite number"),
    (["frobnicate"], "invalid choice"),
    (["network"], "required"),
])
def test_usage_mistakes_are_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cantainer: error:") and needle in err[0]


def test_a_missing_inventory_names_the_environment_variable(capsys, monkeypatch):
    monkeypatch.delenv("CANTAINER_INVENTORY", raising=False)
    assert main(["ps"]) == 2
    assert "CANTAINER_INVENTORY" in capsys.readouterr().err
