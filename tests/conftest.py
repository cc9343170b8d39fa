"""Shared fixtures: the session lab of real namespaced SSH hosts, torn down whatever happens."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Another name lets two test runs share the machine (each lab has its own namespaces and subnet).
LAB_NAME = os.environ.get("CANTAINER_TEST_LAB", "ctest")


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
