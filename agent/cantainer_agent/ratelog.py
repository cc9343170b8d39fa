"""Log lines a stranger can trigger at will, summarised: at most one line per source of noise and period.

A ``Tally`` counts events (a rejected connection: who, why). The first event after a quiet period is
logged at once (an operator sees that something started); the rest of the period is counted and
logged as one summary line when the period ends (a timer), with the busiest sources. So a flood of
any size costs a few lines a minute, never a line per connection.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

SUMMARY_INTERVAL = 30.0  # seconds per summary line
TOP_SOURCES = 3


class Tally:
    def __init__(self, logger: logging.Logger, what: str, interval: float | None = None) -> None:
        self._log = logger
        self._what = what  # e.g. "join port: rejected"
        self._interval = SUMMARY_INTERVAL if interval is None else interval
        self._lock = threading.Lock()
        self._sources: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._timer: threading.Timer | None = None

    def add(self, source: str, reason: str) -> None:
        with self._lock:
            if self._timer is None:  # quiet until now: say it at once, then count for a period
                self._timer = threading.Timer(self._interval, self._flush)
                self._timer.daemon = True
                self._timer.start()
                first = True
            else:
                self._sources[source] += 1
                self._reasons[reason] += 1
                first = False
        if first:
            self._log.warning("%s a connection from %s (%s); more are summarised every %.0f s",
                              self._what, source, reason, self._interval)

    def _flush(self) -> None:
        with self._lock:
            sources, reasons = self._sources, self._reasons
            self._sources, self._reasons = Counter(), Counter()
            if not sources:
                self._timer = None  # quiet: the next event is logged at once again
            else:
                self._timer = threading.Timer(self._interval, self._flush)
                self._timer.daemon = True
                self._timer.start()
        if sources:
            total = sum(sources.values())
            top = ", ".join(f"{source} ×{count}" for source, count in sources.most_common(TOP_SOURCES))
            why = ", ".join(f"{reason} ×{count}" for reason, count in reasons.most_common())
            self._log.warning("%s %d more connection(s) from %d address(es) in the last %.0f s (%s%s; %s)",
                              self._what, total, len(sources), self._interval, top,
                              ", …" if len(sources) > TOP_SOURCES else "", why)

    def close(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
