"""Restart policies and back-off, and docker's health-check transitions (pure parts)."""
from __future__ import annotations

import pytest

from cantainer_agent.controllers import restarts
from cantainer_agent.controllers.health import next_state


def test_backoff_doubles_from_a_tenth_of_a_second_to_ten():
    assert [restarts.backoff(n) for n in range(9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert restarts.backoff(10_000) == 10.0


def test_ten_seconds_of_running_reset_the_series():
    assert restarts.series_after(5, 100.0, 109.9) == 5
    assert restarts.series_after(5, 100.0, 110.0) == 0
    assert restarts.series_after(5, None, 110.0) == 5  # never ran (a failed start): keeps backing off


@pytest.mark.parametrize("policy, state, code, count, wanted", [
    (None, "exited", 1, 0, False),
    ({"policy": "no", "max": None}, "exited", 1, 0, False),
    ({"policy": "on-failure", "max": None}, "exited", 0, 0, False),
    ({"policy": "on-failure", "max": None}, "exited", 3, 99, True),
    ({"policy": "on-failure", "max": 2}, "exited", 3, 1, True),
    ({"policy": "on-failure", "max": 2}, "exited", 3, 2, False),
    ({"policy": "on-failure", "max": 2}, "dead", None, 0, True),  # OOM kill, lost process
    ({"policy": "always", "max": None}, "exited", 0, 50, True),
    ({"policy": "unless-stopped", "max": None}, "exited", 0, 0, True),
])
def test_which_ends_are_restarted(policy, state, code, count, wanted):
    assert restarts.wants_restart(policy, state, code, count) is wanted


def test_the_book_keeps_the_count_the_series_and_the_last_restarts(tmp_path):
    book = restarts.empty()
    for n in range(12):
        book = restarts.noted(book, 100.0 + n, restarts.backoff(book["series"]), 1, 99.0 + n)
    restarts.save(str(tmp_path), book)
    loaded = restarts.load(str(tmp_path))
    assert (loaded["count"], loaded["series"], len(loaded["history"])) == (12, 12, restarts.HISTORY)
    assert loaded["history"][-1] == {"at": 111.0, "delay": 10.0, "exit_code": 1, "exited_at": 110.0}
    (tmp_path / restarts.RECORD).write_text("{broken")
    assert restarts.load(str(tmp_path)) == restarts.empty()


@pytest.mark.parametrize("before, healthy, in_start, after", [
    (("starting", 0), True, True, ("healthy", 0)),
    (("starting", 0), False, True, ("starting", 0)),   # the start period forgives
    (("starting", 0), False, False, ("starting", 1)),
    (("starting", 2), False, False, ("unhealthy", 3)),
    (("healthy", 0), False, False, ("healthy", 1)),     # one failure is not yet unhealthy
    (("healthy", 2), False, True, ("unhealthy", 3)),    # once healthy, the start period no longer counts
    (("unhealthy", 5), True, False, ("healthy", 0)),
])
def test_health_transitions_follow_docker(before, healthy, in_start, after):
    assert next_state(before[0], before[1], healthy, in_start, retries=3) == after
