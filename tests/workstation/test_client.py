"""The CLI's write sessions and retries (pure: no host needed)."""
from __future__ import annotations

import asyncio
import os

import pytest

from cantainer.client import EXIT_CODES, AgentError, Sessions, may_retry, retrying
from cantainer.ssh import HostError
from cantainer_agent import protocol


def test_sequence_numbers_grow_and_a_forked_process_gets_its_own_client():
    sessions = Sessions()
    first, second = sessions.next(), sessions.next()
    assert first["client"] == second["client"] and second["seq"] == first["seq"] + 1
    pid = os.fork()
    if pid == 0:  # a fork must never reuse the parent's (client, seq) pairs: they name other requests
        os._exit(0 if sessions.next()["client"] != first["client"] else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.parametrize("error, retry", [
    (AgentError("h1", protocol.UNAVAILABLE, "no leader"), True),
    (AgentError("h1", protocol.OUTCOME_UNKNOWN, "leader changed"), True),
    (HostError("h1", "connection lost"), True),
    (AgentError("h1", protocol.NOT_FOUND, "no container named 'x'"), False),
    (AgentError("h1", protocol.CONFLICT, "overlaps"), False),
    (AgentError("h1", protocol.INTERNAL, "bug"), False),
])
def test_only_errors_that_say_nothing_was_decided_are_retried(error, retry):
    assert may_retry(error) is retry


def test_a_write_is_resent_until_it_gets_a_definite_answer():
    answers = [HostError("h1", "connection lost"), AgentError("h2", protocol.OUTCOME_UNKNOWN, "leader changed"),
               {"removed": "web"}]

    async def attempt():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert asyncio.run(retrying(attempt, deadline=10)) == {"removed": "web"} and answers == []


def test_a_refusal_is_not_retried_and_keeps_its_exit_code():
    calls = []

    async def attempt():
        calls.append(1)
        raise AgentError("h1", protocol.NOT_FOUND, "no container named 'web'")

    with pytest.raises(AgentError) as error:
        asyncio.run(retrying(attempt, deadline=10))
    assert calls == [1] and error.value.exit_code == EXIT_CODES[protocol.NOT_FOUND] == 3
