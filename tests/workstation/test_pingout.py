"""The ping-output reader the lab tests share (tests/pingout.py), on both tools' real output."""
from __future__ import annotations

from tests.pingout import all_answered, replies, summary

BUSYBOX = """PING db (10.0.0.3): 56 data bytes
64 bytes from 10.0.0.3: seq=0 ttl=64 time=0.210 ms
64 bytes from 10.0.0.3: seq=2 ttl=64 time=0.101 ms

--- db ping statistics ---
3 packets transmitted, 2 packets received, 33% packet loss
round-trip min/avg/max = 0.101/0.155/0.210 ms
"""
IPUTILS = """PING db (10.0.0.3) 56(84) bytes of data.
64 bytes from db (10.0.0.3): icmp_seq=1 ttl=64 time=0.210 ms
64 bytes from db (10.0.0.3): icmp_seq=3 ttl=64 time=0.101 ms
64 bytes from 10.0.0.9: icmp_seq=4 ttl=64 time=0.101 ms

--- db ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 2003ms
rtt min/avg/max/mdev = 0.101/0.155/0.210/0.054 ms
"""


def test_sequence_numbers_count_from_zero_in_both_formats():
    assert replies(BUSYBOX, "10.0.0.3") == {0, 2} == replies(IPUTILS, "10.0.0.3")
    assert replies(IPUTILS) == {0, 2, 3} and replies(IPUTILS, "10.0.0.9") == {3}
    assert replies(BUSYBOX, "10.0.0.30") == set() and replies("ping: bad address 'db'\n") == set()


def test_the_summary_and_its_counts():
    assert summary(BUSYBOX) == (3, 2) and summary(IPUTILS) == (4, 3)
    assert summary("PING db (10.0.0.3): 56 data bytes\n") is None
    assert not all_answered(BUSYBOX, 3) and not all_answered(IPUTILS, 4)
    assert all_answered("2 packets transmitted, 2 packets received, 0% packet loss\n", 2)
    assert all_answered("2 packets transmitted, 2 received, 0% packet loss, time 1001ms\n", 2)
    assert not all_answered("2 packets transmitted, 2 received, 0% packet loss, time 1001ms\n", 3)
