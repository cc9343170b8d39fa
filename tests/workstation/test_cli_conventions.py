"""The CLI's conventions (issue 17): -i before the subcommand too, --json on every read command, -q on
list commands, -v parsing, and shell completion for bash and zsh — the scripts run in the real shells."""
from __future__ import annotations

import argparse
import re
import subprocess
import time

import pytest

from cantainer.cli import build_parser, main
from cantainer.cli.completion import script, tables


def commands(parser: argparse.ArgumentParser | None = None, path: str = ""):
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}".strip(), sub
                yield from commands(sub, f"{path} {name}".strip())


def options(sub: argparse.ArgumentParser) -> set[str]:
    return {flag for action in sub._actions for flag in action.option_strings}


READS = {"status", "ps", "network ls", "volume ls", "volume inspect", "image ls", "service ls", "service ps"}
LISTS = {"ps", "network ls", "volume ls", "image ls", "service ls", "service ps"}


def test_every_read_command_has_json_and_every_list_command_has_quiet():
    found = dict(commands())
    reads = {name for name in found if name.split()[-1] in ("ls", "ps", "inspect", "status", "plan")}
    assert READS <= reads
    for name in reads:
        assert "--json" in options(found[name]), name
    for name in {n for n in found if n.split()[-1] in ("ls", "ps")}:
        assert {"-q", "--quiet"} <= options(found[name]), name
    assert LISTS <= {n for n in found if "--quiet" in options(found[n])}


@pytest.mark.parametrize("argv", [
    ["-i", "INV", "ps"], ["--inventory", "INV", "ps"], ["ps", "-i", "INV"], ["-i", "INV", "volume", "ls"],
    ["-i", "INV", "run", "-n", "10.0.0.0/24", "--host", "h1", "true"],  # run's own -i is --interactive
    ["up", "INV"], ["down", "INV", "--purge"], ["-i", "INV", "down", "INV"],  # the same one twice is fine
])
def test_the_inventory_is_taken_before_the_subcommand_as_well_as_after(argv, tmp_path):
    from cantainer.cli.common import inventory_path

    inventory = tmp_path / "inv.toml"
    args = build_parser().parse_args([str(inventory) if word == "INV" else word for word in argv])
    assert inventory_path(args) == inventory
    if "run" in argv:
        assert args.interactive is False


@pytest.mark.parametrize("argv", [["up", "a.toml", "-i", "b.toml"], ["-i", "a.toml", "down", "b.toml"],
                                  ["-i", "a.toml", "ps", "-i", "b.toml"]])
def test_two_different_inventories_are_refused_in_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two inventories given: " in err and "a.toml" in err and "b.toml" in err


def test_a_run_given_the_inventory_first_still_reports_its_own_failures_as_125(tmp_path, capsys):
    code = main(["-i", str(tmp_path / "none.toml"), "run", "--host", "h1", "-n", "10.0.0.0/24", "-v", "x", "true"])
    assert code == 125
    assert "is not NAME:/path[:ro]" in capsys.readouterr().err


@pytest.mark.parametrize("text, mount", [
    ("data:/var/lib/db", {"type": "volume", "source": "data", "target": "/var/lib/db", "readonly": False}),
    ("data:/x:ro", {"type": "volume", "source": "data", "target": "/x", "readonly": True}),
    ("db.1:/x:rw", {"type": "volume", "source": "db.1", "target": "/x", "readonly": False}),
    ("/srv/site:/www:ro", {"type": "bind", "source": "/srv/site", "target": "/www", "readonly": True}),
    ("/srv//site/:/www/", {"type": "bind", "source": "/srv/site", "target": "/www", "readonly": False}),
])
def test_volume_options_parse(text, mount):
    from cantainer.containers import parse_mounts

    assert parse_mounts([text]) == [mount]


@pytest.mark.parametrize("items, needle", [
    (["data:/x", "other:/x"], "two mounts go to /x"),
    (["data:/x", "data:/y"], "volume data is mounted twice"),
    (["~/d:/x"], "not an absolute path"),
    (["a/b:/x"], "not an absolute path"),
    ([":/x"], "has no source"),
    (["data:/x:ro:z"], "is not NAME:/path[:ro]"),
])
def test_bad_volume_options_are_usage_errors(items, needle):
    from cantainer.containers import parse_mounts
    from cantainer.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(needle)):
        parse_mounts(items)


# -- completion -------------------------------------------------------------------------------------
def test_the_completion_tables_come_from_the_parser():
    data = tables(build_parser())
    assert set(data) == {""} | {name for name, _ in commands()}
    assert {"volume", "run", "completion"} <= set(data[""]["subs"]) and "-i" in data[""]["valued"]
    assert data["run"]["rest"] and data["exec"]["rest"] and not data["ps"]["rest"]
    assert data["completion"]["positional"] == "bash zsh" and data["up"]["positional"] == "__files__"
    assert data["run"]["choices"]["--inventory"] == ["__files__"]


def bash_candidates(*words: str) -> list[str]:
    """COMPREPLY of the bash script for the command line `words` (the last word is being completed)."""
    program = (script("bash", build_parser()) + "\nCOMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); _cantainer; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "-c", program, "bash", *words], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize("words, expected", [
    (["cantainer", "vol"], ["volume"]),
    (["cantainer", "volume", ""], ["ls", "inspect", "create", "rm"]),
    (["cantainer", "-i", "inv.toml", "volume", "l"], ["ls"]),
    (["cantainer", "volume", "ls", "--j"], ["--json"]),
    (["cantainer", "ps", "-"], ["-h", "--help", "-a", "--all", "-q", "--quiet", "--json", "--stale", "-i",
                                "--inventory"]),
    (["cantainer", "completion", ""], ["bash", "zsh"]),
    (["cantainer", "run", "--host", "h1", "sh", "-"], []),  # the container's command: not ours to complete
    (["cantainer", "exec", "web", "--", "l"], []),
])
def test_bash_completes_commands_options_and_choices(words, expected):
    assert bash_candidates(*words) == expected


def test_bash_completes_file_names_for_the_inventory(tmp_path):
    (tmp_path / "inventory.toml").write_text("")
    assert bash_candidates("cantainer", "status", "-i", str(tmp_path / "inv")) == [str(tmp_path / "inventory.toml")]
    assert bash_candidates("cantainer", "up", str(tmp_path / "inv")) == [str(tmp_path / "inventory.toml")]


def _need(tool: str) -> None:
    import shutil

    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: run `sudo make setup`")


@pytest.mark.parametrize("shell, argv", [("zsh", ["zsh", "-f"]), ("bash", ["bash", "--norc", "--noprofile"])])
def test_tab_completes_in_an_interactive_shell(shell, argv, tmp_path):
    """A person at a terminal: source the script, type `cantainer volu`, press Tab, see `volume`;
    then `ls --js` Tab gives `--json`."""
    _need("tmux")
    _need(shell)
    path = tmp_path / f"completion.{shell}"
    path.write_text(script(shell, build_parser()))
    session = f"cmpl-{shell}-{time.monotonic_ns()}"
    env = ["env", f"HOME={tmp_path}", "PS1=$ ", "PROMPT=$ ", "TERM=xterm"]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "20", *env, *argv], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"], capture_output=True,
                                  text=True).stdout

        def wait(text: str) -> None:
            deadline = time.monotonic() + 20
            while text not in screen() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert text in screen(), screen()

        subprocess.run(["tmux", "send-keys", "-t", session, f"source {path}; echo sourced", "Enter"], check=True)
        wait("\nsourced")
        subprocess.run(["tmux", "send-keys", "-t", session, "cantainer volu", "Tab"], check=True)
        wait("$ cantainer volume")  # (the pane drops the space Tab added; the next line shows it)
        subprocess.run(["tmux", "send-keys", "-t", session, "ls --js", "Tab"], check=True)
        wait("cantainer volume ls --json")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
