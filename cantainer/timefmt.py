"""Times as the CLI shows them: RFC 3339 (UTC, microseconds, fixed width — as container logs write
them, so the strings compare as times), compact ages, and `--since` durations or times."""
from __future__ import annotations

import datetime
import re
import time

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def rfc3339(seconds: float | None) -> str | None:
    """UTC, microseconds, fixed width (as the container logs write them); None stays None."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (90s, 10m, 1h30m, 2d) or a time (RFC 3339 / ISO 8601;
    without a zone it is UTC). Returns epoch seconds; ValueError with what was expected."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match and any(match.groups()):
        days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
        return now - (((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration nor a time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def age(seconds: float | None, now: float | None = None) -> str:
    """Compact time since: 42s, 5m, 3h, 2d."""
    if not seconds:
        return "-"
    elapsed = max(0.0, (time.time() if now is None else now) - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if elapsed >= size:
            return f"{int(elapsed // size)}{unit}"
    return f"{int(elapsed)}s"


def parse_duration(text: str) -> float:
    """A duration as docker's options take it: 500ms, 5s, 1m30s, 2h — or plain seconds (2.5)."""
    body = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", body):
        return float(body)
    if body.endswith("ms") and body[:-2].replace(".", "", 1).isdigit():
        return float(body[:-2]) / 1000
    match = _DURATION.match(body)
    if not body or not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration (write it like 500ms, 5s or 1m30s)")
    days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
