"""The programs `up` runs on hosts, run here for real with the host's python3 (no SSH needed)."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile

from cantainer import remote


def archive(tmp_path, data: bytes = b"print('agent')\n"):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("__main__.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / ".bundle.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path, hashlib.sha256(buffer.getvalue()).hexdigest()


def install(path, target, digest) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", remote.INSTALL_BUNDLE, str(path), str(target), digest],
                          capture_output=True, text=True, timeout=60)


def test_a_bundle_is_unpacked_only_when_its_hash_is_the_one_pushed(tmp_path):
    path, digest = archive(tmp_path)
    target = tmp_path / "cantainer_agent-x"
    result = install(path, target, digest)
    assert result.returncode == 0, result.stderr
    assert (target / "__main__.py").read_text() == "print('agent')\n" and (target / ".complete").exists()
    assert not path.exists()


def test_a_corrupted_bundle_is_refused_and_nothing_is_installed(tmp_path):
    path, digest = archive(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one bit flipped on the way (or someone swapped the file in the staging directory)
    path.write_bytes(bytes(data))
    target = tmp_path / "cantainer_agent-x"
    result = install(path, target, digest)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the pushed agent bundle is corrupt" in lines[0] and digest in lines[0]
    assert not target.exists() and not (tmp_path / "cantainer_agent-x.partial").exists() and not path.exists()
