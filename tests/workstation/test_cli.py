"""Command-line parsing: one clear line for a usage mistake (with a suggestion and the right help),
the container command as docker takes it, help with examples, exit codes, the README reference."""
from __future__ import annotations

import argparse

import pytest

from cantainer.cli import build, build_parser, exitcodes, main
from cantainer.cli.containers import command_of
from cantainer.cli.reference import README, readme_section, render
from cantainer.client import AgentError


def parse(*argv: str) -> argparse.Namespace:
    args, extras = build_parser().parse_known_args(list(argv))
    assert extras == []
    return args


@pytest.mark.parametrize("argv, name, command", [
    (["exec", "-it", "web", "sh"], "web", ["sh"]),                       # docker's habit: no `--`
    (["exec", "web", "ls", "-l", "/"], "web", ["ls", "-l", "/"]),        # the command's own options
    (["exec", "web", "--", "sh", "-c", "a"], "web", ["sh", "-c", "a"]),  # `--` still accepted
    (["exec", "web", "sh", "-c", "echo -- x"], "web", ["sh", "-c", "echo -- x"]),  # a later `--` is the command's
])
def test_exec_takes_everything_after_the_name_as_the_command(argv, name, command):
    args = parse(*argv)
    assert (args.name, command_of(args)) == (name, command)


@pytest.mark.parametrize("argv, command", [
    (["run", "--host", "h1", "-n", "10.0.0.0/24", "-d", "sleep", "5"], ["sleep", "5"]),
    (["run", "--host", "h1", "-n", "10.0.0.0/24", "sh", "-c", "echo -- x; exit 3"], ["sh", "-c", "echo -- x; exit 3"]),
    (["run", "--host", "h1", "-n", "10.0.0.0/24", "--", "ls", "-l"], ["ls", "-l"]),
    (["run", "--host", "h1", "-n", "10.0.0.0/24", "-d", "--", "--", "x"], ["--", "x"]),
    (["run", "--host", "h1", "-n", "10.0.0.0/24"], []),  # the default command (/bin/sh) is the caller's
])
def test_run_takes_everything_after_its_options_as_the_command(argv, command):
    assert command_of(parse(*argv)) == command


def test_service_create_takes_options_after_its_name_and_the_command_after_dashes():
    args = parse("service", "create", "web", "--replicas", "3", "-n", "10.0.0.0/24", "-e", "A=1", "-p", "8080:80",
                 "--constraint", "label.zone==a", "--update-order", "stop-first", "--", "sh", "-c", "exec x --y")
    assert (args.name, args.replicas, args.network, args.env, args.publish, args.constraint, args.update_order,
            args.command) == ("web", 3, "10.0.0.0/24", ["A=1"], ["8080:80"], ["label.zone==a"], "stop-first",
                              ["sh", "-c", "exec x --y"])
    assert parse("service", "create", "web", "-n", "10.0.0.0/24").command == []
    update = parse("service", "update", "web", "--image", "app:2", "--force", "--", "serve")
    assert (update.image, update.force, update.command) == ("app:2", True, ["serve"])


def test_run_options_parse():
    args = parse("run", "--host", "h1", "-n", "10.0.0.0/24", "--cpus", "0.5", "-e", "A=1", "-e", "B=2", "-d",
                 "--inventory", "inv.toml")
    assert (args.host, args.network, args.cpus, args.env, args.detach, args.inventory) == (
        "h1", "10.0.0.0/24", 0.5, ["A=1", "B=2"], True, "inv.toml")


@pytest.mark.parametrize("argv, needles, code", [
    (["run", "--host", "h1", "-n", "10.0.0.0/24", "--cpus", "nan"], ["not a finite number", "cantainer run --help"],
     125),
    (["stop", "web", "--time", "inf"], ["not a finite number", "cantainer stop --help"], 2),
    (["stauts"], ["unknown command 'stauts'", "did you mean status?", "see `cantainer --help`"], 2),
    (["frobnicate"], ["unknown command 'frobnicate'", "see `cantainer --help`"], 2),
    (["network", "crate", "10.0.0.0/24"], ["'crate'", "did you mean create?", "cantainer network --help"], 2),
    (["ps", "--jsn"], ["unknown option --jsn", "did you mean --json?", "see `cantainer ps --help`"], 2),
    (["network", "ls", "--frob"], ["unknown option --frob", "see `cantainer network ls --help`"], 2),
    (["logs", "web", "extra"], ["unexpected argument: extra", "cantainer logs --help"], 2),
    (["run", "--hots", "h1", "-n", "10.0.0.0/24"], ["--host", "cantainer run --help"], 125),
    (["exec", "-it", "web"], ["no command given", "cantainer exec web cat /etc/hostname"], 125),
    (["run", "-d", "sleep", "1"], ["required: -n/--network", "cantainer run --help"], 125),
    (["run", "--host", "h1", "--constraint", "host==h1", "-n", "10.0.0.0/24"], ["--constraint places", "--host"],
     125),
    (["run", "-n", "10.0.0.0/24", "--constraint", "zone=a"], ["--constraint: constraint 'zone=a' is not understood",
                                                             "label.KEY==VALUE"], 125),
    (["run", "-n", "10.0.0.0/24", "--restart", "sometimes"], ["--restart: restart policy 'sometimes' is unknown",
                                                             "on-failure[:MAX]"], 125),
    (["run", "-n", "10.0.0.0/24", "--restart", "always:3"], ["only on-failure takes a maximum"], 125),
    (["run", "-n", "10.0.0.0/24", "--restart", "always", "--rm"], ["--rm and --restart contradict"], 125),
    (["run", "-n", "10.0.0.0/24", "--health-interval", "soon"], ["--health-interval 'soon' is not a duration"], 125),
    (["run", "-n", "10.0.0.0/24", "--health-retries", "0"], ["--health-retries 0 must be at least 1"], 125),
    (["run", "-n", "10.0.0.0/24", "--health-cmd", "x", "--no-healthcheck"], ["contradict"], 125),
    (["service", "create", "web"], ["required: -n/--network"], 2),
    (["service", "create", "web", "-n", "10.0.0.0/24", "--replicas", "2", "--mode", "global"],
     ["not allowed with argument --replicas"], 2),
    (["service", "create", "web", "-n", "10.0.0.0/24", "-p", "80"], ["-p 80: give the host port too"], 2),
    (["service", "create", "web", "-n", "10.0.0.0/24", "--update-monitor", "x"], ["--update-monitor 'x' is not"], 2),
    (["service", "create", "web", "-n", "10.0.0.0/24", "--update-order", "last"],
     ["--update-order 'last' is not one of start-first, stop-first"], 2),
    (["service", "scale", "web"], ["'web' is not NAME=N", "web=3"], 2),
    (["service", "remove", "web"], ["unknown `cantainer service` verb 'remove'"], 2),
])
def test_usage_mistakes_are_one_line_with_a_suggestion_and_the_right_help(argv, needles, code, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cantainer: error:"), err
    for needle in needles:
        assert needle in err[0]


@pytest.mark.parametrize("argv, first_line", [
    ([], "usage: cantainer "),
    (["network"], "usage: cantainer network "),
])
def test_a_command_alone_shows_its_help(argv, first_line, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(first_line) and "examples:" in out


def walk(parser: argparse.ArgumentParser, prefix: str = "cantainer"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from walk(sub, f"{prefix} {name}")


def test_every_command_has_examples_of_itself_in_its_help():
    commands = list(walk(build_parser()))
    assert len(commands) >= 13
    for name, sub in commands:
        text = sub.format_help()
        assert "examples:" in text, name
        examples = text.split("examples:", 1)[1]
        assert name in examples, f"{name}: its examples do not use it"


def test_a_missing_inventory_names_the_environment_variable(capsys, monkeypatch):
    monkeypatch.delenv("CANTAINER_INVENTORY", raising=False)
    assert main(["ps"]) == 2
    assert "CANTAINER_INVENTORY" in capsys.readouterr().err


@pytest.mark.parametrize("code, tool_error, exit_code", [
    ("not_found", None, 3), ("invalid", None, 6), ("already_exists", None, 4), ("conflict", None, 5),
    ("unavailable", None, 69), ("outcome_unknown", None, 75), ("internal", None, 70), ("something_new", None, 1),
    ("not_found", 125, 125), ("unavailable", 125, 125),  # run/exec: cantainer's own failure
    ("command_not_found", 125, 127), ("command_not_executable", 125, 126),  # docker's codes for the command
    ("command_not_found", None, 127),
])
def test_agent_error_codes_map_to_exit_codes_through_one_table(code, tool_error, exit_code):
    assert exitcodes.exit_code_for(AgentError("h1", code, "message"), tool_error) == exit_code


def test_run_and_exec_report_their_own_failures_as_125_and_stack_commands_as_1():
    _, commands = build()
    # apply/plan/rm-stack: 1 for any error, so that --check's 2 only ever means "changes pending"
    assert commands.tool_errors == {"run": 125, "exec": 125, "apply": 1, "plan": 1, "rm-stack": 1}


def test_readme_cli_reference_is_generated_from_the_parser():
    """Regenerate with `python -m cantainer.cli.reference --write` when a command changes."""
    assert readme_section(README.read_text()) == render()


@pytest.mark.parametrize("argv, needle", [
    (["down", "--purge", "--keep-containers", "-i", "x.toml"], "--purge and --keep-containers contradict"),
    (["down", "--time", "-1", "-i", "x.toml"], "--time -1 is out of range"),
    (["logs", "web", "--tail", "ten", "-i", "x.toml"], "--tail 'ten' is not a number of lines"),
    (["logs", "web", "--since", "yesterday", "-i", "x.toml"], "--since 'yesterday' is neither a duration nor a time"),
])
def test_bad_option_values_are_usage_errors_before_anything_is_done(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


CONTAINERS = [{"name": "web", "id": "a1b2c3d4e5f6"}, {"name": "db", "id": "a1b2ffffffff"},
              {"name": "a1b2c3d4e5f6", "id": "000000000000"}]


@pytest.mark.parametrize("wanted, name", [
    ("web", "web"), ("a1b2ffffffff", "db"), ("a1b2f", "db"),
    ("a1b2c3d4e5f6", "a1b2c3d4e5f6"),  # a name wins over an id
])
def test_containers_are_found_by_name_id_or_unique_id_prefix(wanted, name):
    from cantainer.containers import pick

    assert pick(CONTAINERS, wanted)["name"] == name


@pytest.mark.parametrize("wanted, needle, exit_code", [
    ("a1b2", "is the start of the ids of web, db", 6),  # ambiguous: invalid input
    ("zz", "no container named", 3),  # not found, as the agent's not_found
    ("a1", "no container named", 3),  # a prefix needs 3 characters
])
def test_an_ambiguous_or_unknown_container_is_a_clear_error(wanted, needle, exit_code):
    from cantainer.containers import pick
    from cantainer.errors import CantainerError

    with pytest.raises(CantainerError, match=needle) as raised:
        pick(CONTAINERS, wanted)
    assert raised.value.exit_code == exit_code


def test_security_options_parse_and_normalise():
    from cantainer.containers import parse_security

    args = build_parser().parse_args(["run", "--host", "h1", "-n", "10.0.0.0/24", "--cap-add", "net_raw",
                                      "--cap-add", "CAP_SYS_PTRACE", "--cap-drop", "ALL",
                                      "--security-opt", "seccomp=unconfined", "--security-opt", "no-new-privileges"])
    assert parse_security(args.cap_add, args.cap_drop, args.security_opt) == {
        "cap_add": ["CAP_NET_RAW", "CAP_SYS_PTRACE"], "cap_drop": ["ALL"], "seccomp": "unconfined"}
    assert parse_security([], [], [])["seccomp"] == "default"


@pytest.mark.parametrize("flags, needle", [
    (["--cap-add", "NET_FOO"], "--cap-add: unknown capability 'NET_FOO'"),
    (["--cap-drop", "chwon"], "--cap-drop: unknown capability 'chwon'"),
    (["--security-opt", "seccomp=/tmp/profile.json"], "--security-opt 'seccomp=/tmp/profile.json' is not supported"),
    (["--security-opt", "apparmor=unconfined"], "is not supported"),
])
def test_bad_security_options_are_one_line_before_any_connection(flags, needle, capsys, tmp_path):
    inventory = tmp_path / "missing.toml"  # never read: the flags are refused first
    # 125: run's own failure, as docker run reports an invalid --cap-add
    argv = ["run", "--inventory", str(inventory), "--host", "h1", "-n", "10.0.0.0/24", *flags, "--", "true"]
    assert main(argv) == 125
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cantainer: error:") and needle in err[0], err


@pytest.mark.parametrize("outcomes, code", [
    ([{}, {}], 0),
    ([{}, "missing"], 3),  # one name unknown: not found
    (["missing", "missing"], 3),  # every failure agrees
    (["missing", "ambiguous"], 1),  # failures of different kinds: the generic code
])
def test_several_containers_exit_with_their_failures_code(outcomes, code, capsys):
    from cantainer.cli.containers import report
    from cantainer.containers import AmbiguousContainer, ContainerNotFound

    errors = {"missing": ContainerNotFound("no container named 'x'"), "ambiguous": AmbiguousContainer("'a1' is ...")}
    results = [(f"c{i}", errors.get(o, o) if isinstance(o, str) else o) for i, o in enumerate(outcomes)]
    assert report(results, lambda name, result: f"removed {name}") == code
    assert capsys.readouterr().err.count("cantainer: error:") == sum(isinstance(o, str) for o in outcomes)
