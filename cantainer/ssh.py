"""The SSH connector: one asyncssh connection per host, and the only module that speaks SSH.

Like pyinfra's connectors, everything above this module asks for "run this argv", "write this file",
"open the agent's socket" and never sees asyncssh. Command lines are built from argv lists with
`shlex.join`, so user strings are never interpreted by the remote shell.

OpenSSH behaviour is kept: ~/.ssh/config (Host aliases, ProxyJump, IdentityFile, User), ssh-agent
keys and known_hosts checking are asyncssh's defaults, which we leave on. The inventory may name an
identity file and a known_hosts file; `host_key_checking = "accept-new"` records the key of a host
that has no entry yet (like OpenSSH's StrictHostKeyChecking=accept-new) and still refuses a host
whose recorded key differs. "No entry" is decided by asyncssh's own lookup, made with the options
it connects with — every configured file (UserKnownHostsFile, GlobalKnownHostsFile), HostKeyAlias,
the peer's IP, @cert-authority and @revoked lines — and only for a key that lookup did not trust.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import socket
from pathlib import Path

import asyncssh

from cantainer.errors import HostError, RemoteCommandError
from cantainer.inventory import Host
from cantainer.remote import CommandResult

__all__ = ["CommandResult", "Connection", "HostError", "RemoteCommandError", "Session", "connect"]


def _known_hosts_arg(host: Host) -> object:
    return str(host.known_hosts) if host.known_hosts else ()


def _lookup_files(known_hosts: object) -> object:
    """What asyncssh matches a host against for its ``known_hosts`` option (its default when empty)."""
    if known_hosts:
        return known_hosts
    default = Path("~", ".ssh", "known_hosts").expanduser()
    return str(default) if default.is_file() and os.access(default, os.R_OK) else b""


class _HostKeyPolicy(asyncssh.SSHClient):
    """Decides about a host key asyncssh's lookup did not trust: accept it only in accept-new mode and
    only when that same lookup has no entry at all for the host (name or alias, IP, port)."""

    def __init__(self, options: asyncssh.SSHClientConnectionOptions, accept_new: bool) -> None:
        self._options = options
        self._accept_new = accept_new
        self.had_entry: bool | None = None  # None: never asked (the key was trusted, or refused earlier)
        self.accepted: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        found = asyncssh.match_known_hosts(_lookup_files(self._options.known_hosts), host, addr,
                                           None if port == 22 else port)
        self.had_entry = any(found)  # trusted or revoked keys, CAs, X.509 entries
        if self.had_entry or not self._accept_new:
            return False
        self.accepted = key
        return True


def _record_host_key(host: Host, options: asyncssh.SSHClientConnectionOptions, key: asyncssh.SSHKey) -> None:
    """Append the accepted key where asyncssh (and OpenSSH) look first: the inventory's file, else the
    first UserKnownHostsFile, else ~/.ssh/known_hosts — under the HostKeyAlias if one is set."""
    configured = options.known_hosts
    first = configured if isinstance(configured, str) else (
        configured[0] if isinstance(configured, (list, tuple)) and configured and isinstance(configured[0], str)
        else None)
    path = Path(first).expanduser() if first else Path.home() / ".ssh" / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = options.host_key_alias or host.address
    name = name if host.port == 22 else f"[{name}]:{host.port}"
    with open(path, "a", encoding="utf-8") as known_hosts:
        known_hosts.write(f"{name} {key.export_public_key().decode().strip()}\n")


class Session:
    """A remote program started by ``Connection.start``: its first line read, its input still to come."""

    def __init__(self, connection: "Connection", argv: list[str], process: asyncssh.SSHClientProcess) -> None:
        self._connection, self._argv, self._process = connection, argv, process
        self.first_line = ""

    async def finish(self, input: bytes = b"", check: bool = True, timeout: float | None = 120) -> CommandResult:
        """Send *input* and end it (EOF), wait for the program to exit: what ``Connection.run`` returns."""
        host = self._connection.host.name
        try:
            if input:
                self._process.stdin.write(input)
            self._process.stdin.write_eof()  # also with no input (communicate() would not send it)
            stdout, stderr = await asyncio.wait_for(self._process.communicate(), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise HostError(host, f"`{self._argv[0]}` did not finish within {timeout:.0f}s") from None
        except (asyncssh.Error, OSError) as error:
            self.close()
            raise HostError(host, f"connection lost: {error}") from None
        return self._connection._completed(self._argv, self._process.exit_status, stdout, stderr, check)

    def close(self) -> None:
        self._process.close()


class Connection:
    """An open SSH connection to one inventory host."""

    def __init__(self, host: Host, conn: asyncssh.SSHClientConnection) -> None:
        self.host = host
        self._conn = conn
        self._sftp: asyncssh.SFTPClient | None = None

    @property
    def needs_sudo(self) -> bool:
        return self.host.become and self.host.user != "root"

    @property
    def cipher(self) -> str:
        """The cipher this connection sends with (as negotiated)."""
        return str(self._conn.get_extra_info("send_cipher"))

    def command_line(self, argv: list[str]) -> str:
        if self.needs_sudo:
            # sudo resets the environment, but the probe learns the host's underlay address from
            # SSH_CONNECTION (the only way when `address` is an ssh_config alias reached through a
            # ProxyJump): the login shell expands it before sudo runs; a constant, never user input.
            return 'sudo -n -- env SSH_CONNECTION="$SSH_CONNECTION" ' + shlex.join(argv)
        return shlex.join(argv)

    async def run(self, argv: list[str], input: str | bytes | None = None, check: bool = True,
                  timeout: float | None = 120) -> CommandResult:
        """Run *argv*; *input* (text, or bytes fed as they are) is its stdin."""
        binary = isinstance(input, bytes)
        try:
            result = await self._conn.run(self.command_line(argv), input=input, check=False, timeout=timeout,
                                          **({"encoding": None} if binary else {}))
        except asyncssh.TimeoutError:
            raise HostError(self.host.name, f"`{argv[0]}` did not finish within {timeout:.0f}s") from None
        except (asyncssh.Error, OSError) as error:
            raise HostError(self.host.name, f"connection lost: {error}") from None
        return self._completed(argv, result.exit_status, result.stdout, result.stderr, check)

    def _completed(self, argv: list[str], exit_status: int | None, stdout, stderr, check: bool) -> CommandResult:
        """What a finished remote program returned (text or bytes output); sudo's own failures and,
        with *check*, any non-zero status raise."""
        status = exit_status if exit_status is not None else 255

        def text(value) -> str:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")

        out = CommandResult(status, text(stdout), text(stderr))
        if status != 0 and self.needs_sudo:
            self._check_sudo(status, out.stderr)
        if check and status != 0:
            raise RemoteCommandError(self.host.name, argv, status, out.stderr)
        return out

    async def start(self, argv: list[str], timeout: float | None = 60) -> "Session":
        """Start *argv* and read the first line it prints; the process then waits for its input
        (``Session.finish``). A program that exits before printing a line leaves ``first_line``
        empty; ``finish`` then reports how it ended."""
        try:
            process = await self._conn.create_process(self.command_line(argv), encoding=None)
        except (asyncssh.Error, OSError) as error:
            raise HostError(self.host.name, f"connection lost: {error}") from None
        session = Session(self, argv, process)
        try:
            session.first_line = (await asyncio.wait_for(process.stdout.readline(), timeout)).decode("utf-8",
                                                                                                    "replace")
        except asyncio.TimeoutError:
            session.close()
            raise HostError(self.host.name, f"`{argv[0]}` printed nothing within {timeout:.0f}s") from None
        except (asyncssh.Error, OSError) as error:
            session.close()
            raise HostError(self.host.name, f"connection lost: {error}") from None
        return session

    def _check_sudo(self, status: int, stderr: str) -> None:
        """sudo itself failed (not the command it ran): say so, whatever the command was."""
        user = self.host.user
        if status == 1 and "sudo: a password is required" in stderr:
            raise HostError(self.host.name, f"sudo asks user {user!r} for a password (cantainer runs `sudo -n`, "
                            "which never prompts)",
                            f"give {user} passwordless sudo (a sudoers line `{user} ALL=(ALL) NOPASSWD:ALL`) "
                            "or log in as root")
        if status == 127 and "sudo" in stderr and "not found" in stderr:
            raise HostError(self.host.name, "sudo is not installed on the host, but the inventory sets become = true",
                            "install sudo there or log in as root")

    async def write_file(self, path: str, data: bytes | Path, mode: int) -> None:
        """Write `data` (bytes, or a local file's content, streamed) to `path` atomically (temp file +
        rename), with `mode` set before any byte lands."""
        if self.needs_sudo:
            # SFTP runs as the login user; stage in a private temp dir and let sudo install it.
            staging = f"/tmp/.cantainer-{secrets.token_hex(8)}"
            try:
                await self._put(staging, data, 0o600)
                await self.run(["install", "-m", f"{mode:o}", "-D", staging, path])
            finally:  # a failed install must not leave the data (the cluster secret) in /tmp
                await self._remove_staged(staging)
            return
        partial = f"{path}.{secrets.token_hex(4)}.partial"  # concurrent writers never share a temp file
        await self._put(partial, data, mode)
        try:
            await (await self._sftp_client()).posix_rename(partial, path)
        except (asyncssh.SFTPError, asyncssh.Error, OSError) as error:
            raise HostError(self.host.name, f"cannot write {path}: {getattr(error, 'reason', None) or error}") from None

    async def _remove_staged(self, staging: str) -> None:
        """Remove a staged file as the login user who wrote it (SFTP; no sudo needed or wanted)."""
        try:
            await (await self._sftp_client()).remove(staging)
        except (asyncssh.SFTPError, asyncssh.Error, OSError):
            pass  # never written, or the connection is gone

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            self._sftp = await self._conn.start_sftp_client()
        return self._sftp

    async def _put(self, path: str, data: bytes | Path, mode: int) -> None:
        try:
            sftp = await self._sftp_client()
            attrs = asyncssh.SFTPAttrs(permissions=mode)
            async with sftp.open(path, "wb", attrs) as remote:
                if isinstance(data, Path):
                    with open(data, "rb") as local:
                        for block in iter(lambda: local.read(1 << 20), b""):
                            await remote.write(block)
                else:
                    await remote.write(data)
            await sftp.chmod(path, mode)
        except (asyncssh.SFTPError, asyncssh.Error, OSError) as error:
            raise HostError(self.host.name, f"cannot write {path}: {getattr(error, 'reason', None) or error}") from None

    async def create_process(self, argv: list[str], **options) -> asyncssh.SSHClientProcess:
        """A remote process with streams (and optionally a PTY) for interactive use."""
        try:
            return await self._conn.create_process(self.command_line(argv), **options)
        except (asyncssh.Error, OSError) as error:
            raise HostError(self.host.name, f"cannot start `{argv[0]}`: {error}") from None

    async def open_unix(self, socket_path: str) -> tuple[asyncssh.SSHReader, asyncssh.SSHWriter]:
        """A byte stream to a unix socket on the host (SSH direct-streamlocal)."""
        return await self._conn.open_unix_connection(socket_path)

    async def open_agent(self, socket_path: str) -> tuple[asyncssh.SSHReader, asyncssh.SSHWriter]:
        """A byte stream to the agent's root-only socket: direct-streamlocal for root, else a relay
        run under sudo (remote.SOCKET_RELAY)."""
        from cantainer.remote import SOCKET_RELAY, python

        try:
            if self.needs_sudo:
                return await self.open_exec_stream([*python(self.host.python), "-c", SOCKET_RELAY, socket_path])
            return await self.open_unix(socket_path)
        except (asyncssh.Error, OSError) as error:  # ChannelOpenError and friends: the agent is not listening
            raise HostError(self.host.name, f"agent is not running (cannot open {socket_path}: {error})",
                            "run `cantainer up` to start it") from None

    async def sftp_ready(self) -> None:
        """Open the SFTP channel now (write_file uses it), so a dead connection shows before any write."""
        await self._sftp_client()

    async def open_exec_stream(self, argv: list[str]) -> tuple[asyncssh.SSHReader, asyncssh.SSHWriter]:
        """A byte stream to a remote command's stdin/stdout (used where sudo is needed)."""
        writer, reader, _ = await self._conn.open_session(self.command_line(argv), encoding=None)
        return reader, writer

    def close(self) -> None:
        self._conn.close()

    def is_closed(self) -> bool:
        return self._conn.is_closed()

    async def wait_closed(self) -> None:
        await self._conn.wait_closed()


def _describe_connect_failure(host: Host, error: BaseException, policy: _HostKeyPolicy) -> HostError:
    where = f"{host.address}:{host.port}"
    if isinstance(error, asyncssh.HostKeyNotVerifiable):
        if "revoked" in str(error).lower():
            return HostError(host.name, f"host key of {where} is marked @revoked in known_hosts",
                             "the host must get a new host key; do not remove the @revoked line")
        if policy.had_entry:
            return HostError(host.name, f"host key of {where} does not match the key recorded in known_hosts "
                             "(possible man-in-the-middle)",
                             "if the host was reinstalled, remove its old entry from known_hosts and connect again")
        return HostError(host.name, f"host key of {where} is unknown (no entry in known_hosts)",
                         'add the host\'s key to known_hosts or set host_key_checking = "accept-new"')
    if isinstance(error, asyncssh.PermissionDenied):
        return HostError(host.name, f"authentication failed for user {host.user!r} on {where}",
                         "check identity_file in the inventory, your ssh-agent, or the host's authorized_keys")
    if isinstance(error, (asyncio.TimeoutError, asyncssh.ConnectionLost)) or "timed out" in str(error).lower():
        return HostError(host.name, f"unreachable: no SSH answer from {where} within {host.connect_timeout:g}s",
                         "check the address, the network and that sshd runs")
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        return HostError(host.name, f"unreachable: {where}: {reason}", "check the address, the port and that sshd runs")
    if isinstance(error, asyncssh.Error):
        return HostError(host.name, f"SSH to {where} failed: {error.reason}")
    return HostError(host.name, f"SSH to {where} failed: {error}")


# asyncssh's ciphers with AES-GCM first (it offers ChaCha20-Poly1305 first): hosts and workstations
# have AES in hardware (AES-NI, ARMv8 crypto), and sshd spent ~40 % less CPU receiving the agent
# bundle with it (20 lab hosts x 2.9 MB: 0.87 vs 1.26 s of the hosts' CPU; docs/design/bootstrap.md).
# The others stay offered for a server that lacks AES-GCM.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr")


async def connect(host: Host, agent_path: object = (), early: dict[str, socket.socket] | None = None) -> Connection:
    """*agent_path*: the ssh-agent socket to use (None: none; default: $SSH_AUTH_SOCK, as OpenSSH);
    *early*: TCP connections opened before asyncssh was imported (cantainer/preconnect.py), by host."""
    settings: dict = {
        "port": host.port,
        "username": host.user,
        "known_hosts": _known_hosts_arg(host),
        "connect_timeout": host.connect_timeout,
        "login_timeout": host.connect_timeout,
        "keepalive_interval": 15,
        "encryption_algs": CIPHERS,
    }
    if host.identity_file:
        settings["client_keys"] = [str(host.identity_file)]
    if agent_path != ():
        settings["agent_path"] = agent_path
    try:
        # The options asyncssh connects with (~/.ssh/config applied for this host): the same ones
        # decide whether a host has a known_hosts entry.
        options = asyncssh.SSHClientConnectionOptions(host=host.address, config=(), **settings)
    except (OSError, ValueError, asyncssh.Error) as error:
        raise HostError(host.name, f"invalid SSH settings: {error}") from None
    policy = _HostKeyPolicy(options, accept_new=host.host_key_checking == "accept-new")
    sock = None
    if early:
        from cantainer.preconnect import take

        sock = take(early, host, options.host, options.port, bool(options.tunnel or options.proxy_command))
    try:
        try:
            conn, _ = await asyncssh.create_connection(lambda: policy, host.address, options=options, sock=sock)
        except (OSError, asyncssh.ConnectionLost):
            if sock is None:
                raise
            # the early connection broke before SSH got going (sshd closed it): connect afresh
            conn, _ = await asyncssh.create_connection(lambda: policy, host.address, options=options)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as error:
        raise _describe_connect_failure(host, error, policy) from None
    if policy.accepted is not None:
        _record_host_key(host, options, policy.accepted)
    return Connection(host, conn)
