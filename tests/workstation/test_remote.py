"""The programs `up` runs on hosts, run here for real with the host's python3 (no SSH needed)."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile

from cantainer import remote

HOST_PYTHON = remote.python(sys.executable)  # as `up` runs them on a host


def archive(data: bytes = b"print('agent')\n") -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("__main__.py", data)
        info = zipfile.ZipInfo("bin/tool")
        info.external_attr = 0o100755 << 16
        archive.writestr(info, b"#!/bin/sh\n")
    return buffer.getvalue(), hashlib.sha256(buffer.getvalue()).hexdigest()


def apply(header: dict, *blobs: bytes) -> subprocess.CompletedProcess:
    stdin = json.dumps(header).encode() + b"\n" + b"".join(blobs)
    return subprocess.run([*HOST_PYTHON, "-c", remote.APPLY], input=stdin, capture_output=True, timeout=60)


def bundle_header(tmp_path, data: bytes, digest: str, keep=()) -> dict:
    target = tmp_path / "bundles" / "cantainer_agent-x"
    return {"dirs": [str(tmp_path / "bundles")],
            "bundle": {"digest": digest, "size": len(data), "target": str(target),
                       "keep": ["cantainer_agent-x", *keep]}}


def test_a_bundle_is_unpacked_only_when_its_hash_is_the_one_pushed_and_older_ones_are_pruned(tmp_path):
    data, digest = archive()
    (tmp_path / "bundles" / "cantainer_agent-old").mkdir(parents=True)   # not kept: pruned
    (tmp_path / "bundles" / "cantainer_agent-older").write_bytes(b"zip")  # a zip, not kept: pruned
    (tmp_path / "bundles" / "cantainer_agent-live").mkdir(parents=True)  # the running agent's: kept
    (tmp_path / "bundles" / "cantainer_agent-live" / ".complete").touch()
    result = apply(bundle_header(tmp_path, data, digest, keep=["cantainer_agent-live"]), data)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "bundles" / "cantainer_agent-x"
    assert (target / "__main__.py").read_text() == "print('agent')\n" and (target / ".complete").exists()
    assert (target / "bin" / "tool").stat().st_mode & 0o777 == 0o755  # modes come along
    assert sorted(os.listdir(tmp_path / "bundles")) == ["cantainer_agent-live", "cantainer_agent-x"]
    assert probe_bundles(tmp_path / "bundles") == ["cantainer_agent-live", "cantainer_agent-x"]


def probe_bundles(folder) -> list[str]:
    """The bundles the probe reports as present (complete) in *folder*."""
    out = subprocess.run([*HOST_PYTHON, "-c", remote.PROBE, "/nonexistent", "/nonexistent", str(folder),
                          "/nonexistent", "/nonexistent"], capture_output=True, text=True, timeout=60, check=True)
    return list(remote.ProbeResult.parse(out.stdout).bundles)


def test_a_bundle_with_this_pythons_bytecode_is_kept_as_the_zip_it_is_and_runs(tmp_path):
    data, digest = archive()
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "cantainer_agent-x.partial").mkdir()  # an unpacking a crash cut short
    (tmp_path / "bundles" / "cantainer_agent-x.77.partial").write_bytes(b"half")  # a write cut short
    header = bundle_header(tmp_path, data, digest)
    header["bundle"]["magic"] = importlib.util.MAGIC_NUMBER.hex()
    result = apply(header, data)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "bundles" / "cantainer_agent-x"
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path / "bundles") == ["cantainer_agent-x"]  # leftovers pruned
    assert probe_bundles(tmp_path / "bundles") == ["cantainer_agent-x"]
    ran = subprocess.run([sys.executable, str(target)], capture_output=True, text=True, timeout=60)
    assert ran.stdout == "agent\n"


def test_a_bundle_for_another_python_is_unpacked_even_where_a_zip_of_that_name_was(tmp_path):
    """The host's python3 changed under the same bundle name: bytecode of another magic is not run."""
    data, digest = archive()
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "cantainer_agent-x").write_bytes(b"the zip of before")
    header = bundle_header(tmp_path, data, digest)
    header["bundle"]["magic"] = "00000000"
    assert apply(header, data).returncode == 0
    target = tmp_path / "bundles" / "cantainer_agent-x"
    assert target.is_dir() and (target / "__main__.py").exists()


def test_the_probe_lists_no_partial_bundle(tmp_path):
    (tmp_path / "cantainer_agent-a").mkdir()  # unpacked but never completed
    (tmp_path / "cantainer_agent-b.9.partial").write_bytes(b"half")
    assert probe_bundles(tmp_path) == [] and probe_bundles(tmp_path / "none") == []


def test_the_probe_standalone_and_an_agents_facts_are_one_document(tmp_path):
    """The probe is the agent's facts module sent as `python3 -c` (isolated: nothing of the package is
    importable there); an agent answering `facts` runs the same code in-process."""
    from cantainer_agent import facts

    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "cantainer_agent-zip").write_bytes(b"PK")
    (bundles / "cantainer_agent-dir").mkdir()
    (bundles / "cantainer_agent-dir" / ".complete").touch()
    (bundles / "cantainer_agent-half").mkdir()
    (bundles / "cantainer_agent-x.3.partial").write_bytes(b"")
    (tmp_path / "agent.json").write_text('{"node": "h1", "bootstrap": false}\n')
    (tmp_path / "members.json").write_text("{}")
    (tmp_path / "secret").write_bytes(b"s3cret\n")
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "cantainer_agent"])
    try:
        (tmp_path / "agent.pid").write_text(f"{agent.pid}\n")
        paths = [str(tmp_path / name) for name in ("agent.pid", "agent.json")] + [str(bundles)] + [
            str(tmp_path / name) for name in ("members.json", "secret")]
        connection = "10.1.0.5 50000 10.1.0.9 22"
        probed = subprocess.run([sys.executable, "-I", "-c", remote.PROBE, *paths], capture_output=True, text=True,
                                timeout=60, check=True, env={**os.environ, "SSH_CONNECTION": connection})
        read = facts.read(*paths, ssh_connection=connection)
    finally:
        agent.kill()
        agent.wait()
    probed = json.loads(probed.stdout)
    assert probed.pop("interpreter") == sys.executable and read.pop("interpreter") == sys.orig_argv[0]
    assert probed == read
    result = remote.ProbeResult.from_document(read)
    assert result.agent_pid == agent.pid and result.bundles == ("cantainer_agent-dir", "cantainer_agent-zip")
    assert result.config == {"node": "h1", "bootstrap": False} and result.has_state
    assert result.secret_sha256 == hashlib.sha256(b"s3cret\n").hexdigest()
    assert result.ssh_server_address == "10.1.0.9" and result.python == tuple(sys.version_info[:3])
    assert facts.read(*paths)["agent_pid"] is None  # that process is gone: a stale pid file names nobody


def test_one_process_probes_then_applies_what_it_is_sent_or_nothing(tmp_path):
    """PROBE_THEN_APPLY: the facts line first, then the apply's input (or EOF: nothing to change)."""
    paths = [str(tmp_path / name) for name in ("agent.pid", "agent.json", "bundles", "members.json", "secret")]
    for header, blobs, written in (({"dirs": [], "secret": {"path": paths[4], "size": 7}}, b"s3cret\n", True),
                                   (None, b"", False)):
        process = subprocess.Popen([*HOST_PYTHON, "-c", remote.PROBE_THEN_APPLY, *paths], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            facts_line = process.stdout.readline()  # before any input: the probe does not wait for it
            assert remote.ProbeResult.parse(facts_line).secret_sha256 is None
            out, err = process.communicate(json.dumps(header).encode() + b"\n" + blobs if header else b"", timeout=60)
        finally:
            process.kill()
            process.wait()
        assert process.returncode == 0 and out == b"", err
        assert (tmp_path / "secret").exists() is written
        if written:
            secret = tmp_path / "secret"
            assert secret.read_bytes() == b"s3cret\n" and secret.stat().st_mode & 0o777 == 0o600
            (tmp_path / "secret").unlink()


def test_a_corrupted_bundle_is_refused_and_nothing_is_installed(tmp_path):
    data, digest = archive()
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # one bit flipped on the way
    config = b'{"node": "h1"}\n'
    header = {**bundle_header(tmp_path, data, digest), "config": {"path": str(tmp_path / "agent.json"),
                                                                  "size": len(config)}}
    result = apply(header, bytes(corrupt), config)
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "the pushed agent bundle is corrupt" in lines[0] and digest in lines[0]
    assert os.listdir(tmp_path / "bundles") == [] and not (tmp_path / "agent.json").exists()


def test_secret_and_config_are_written_0600_atomically(tmp_path):
    secret, config = b"s3cret\n", b'{"node": "h1"}\n'
    (tmp_path / "agent.json").write_text("old")
    header = {"dirs": [], "secret": {"path": str(tmp_path / "secret"), "size": len(secret)},
              "config": {"path": str(tmp_path / "agent.json"), "size": len(config)}}
    result = apply(header, secret, config)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "secret").read_bytes() == secret and (tmp_path / "agent.json").read_bytes() == config
    assert all((tmp_path / name).stat().st_mode & 0o777 == 0o600 for name in ("secret", "agent.json"))
    assert sorted(os.listdir(tmp_path)) == ["agent.json", "secret"]  # no temp file left


def test_input_that_ends_early_is_one_line_and_writes_nothing(tmp_path):
    config = b'{"node": "h1"}\n'
    result = apply({"dirs": [], "config": {"path": str(tmp_path / "agent.json"), "size": len(config)}}, config[:5])
    assert result.returncode != 0
    assert result.stderr.decode().strip() == "the input ended early (5 of 15 bytes): run `cantainer up` again"
    assert not (tmp_path / "agent.json").exists()


def test_it_becomes_the_launcher_in_the_same_process(tmp_path):
    """"exec": the files first, then the process is replaced (one round trip, one Python start for both)."""
    config = b"{}\n"
    header = {"dirs": [], "config": {"path": str(tmp_path / "agent.json"), "size": len(config)},
              "exec": {"argv": [sys.executable, "-c", "import os, sys; print(os.getpid(), open(sys.argv[1]).read())",
                                str(tmp_path / "agent.json")]}}
    process = subprocess.Popen([*HOST_PYTHON, "-c", remote.APPLY], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = process.communicate(json.dumps(header).encode() + b"\n" + config, timeout=60)
    assert process.returncode == 0
    pid, seen = out.decode().split(" ", 1)
    assert int(pid) == process.pid and seen.strip() == "{}"


def test_stop_first_leaves_a_process_that_is_not_our_agent_alone(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "agent.pid").write_text(f"{bystander.pid}\n")  # a stale pid file, its pid reused
        header = {"dirs": [], "exec": {"argv": [sys.executable, "-c", "pass"], "stop_first": True,
                                       "pid_file": str(tmp_path / "agent.pid")}}
        assert apply(header).returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_the_probe_finds_libnftables_where_the_loaders_cache_names_a_shared_object(tmp_path):
    """The probe reads the dynamic loader's cache instead of loading the library (no ctypes): a file
    the cache names that is an ELF object counts; a name without a file, a file that is not one (empty,
    as /dev/null bound over the library reads) or no entry at all does not."""
    from cantainer_agent import facts

    library = tmp_path / "lib" / "libnftables.so.1"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))

    def cache(*paths: str) -> str:
        entries = b"".join(name + b"\0" for path in paths for name in (b"libnftables.so.1", path.encode()))
        file = tmp_path / f"ld.so.cache.{len(list(tmp_path.iterdir()))}"
        file.write_bytes(b"glibc-ld.so.cache1.1" + bytes(16) + b"libc.so.6\0/lib/libc.so.6\0" + entries)
        return str(file)

    assert facts._nftables(cache(str(library))) is None
    assert facts._nftables(cache("/nonexistent/libnftables.so.1", str(library))) is None
    empty = tmp_path / "empty" / "libnftables.so.1"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    for missing in (cache(), cache("/nonexistent/libnftables.so.1"), cache(str(empty))):
        assert "no such library in the dynamic loader's cache" in facts._nftables(missing)
    # no cache at all (not glibc): the library is loaded, as the agent will (the machine has it: make setup)
    assert facts._nftables(str(tmp_path / "no-cache")) is None
