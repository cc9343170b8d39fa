"""How the checks of the TOML files (inventory, stack) word what they found, in one voice.

A value is quoted as JSON (escapes keep the message on one line; cut at 60 characters) and described
with its TOML type; a misspelt key or word gets its closest match, unquoted, as the CLI offers one
for a command or an option ("did you mean replicas?").
"""
from __future__ import annotations

import difflib
import json
from typing import Any, Sequence

QUOTE_LIMIT = 60


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """*value* (a string, or anything shown as its str) in double quotes, JSON-escaped, cut at *limit*."""
    text = value if isinstance(value, str) else str(value)
    return json.dumps(text if len(text) <= limit else text[:limit] + "…", ensure_ascii=False)


def describe(value: Any) -> str:
    """What a TOML value is, for "expected …, got <this>": `3 (an integer)`, `"x" (a string)`, `a table`."""
    if isinstance(value, bool):  # before int: bool is an int in Python
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{quote(value)} (a string)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a float)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value} (a date/time)"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """` (did you mean CHOICE?)` for the closest of *choices* to *word*, or "" when none is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
