"""The connection process without a lab: its directory rules, start-up (once, also when raced, over a
stale socket), who it serves, how it answers errors, idle exit and SIGTERM. Real processes, real
sockets; the host it is asked to reach is a closed loopback port."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cantainer.errors import HostError
from cantainer.inventory import Host
from cantainer.persist import client, settings, wire
from cantainer.persist.settings import PersistError
from tests.ports import closed_port

WAIT = 30.0  # generous bound for a process to do what is asserted (never a speed assertion)


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR; every connection process started in it is stopped afterwards."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    monkeypatch.delenv(settings.ENV, raising=False)
    yield directory / "cantainer"
    from tests.conftest import stop_connection_processes

    stop_connection_processes(directory / "cantainer")


def host(port: int | None = None) -> Host:
    return Host(name="h1", address="127.0.0.1", port=port or closed_port(), user="root", identity_file=None,
                known_hosts=None, host_key_checking="strict", become=False, python="python3", connect_timeout=5.0,
                underlay_address=None)


def stats() -> dict:
    async def ask():
        _, writer, answer = await client.request({"op": "stats"})
        writer.close()
        return answer
    return asyncio.run(ask())


def server_pid(directory: Path) -> int:
    return int(next(directory.glob("conn-*.lock")).read_text().split()[0])


def gone(pid: int, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            os.waitpid(pid, os.WNOHANG)  # our child when started from this process: reap it
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


# -- the directory and the settings ---------------------------------------------------------------------
def test_the_socket_lives_in_a_private_directory_of_the_user(runtime):
    path = settings.socket_path()
    assert path.parent == runtime and (runtime.stat().st_mode & 0o777) == 0o700
    assert path.name.startswith("conn-") and path.name.endswith(".sock")


def test_a_directory_others_can_enter_is_refused_with_one_line(runtime):
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    with pytest.raises(PersistError) as error:
        settings.socket_path()
    assert "not a private directory" in str(error.value) and f"{settings.ENV}=no" in error.value.hint


def test_the_setting_is_off_with_no_and_a_number_is_the_idle_time(monkeypatch):
    for value in ("no", "0", "off", "False"):
        monkeypatch.setenv(settings.ENV, value)
        assert not settings.enabled()
    monkeypatch.setenv(settings.ENV, "45")
    assert settings.enabled() and settings.idle_seconds() == 45.0
    monkeypatch.delenv(settings.ENV)
    assert settings.enabled() and settings.idle_seconds() == settings.DEFAULT_IDLE
    for bad in ("soon", "-3", "1e9"):
        monkeypatch.setenv(settings.ENV, bad)
        with pytest.raises(PersistError, match=settings.ENV):
            settings.idle_seconds()


def test_changed_code_gets_a_process_of_its_own(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    before = settings.code_fingerprint(package)
    assert settings.code_fingerprint(package) == before
    (package / "a.py").write_text("x = 22\n")
    assert settings.code_fingerprint(package) != before


def test_another_home_gets_a_process_of_its_own(runtime, monkeypatch, tmp_path):
    """The process applies ~/.ssh/config of its own HOME: a command with another HOME (another SSH
    set-up) must reach another socket, else it would connect with the first one's config."""
    first = settings.socket_path()
    monkeypatch.setenv("HOME", str(tmp_path / "other"))
    second = settings.socket_path()
    assert first.parent == second.parent == runtime and first != second


# -- start-up ----------------------------------------------------------------------------------------------
def test_two_clients_racing_to_start_it_get_one_process(runtime):
    path = settings.socket_path()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            client.start_process(path)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(list(runtime.glob("conn-*.lock"))) == 1 and stats()["pid"] == server_pid(runtime)


def test_a_stale_socket_is_replaced(runtime):
    path = settings.socket_path()
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))  # bound, never listening, then its owner is gone
    leftover.close()
    assert path.exists()
    assert stats()["connections_made"] == {}  # a new process answered there


def test_a_process_that_cannot_start_is_one_line(runtime):
    path = settings.socket_path()
    path.mkdir()  # something that is not a socket where the socket must go
    with pytest.raises(PersistError) as error:
        stats()
    assert "did not start" in str(error.value) and f"{settings.ENV}=no" in error.value.hint


# -- serving -----------------------------------------------------------------------------------------------
def test_errors_come_back_as_the_direct_connection_would_raise_them(runtime):
    target = host()
    proxied = client.ProxyConnection(target)
    with pytest.raises(HostError) as through:
        asyncio.run(proxied.run(["true"]))
    from cantainer import ssh

    with pytest.raises(HostError) as direct:
        asyncio.run(ssh.connect(target))
    assert str(through.value) == str(direct.value) and "unreachable" in str(through.value)


def test_an_unknown_request_is_answered_not_dropped(runtime):
    async def ask():
        await client.request({"op": "explode", "host": {}})
    with pytest.raises(Exception, match="unknown request 'explode'"):
        asyncio.run(ask())


def test_a_client_of_another_user_gets_nothing(monkeypatch):
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    top = Path(tempfile.mkdtemp(prefix="cantainer-peer-", dir="/tmp"))  # outside pytest's 0700 directories
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(top))
    try:
        path = settings.socket_path()
        stats()  # started
        top.chmod(0o755)  # let the other user reach the socket at all: SO_PEERCRED must still refuse it
        path.parent.chmod(0o755)
        path.chmod(0o666)
        code = ("import os, socket, sys; os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX); "
                "s.connect(sys.argv[1])\n"
                "try:\n    s.sendall(b'{\"op\": \"stats\"}\\n'); data = s.recv(100)\n"
                "except (ConnectionResetError, BrokenPipeError):\n    data = b''\n"
                "print(repr(data))")
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                timeout=WAIT)
        assert result.stdout.strip() == "b''", result.stdout + result.stderr  # it connected, and got no answer
    finally:
        from tests.conftest import stop_connection_processes

        stop_connection_processes(top / "cantainer")
        shutil.rmtree(top, ignore_errors=True)


def test_it_exits_when_idle_and_removes_its_socket(runtime, monkeypatch):
    monkeypatch.setenv(settings.ENV, "1")
    path = settings.socket_path()
    pid = stats()["pid"]
    assert gone(pid) and not path.exists()


def test_sigterm_stops_it_and_removes_its_socket(runtime):
    import signal

    path = settings.socket_path()
    pid = stats()["pid"]
    os.kill(pid, signal.SIGTERM)
    assert gone(pid) and not path.exists()


def test_a_request_nobody_answered_goes_to_a_new_process(runtime):
    """The process may exit (idle) just as a client connects: the request is sent once more."""
    import signal

    first = stats()["pid"]
    os.kill(first, signal.SIGKILL)  # gone without a word; its socket file stays behind
    assert gone(first)
    assert stats()["pid"] != first


def test_frames_round_trip():
    async def read(data: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await wire.read_frame(reader) for _ in range(3)]
    data = wire.frame(wire.STDOUT, b"out") + wire.frame(wire.EXIT, json.dumps({"exit_status": 3}).encode())
    assert asyncio.run(read(data)) == [(wire.STDOUT, b"out"), (wire.EXIT, b'{"exit_status": 3}'), None]
