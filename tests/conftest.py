"""Shared fixtures: the session lab of real namespaced SSH hosts, torn down whatever happens."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Another name lets two test runs share the machine (each lab has its own namespaces and subnet).
LAB_NAME = os.environ.get("CANTAINER_TEST_LAB", "ctest")


@pytest.fixture(scope="session", autouse=True)
def connection_process(tmp_path_factory):
    """CLI subprocesses of this run share one connection process in a private directory of the run
    (as a user's commands share theirs); it is stopped at the end, by its pid."""
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        yield runtime / "cantainer"
    finally:
        if saved is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
        stop_connection_processes(runtime / "cantainer")


def stop_connection_processes(directory: Path) -> None:
    import signal

    for lock in directory.glob("conn-*.lock") if directory.is_dir() else ():
        try:
            pid = int(lock.read_text().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"cantainer.persist.server" in cmdline.read():
                    os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root: run `sudo make test`")


@pytest.fixture(scope="session")
def lab(request):
    """A 3-host lab. A leftover of a crashed earlier run is removed first; `down` runs on any exit.
    After a failed test (or a crashed run) each host's console.log stays in place as evidence."""
    require_root()
    from lab.lab import Lab

    instance = Lab(LAB_NAME)
    instance.down(keep_logs=True)
    try:
        instance.up(3)
        yield instance
    finally:
        instance.down(keep_logs=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
def lab_inventory(lab) -> Path:
    return lab.inventory_file


@pytest.fixture(scope="module")
def cluster(lab) -> Path:
    """A formed cluster on the lab for one test module (`up`), purged afterwards (`down --purge`).
    Modules that need a different one define their own `cluster`."""
    from tests.labcli import cli, ok

    inventory = lab.inventory_file
    ok(cli(inventory, "up", str(inventory)))
    yield inventory
    cli(inventory, "down", "--purge")



@pytest.fixture(scope="session")
def oci_layout(tmp_path_factory) -> Path:
    """The test images (tests/images/build.py), built once with umoci from the base image."""
    import shutil

    missing = [tool for tool in ("umoci", "skopeo", "htpasswd") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `sudo make setup`")
    from tests.images.build import build_layout

    return build_layout(tmp_path_factory.mktemp("oci"))
