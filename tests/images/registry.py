"""A real OCI registry for tests: Debian's `docker-registry` (the CNCF Distribution registry).

``Registry(workdir, address)`` serves plain HTTP on *address* (loopback or the workstation's lab
bridge address, never anything else) on a free port, optionally behind htpasswd basic auth (the
line made with ``htpasswd -B``). It runs in its own session and is stopped by its PID; ``close``
is safe to call on any exit, and the registry gets SIGTERM if the test process dies without calling
it (PR_SET_PDEATHSIG). `make setup` installs the binary (see the Makefile).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINARY_CANDIDATES = (REPO / ".venv" / "tools" / "usr" / "bin" / "docker-registry", Path("/usr/bin/docker-registry"))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def registry_binary() -> Path | None:
    for candidate in BINARY_CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("docker-registry")
    return Path(found) if found else None


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (the registry accepts bcrypt only), made by apache2-utils' htpasswd."""
    result = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True)
    return result.stdout.strip()


class Registry:
    def __init__(self, workdir: Path, address: str, auth: tuple[str, str] | None = None,
                 token_auth: list[str] | None = None) -> None:
        """*auth*: htpasswd basic auth for (user, password); *token_auth*: the ``auth:`` section of a
        bearer-token server (tests/images/tokens.py)."""
        assert address.startswith(("127.", "198.18.", "198.19.")), f"registry on {address}: loopback or lab only"
        binary = registry_binary()
        if binary is None:
            raise RuntimeError("docker-registry is not installed: run `sudo make setup`")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.port = free_port(address)
        self.host = f"{address}:{self.port}"
        config = [
            "version: 0.1",
            "log:", "  level: warn", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", f"    rootdirectory: {workdir / 'data'}", "  delete:", "    enabled: true",
            "http:", f"  addr: {self.host}",
        ]
        if auth is not None:
            (workdir / "htpasswd").write_text(htpasswd_line(*auth) + "\n")
            config += ["auth:", "  htpasswd:", "    realm: cantainer-test", f"    path: {workdir / 'htpasswd'}"]
        elif token_auth is not None:
            config += token_auth
        (workdir / "config.yml").write_text("\n".join(config) + "\n")
        self.log = open(workdir / "registry.log", "wb")
        self.proc = subprocess.Popen([str(binary), "serve", str(workdir / "config.yml")], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not listen on {self.host} within {timeout:g}s")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # by PID: it is our child
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
