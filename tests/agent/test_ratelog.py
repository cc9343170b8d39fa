"""Rejected-connection logging: the first at once, the rest as one summary line per period."""
from __future__ import annotations

import logging
import time

from cantainer_agent.ratelog import Tally


def test_a_flood_costs_two_lines_and_a_quiet_period_resets(caplog):
    logger = logging.getLogger("test.ratelog")
    tally = Tally(logger, "join port: rejected", interval=0.3)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for n in range(5000):
            tally.add(f"198.18.0.{n % 7}", "not JSON" if n % 2 else "line too long")
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2, lines
        assert lines[0].startswith("join port: rejected a connection from 198.18.0.0 (line too long)")
        assert "4999 more connection(s) from 7 address(es) in the last 0 s" in lines[1]
        assert "not JSON ×2500" in lines[1] and "line too long ×2499" in lines[1]
        # a period without events ends the summaries; the next event is reported at once again
        while tally._timer is not None and time.monotonic() < deadline:  # noqa: SLF001 - the state under test
            time.sleep(0.02)
        tally.add("198.18.0.9", "not JSON")
        assert caplog.records[-1].getMessage().startswith("join port: rejected a connection from 198.18.0.9")
    tally.close()
