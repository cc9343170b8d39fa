"""DNS service discovery: each host answers its networks' names on their gateways (docs/design/networking.md).

``records`` builds the answer table from the replicated state (pure; ``records.SOURCES`` is where
new kinds of names plug in), ``server`` serves it on UDP and TCP port 53 and forwards the rest to
the host's resolvers; ``controllers/dns.py`` keeps the sockets matching this host's networks.
"""
from .records import SOURCES, Answer, Entry, Table, build, lookup
from .server import DnsError, DnsServer, read_resolv_conf

__all__ = ["SOURCES", "Answer", "Entry", "Table", "build", "lookup", "DnsError", "DnsServer", "read_resolv_conf"]
