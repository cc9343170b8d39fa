"""UDP endpoints in a container's network namespace, the same in either image: the lab host's python3
entered into the container's netns (Debian's busybox-static, the fallback image's shell, has no
`nc -u`). What the kernel delivers to the container's address is what they see, as a process of
the container would. Each one ends by itself (after its datagram or its deadline): nothing is left
to stop, whatever the test does."""
from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator

from tests.labcli import LAB, host_exec

# Records every datagram to PORT until one equals UNTIL (empty: the first ends it) or SECONDS pass;
# answers each with REPLY when one is given.
_ENDPOINT = r"""
import socket, sys, time
port, reply, until = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
deadline = time.monotonic() + float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("ready", flush=True)
while deadline > time.monotonic():
    s.settimeout(deadline - time.monotonic())
    try:
        data, peer = s.recvfrom(2048)
    except TimeoutError:
        break
    if reply:
        s.sendto(reply, peer)
    print(data.hex(), flush=True)
    if not until or data == until:
        break
"""

_SEND = r"""
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
"""


class Endpoint:
    """A running endpoint; ``datagrams`` — what it received — is complete once the block has ended."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.datagrams: list[bytes] = []

    def finish(self, timeout: float) -> list[bytes]:
        """Wait for the endpoint to end (its datagram or its deadline) and return what it received."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # the `lab exec` wrapper; the python inside ends at its own deadline
            out, err = self.process.communicate()
        assert self.process.returncode == 0, err
        self.datagrams = [bytes.fromhex(line) for line in out.split()]
        return self.datagrams


@contextlib.contextmanager
def _endpoint(lab, host: str, pid: int, *args: str, seconds: float) -> Iterator[Endpoint]:
    process = subprocess.Popen([*LAB, "exec", "--name", lab.name, host, "--", "nsenter", "-t", str(pid), "-n",
                                "python3", "-c", _ENDPOINT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    endpoint = Endpoint(process)
    try:
        ready = process.stdout.readline().strip()  # bound: what is sent from now on is received
        assert ready == "ready", f"UDP endpoint in pid {pid} on {host} did not start: {process.stderr.read()}"
        yield endpoint
    finally:
        if endpoint.process.returncode is None:
            endpoint.finish(seconds + 30)


def responder(lab, host: str, pid: int, port: int, reply: str, seconds: float = 30):
    """Answer the first datagram to *port* that comes within *seconds* with *reply*, in the netns
    of process *pid* (on lab host *host*)."""
    return _endpoint(lab, host, pid, str(port), reply.encode().hex(), "", str(seconds), seconds=seconds)


def receiver(lab, host: str, pid: int, port: int, until: bytes, seconds: float = 30):
    """Record every datagram to *port* until one equals *until* or *seconds* pass; ``finish()``
    returns them in arrival order."""
    return _endpoint(lab, host, pid, str(port), "", until.hex(), str(seconds), seconds=seconds)


def send(lab, host: str, pid: int, address: str, port: int, payload: bytes) -> None:
    """One datagram from the netns of process *pid* (on lab host *host*)."""
    result = host_exec(lab, host, "nsenter", "-t", str(pid), "-n", "python3", "-c", _SEND, address, str(port),
                       payload.hex())
    assert result.returncode == 0, result.stderr
