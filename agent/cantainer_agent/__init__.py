"""cantainer_agent — the host side, pushed to every host by `cantainer up`.

Imports nothing from the workstation package `cantainer`.
"""

__version__ = "0.1.0"

# pysyncobj's win_inet_pton module (imported by its TCP transport) replaces socket.inet_ntop
# with a Windows-only shim on *every* OS, which breaks any other user of inet_ntop in the
# process — pyroute2 decodes every netlink address with it. Import it first, here, and put the
# real function back, so that no import order can leave the agent with the broken one.
import socket as _socket

_real_inet_ntop = _socket.inet_ntop
try:
    import pysyncobj.win_inet_pton  # noqa: E402,F401
except ImportError:  # the workstation may import protocol.py without pysyncobj around
    pass
_socket.inet_ntop = _real_inet_ntop
