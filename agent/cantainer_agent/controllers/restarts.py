"""Restart policies, applied by the container's host from its own records (no raft needed).

``no`` never; ``on-failure[:MAX]`` after a non-zero exit (or a death: OOM kill, a lost process) while
fewer than MAX restarts were made; ``always`` and ``unless-stopped`` after any end — neither after a
`stop` (desired stopped), but on agent start-up ``always`` brings a stopped container back (docker's
difference between the two). Back-off: the n-th restart in a row waits 0.1 s doubling to 10 s after
the exit; a run of 10 s or more resets the series. The bookkeeping — total count, the current series,
the last restarts (when, after which delay, after which exit) — lives in ``restarts.json`` beside the
container's record on disk, so it survives the agent, and is reported to the cluster when it can be.
"""
from __future__ import annotations

import json
import os

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
RESET_AFTER = 10.0
HISTORY = 10
RECORD = "restarts.json"


def backoff(series: int) -> float:
    """Seconds to wait before the next restart when *series* restarts were made in a row."""
    return min(BACKOFF_FIRST * 2 ** min(series, 32), BACKOFF_MAX)


def wants_restart(restart: dict | None, state: str, exit_code: int | None, count: int) -> bool:
    """Whether a container that ended (*state* exited or dead) is to be started again."""
    policy = (restart or {}).get("policy", "no")
    if policy in ("always", "unless-stopped"):
        return True
    if policy == "on-failure":
        failed = state == "dead" or exit_code != 0
        limit = (restart or {}).get("max")
        return failed and (limit is None or count < limit)
    return False


def series_after(series: int, started_at: float | None, finished_at: float | None) -> int:
    """The restart series once a run from *started_at* to *finished_at* has ended."""
    if started_at is not None and finished_at is not None and finished_at - started_at >= RESET_AFTER:
        return 0
    return series


def empty() -> dict:
    return {"count": 0, "series": 0, "history": []}


def load(container_dir: str) -> dict:
    try:
        with open(os.path.join(container_dir, RECORD), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return empty()
    if not isinstance(data, dict) or type(data.get("count")) is not int or type(data.get("series")) is not int:
        return empty()
    return {"count": data["count"], "series": data["series"], "history": list(data.get("history") or [])}


def save(container_dir: str, record: dict) -> None:
    path = os.path.join(container_dir, RECORD)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def noted(record: dict, at: float, delay: float, exit_code: int | None, exited_at: float | None) -> dict:
    """*record* after one more restart."""
    history = [*record["history"], {"at": at, "delay": delay, "exit_code": exit_code, "exited_at": exited_at}]
    return {"count": record["count"] + 1, "series": record["series"] + 1, "history": history[-HISTORY:]}
