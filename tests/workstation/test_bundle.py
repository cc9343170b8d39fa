"""The agent bundle: deterministic, complete, pure Python for every host (bytecode for this Python's)."""
from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import zipfile

import pytest

from cantainer.bundle import Platform, build_bundle


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "cantainer"


def names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.namelist()


def foreign() -> Platform:
    """A host on another minor version of Python than this one."""
    return Platform(Platform.local().machine, (3, 10 if sys.version_info[:2] != (3, 10) else 12))


def test_the_bundle_is_deterministic_and_holds_the_agent_and_its_dependencies(cache):
    first = build_bundle(Platform.local())
    for built in cache.glob("bundles/*.zip"):
        built.unlink()  # force a rebuild from the sources, not the cache
    second = build_bundle(Platform.local())
    assert first.digest == second.digest and first.data == second.data
    content = names(first.data)
    assert content == sorted(content)
    for needed in ("__main__.py", "cantainer_agent/__main__.py", "cantainer_agent/layout.py",
                   "cantainer_agent/consensus/pysyncobj/journal.py", "pysyncobj/syncobj.pyc", "pyroute2/__init__.pyc"):
        assert needed in content
    assert not [n for n in content if "__pycache__" in n]
    assert not [n for n in content if n.startswith("cantainer/")]  # the workstation package stays home


def test_a_pure_bundle_for_this_python_runs_as_a_zip_from_its_own_bytecode(cache, tmp_path):
    bundle = build_bundle(Platform.local())
    assert bundle.magic == importlib.util.MAGIC_NUMBER.hex()
    content = names(bundle.data)
    sources = [n for n in content if n.endswith(".py") and n != "__main__.py"]
    assert sources and all(f"{n}c" in content for n in sources)
    # the agent's sources ride along for its tracebacks; the libraries' stay home (0.5 MB per host)
    assert all(n.startswith("cantainer_agent/") for n in sources)
    assert "pyroute2/iproute/linux.pyc" in content and "dnslib/dns.pyc" in content
    path = tmp_path / "cantainer_agent-x"
    path.write_bytes(bundle.data)
    run = subprocess.run([sys.executable, str(path), "version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr
    # its modules come from its bytecode (a .pyc zipimport refused would fall back to the .py)
    origin = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(path)!r}); "
                             "import cantainer_agent.daemon.agent as m, pyroute2 as p; print(m.__file__, p.__file__)"],
                            capture_output=True, text=True, timeout=60)
    assert origin.stdout.split() == [f"{path}/cantainer_agent/daemon/agent.pyc", f"{path}/pyroute2/__init__.pyc"], (
        origin.stderr)


READ_COUNT = """
import sys, zipimport
archive = sys.argv[1]
reads = []
original = zipimport._get_data
zipimport._get_data = lambda path, entry: reads.append(entry[0]) or original(path, entry)
sys.path.insert(0, archive)
from cantainer_agent import bundleimport
first = len(reads)
print(bundleimport.install(archive))
import cantainer_agent.daemon.process, cantainer_agent.__main__
import inspect, cantainer_agent.config as config
assert "def load_config" in inspect.getsource(config.load_config)  # tracebacks keep their source lines
print(" ".join(reads[first:]))
"""


def test_a_module_of_the_zip_is_read_once(cache, tmp_path):
    """Python's zipimport reads, inflates and unmarshals a module twice (its spec, then its code);
    bundleimport keeps the first read for the second — ~7 ms of every host's agent start."""
    path = tmp_path / "cantainer_agent-x"
    path.write_bytes(build_bundle(Platform.local()).data)
    run = subprocess.run([sys.executable, "-I", "-S", "-c", READ_COUNT, str(path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    installed, reads = run.stdout.splitlines()
    reads = reads.split()
    assert installed == "True" and len(reads) > 50
    assert len(reads) == len(set(reads)), sorted(r for r in set(reads) if reads.count(r) > 1)[:5]
    # an unpacked bundle (a directory) imports as any directory does: nothing to install
    sys.path.insert(0, str(tmp_path))
    try:
        from cantainer_agent import bundleimport

        hooks = list(sys.path_hooks)
        assert bundleimport.install(str(tmp_path)) is False and sys.path_hooks == hooks
    finally:
        sys.path.remove(str(tmp_path))


def test_a_pure_bundle_for_another_python_carries_only_sources(cache):
    other = build_bundle(foreign())
    assert other.magic is None and not [n for n in names(other.data) if n.endswith(".pyc")]
    assert "pyroute2/__init__.py" in names(other.data)
    assert other.digest != build_bundle(Platform.local()).digest


def test_a_host_whose_python_has_another_magic_number_gets_sources(cache):
    """A pre-release of this minor version compiles to another magic: it could not import our
    bytecode, and the libraries carry no sources beside theirs."""
    local = Platform.local()
    prerelease = build_bundle(Platform(local.machine, local.python, "0d0d0d0a"))
    assert prerelease.magic is None and "pyroute2/__init__.py" in names(prerelease.data)
    assert build_bundle(Platform(local.machine, local.python, local.magic)).magic == local.magic


def test_every_host_gets_pure_python_whatever_its_cpu_or_python(cache):
    """Nothing compiled is pushed (the raft cipher is the libcrypto the host's Python links): a host on
    another CPU or Python gets the sources-only bundle, no wheels needed."""
    for bundle in (build_bundle(Platform.local()), build_bundle(foreign())):
        content = names(bundle.data)
        assert not [n for n in content if n.startswith(("cryptography/", "cffi/", "_cffi_backend"))]
        assert not [n for n in content if n.endswith((".so", ".pyd"))]
    assert build_bundle(Platform("riscv64", foreign().python)).digest == build_bundle(foreign()).digest


def test_the_cache_keeps_only_the_most_recently_used_bundles(cache, monkeypatch):
    """Every new bundle (an upgrade; an edit in a checkout) was kept forever: 112 of them, 509 MB."""
    import os

    import cantainer.bundle as bundle

    folder = cache / "bundles"
    folder.mkdir(parents=True)
    old = []
    for age in range(10):  # ten bundles of earlier versions, the last one used longest ago
        path = folder / f"{age:032x}.zip"
        path.write_bytes(b"old")
        os.utime(path, (1000.0 - age, 1000.0 - age))
        old.append(path)
    crashed = folder / "feed.123.partial"
    crashed.write_bytes(b"half")
    os.utime(crashed, (1000.0, 1000.0))
    tarball = folder / "feed.tar.gz"  # the archive format before zip
    tarball.write_bytes(b"old format")
    monkeypatch.setattr(bundle, "KEEP_CACHED", 4)
    pure = build_bundle(Platform.local())
    (new,) = set(folder.iterdir()) - set(old)
    # the new one and the three used most recently stay; the crash's leftover and old tarballs go
    assert set(folder.iterdir()) == {new, *old[:3]}
    # a hit marks its bundle used: it outlives an older-used one at the next build
    os.utime(new, (1.0, 1.0))
    assert build_bundle(Platform.local()).data == pure.data and new.stat().st_mtime > 1000
    build_bundle(foreign())  # the sources-only kind: one more file, the oldest used goes
    assert new.exists() and not old[2].exists() and len(list(folder.iterdir())) == 4
