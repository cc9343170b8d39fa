"""`member {wait}`: `up` waits on it instead of polling; it answers at once, or when the node knows a
leader and is registered, or when the wait is over — with a real one-voter raft node."""
from __future__ import annotations

import socket
import time

import pytest

from cantainer_agent import protocol
from cantainer_agent.api import system
from cantainer_agent.api.requests import Reads
from cantainer_agent.config import AgentConfig
from tests.agent.raftkit import SECRET, raft_node, register


def free_addr() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def member_handler(get_raft):
    cfg = AgentConfig(cluster="c", node="h1", address="127.0.0.1", secret_file="/nonexistent")
    return system.handlers(cfg, get_raft, lambda: None, Reads(get_raft, SECRET))["member"]


def test_before_raft_runs_it_answers_at_once_that_nothing_is_known():
    member = member_handler(lambda: None)
    assert member({}) == {"node": "h1", "pid": member({})["pid"], "leader": None, "registered": False, "role": None}


@pytest.mark.parametrize("wait", ["soon", -1, 31, float("nan"), True])
def test_a_bad_wait_is_refused(wait):
    with pytest.raises(protocol.ProtocolError) as error:
        member_handler(lambda: None)({"wait": wait})
    assert error.value.code == protocol.BAD_REQUEST


def test_it_answers_once_the_node_leads_and_is_registered(tmp_path):
    node = raft_node(tmp_path, free_addr(), elect_early=True)
    node.start()
    try:
        member = member_handler(lambda: node)
        deadline = time.monotonic() + 20
        while member({})["leader"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = member({"wait": 0})
        assert answer["leader"] == node.self_addr and answer["role"] == "leader" and not answer["registered"]
        register(node, "h1")
        answer = member({"wait": 20})
        assert answer["registered"] and answer["leader"] == node.self_addr
    finally:
        node.stop(handover_timeout=0)
