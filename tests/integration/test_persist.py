"""The connection process on the lab: CLI calls share one SSH connection per host, a changed known_hosts
or inventory gets a new one, --no-persist and CANTAINER_PERSIST=no start nothing, a killed process is
replaced, errors read as without it, and the CLI process itself imports neither asyncssh nor rich."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest

from cantainer.persist import client, settings
from tests.labcli import CANTAINER, cantainer, cli, ok, one_line_error

pytestmark = pytest.mark.lab


def stats() -> dict:
    """The running connection process's own count of SSH connections made, per host."""
    async def ask():
        _, writer, answer = await client.request({"op": "stats"})
        writer.close()
        return answer
    return asyncio.run(ask())


@pytest.fixture
def web(cluster):
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.77.0.0/24", "--name", "pweb", "-d", "sleep", "3600"))
    yield "pweb"
    cli(cluster, "rm", "-f", "pweb")


def test_cli_calls_share_one_connection_per_host(cluster, web):
    def calls() -> None:
        ok(cli(cluster, "ps"))  # asks every host who leads
        ok(cli(cluster, "exec", "pweb", "true"))
        ok(cli(cluster, "logs", "pweb"))
        ok(cli(cluster, "run", "--host", "h2", "-n", "10.77.0.0/24", "-d", "--rm", "true"))

    calls()  # (the process is the test session's: earlier tests may have made connections already)
    before = stats()["connections_made"]
    assert set(before) >= {"h1", "h2", "h3"}, before
    for _ in range(3):
        calls()
    assert stats()["connections_made"] == before  # twelve CLI calls, not one new SSH connection


@pytest.mark.parametrize("args", [["ps"], ["status"], ["status", "--json"], ["logs", "pweb"], ["exec", "pweb", "true"],
                                  ["run", "--host", "h3", "-n", "10.77.0.0/24", "-d", "--rm", "true"]])
def test_the_cli_imports_neither_asyncssh_nor_rich(cluster, web, args):
    result = subprocess.run([CANTAINER[0], "-X", "importtime", *CANTAINER[1:], *args], capture_output=True, text=True,
                            env={**os.environ, "CANTAINER_INVENTORY": str(cluster)}, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {name for name in imported if name.split(".")[0] in ("asyncssh", "rich")}


def test_a_changed_known_hosts_or_inventory_gets_a_new_connection(lab, cluster):
    ok(cli(cluster, "ps"))
    before = stats()["connections_made"]
    known_hosts = lab.dir / "known_hosts"
    os.utime(known_hosts)  # rewritten (a key added, removed or revoked): never trust the old connection
    ok(cli(cluster, "run", "--host", "h1", "-n", "10.77.0.0/24", "-d", "--rm", "true"))
    assert stats()["connections_made"]["h1"] == before["h1"] + 1
    changed = lab.dir / "inventory-timeout.toml"
    changed.write_text(cluster.read_text().replace("[defaults]\n", "[defaults]\nconnect_timeout = 7\n"))
    ok(cli(changed, "run", "--host", "h1", "-n", "10.77.0.0/24", "-d", "--rm", "true"))
    assert stats()["connections_made"]["h1"] == before["h1"] + 2
    ok(cli(changed, "run", "--host", "h1", "-n", "10.77.0.0/24", "-d", "--rm", "true"))
    assert stats()["connections_made"]["h1"] == before["h1"] + 2  # and then it is reused


@pytest.mark.parametrize("off", [["--no-persist"], []])
def test_without_persistence_nothing_is_started(cluster, tmp_path, off):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime), **({} if off else {settings.ENV: "no"})}
    result = cantainer(*off, "ps", env=env, inventory=cluster)
    assert result.returncode == 0, result.stderr
    assert not (runtime / "cantainer").exists() or not list((runtime / "cantainer").glob("conn-*"))


def test_a_killed_connection_process_is_replaced_by_the_next_call(cluster):
    ok(cli(cluster, "ps"))
    first = stats()["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{first}") and \
            open(f"/proc/{first}/stat").read().split()[2] != "Z":
        time.sleep(0.05)
    ok(cli(cluster, "ps"))
    assert stats()["pid"] != first


def test_an_unreachable_host_reads_the_same_through_it(lab, cluster):
    bogus = lab.dir / "inventory-bogus.toml"
    address = cluster.read_text().split('address = "')[1].split('"')[0]  # h1's, on a port where nothing listens
    bogus.write_text(cluster.read_text() + f'\n[[hosts]]\nname = "gone"\naddress = "{address}"\nport = 1\n'
                     'underlay_address = "10.254.254.254"\n')
    through = one_line_error(cli(bogus, "run", "--host", "gone", "-n", "10.77.0.0/24", "-d", "true"), "unreachable")
    direct = one_line_error(cantainer("--no-persist", "run", "--host", "gone", "-n", "10.77.0.0/24", "-d", "true",
                                      inventory=bogus), "unreachable")
    assert through == direct
