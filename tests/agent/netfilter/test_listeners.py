"""Sockets of the host's own processes, read from /proc/net/{tcp,udp}{,6} text (pure), and which one a
published port would hide."""
from __future__ import annotations

from cantainer_agent.netfilter import listeners

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 020012C6:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 020012C6:0016 010012C6:D431 01 00000000:00000000 02:000A1B6E 00000000     0        0 3 4 0000000000000000 20 4 1 10 -1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 100 0 0 10 0
"""
UDP = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100320A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7 2 0000000000000000 0
  2: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 8 2 0000000000000000 0
"""


def test_parse_listening_sockets():
    assert listeners.parse(TCP, "tcp") == {("127.0.0.1", 8080), ("198.18.0.2", 22)}  # not the established one
    assert listeners.parse(TCP6, "tcp") == {("::", 8081), ("127.0.0.1", 53)}  # v4-mapped read as IPv4
    assert listeners.parse(UDP, "udp") == {("10.50.0.1", 53), ("0.0.0.0", 4789)}
    assert listeners.parse("", "tcp") == set()


def port(host_port, host_ip="0.0.0.0", protocol="tcp"):
    return {"host_ip": host_ip, "host_port": host_port, "container_port": 80, "protocol": protocol}


def test_holder():
    sockets = listeners.parse(TCP, "tcp") | listeners.parse(TCP6, "tcp")
    assert listeners.holder(port(22), sockets) == "198.18.0.2:22"  # every address includes that one
    assert listeners.holder(port(22, "127.0.0.1"), sockets) is None  # another address
    assert listeners.holder(port(8080, "127.0.0.1"), sockets) == "127.0.0.1:8080"
    assert listeners.holder(port(8081, "198.18.0.2"), sockets) == "[::]:8081"  # a wildcard socket takes all
    assert listeners.holder(port(9999), sockets) is None
    udp = listeners.parse(UDP, "udp")
    assert listeners.holder(port(53, protocol="udp"), udp, ignore={"10.50.0.1"}) is None  # our own DNS


def test_listening_reads_this_namespace(tmp_path):
    (tmp_path / "tcp").write_text(TCP)
    assert listeners.listening("tcp", str(tmp_path)) == {("127.0.0.1", 8080), ("198.18.0.2", 22)}
    (tmp_path / "tcp6").write_text(TCP6)
    assert ("::", 8081) in listeners.listening("tcp", str(tmp_path))
