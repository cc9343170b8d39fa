"""The PySyncObj adapter: importing it keeps the process's socket.inet_ntop working."""
import subprocess
import sys

PROBE = """
import socket, sys
import {module}
try:
    print(socket.inet_ntop(socket.AF_INET, bytes([198, 18, 0, 1])))
except Exception as exc:
    print(type(exc).__name__)
"""


def run(module: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_pysyncobj_alone_breaks_inet_ntop_and_the_adapter_restores_it():
    # pysyncobj's win_inet_pton replaces socket.inet_ntop with a Windows-only shim on every OS
    # (pyroute2 decodes every netlink address with it): the adapter must undo that.
    assert run("pysyncobj") != "198.18.0.1"
    assert run("cantainer_agent.consensus") == "198.18.0.1"
