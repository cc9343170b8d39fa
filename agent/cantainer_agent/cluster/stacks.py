"""Stacks in the replicated state (pure; a mixin of ClusterState, state.py).

A stack record ``{name, objects: {KEY: {kind, name, spec, owned}}, updated_at}`` says which
cluster objects `cantainer apply` made or adopted for a stack file (KEY is ``KIND:NAME`` as the file
names it; ``name`` the object's name in the cluster) and the spec the file gave each when it was
applied: the next plan compares the file with that, and ``--prune`` removes only what the stack
``owned`` (made). ``set_stack_object`` sets one object or (``entry`` None) drops it, right after
the operation on that object succeeded, so a failed apply leaves an accurate record; a stack with
no objects left is gone. Absent from snapshots written before stacks existed: an empty table.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

from ..errors import StateError

STACK_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")
KINDS = ("network", "volume", "service", "container")
KEY_RE = re.compile(r"^(network|volume|service|container):[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SPEC = 64 * 1024  # bytes of JSON per object
MAX_OBJECTS = 512


def check_stack_name(name: Any) -> str:
    if not isinstance(name, str) or not STACK_NAME_RE.match(name):
        raise StateError(f"stack name {name!r} is invalid — use 1-24 lowercase letters, digits and hyphens, "
                         "starting and ending with a letter or digit")
    return name


def check_entry(key: Any, entry: Any) -> dict:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise StateError(f"stack object key {key!r} must be KIND:NAME with KIND one of {', '.join(KINDS)}")
    if not isinstance(entry, dict) or set(entry) != {"kind", "name", "spec", "owned"}:
        raise StateError("a stack object is {kind, name, spec, owned}")
    if entry["kind"] != key.partition(":")[0]:
        raise StateError(f"stack object {key}: kind {entry['kind']!r} does not match its key")
    if not isinstance(entry["name"], str) or not 0 < len(entry["name"]) <= 128:
        raise StateError("a stack object's name is a string of 1-128 characters")
    if not isinstance(entry["owned"], bool):
        raise StateError("a stack object's owned is true or false")
    try:
        size = len(json.dumps(entry["spec"], sort_keys=True))
    except (TypeError, ValueError):
        raise StateError("a stack object's spec must be JSON data") from None
    if not isinstance(entry["spec"], dict) or size > MAX_SPEC:
        raise StateError(f"a stack object's spec is an object of at most {MAX_SPEC} bytes of JSON")
    return copy.deepcopy(entry)


class StackCommands:
    """``set_stack_object``."""

    STACK_COMMANDS = ("set_stack_object",)
    stacks: dict[str, dict]

    def apply_set_stack_object(self, stack: str, key: str, entry: dict | None, ts: float) -> dict | None:
        """Record (or with *entry* None forget) one object of *stack*; returns the stack's record, or
        None once it has no objects left."""
        check_stack_name(stack)
        if type(ts) not in (int, float) or ts != ts or ts < 0:
            raise StateError("ts must be a non-negative number")
        record = self.stacks.get(stack)
        if entry is None:
            if not isinstance(key, str):
                raise StateError("stack object key must be a string")
            if record is None or key not in record["objects"]:
                return copy.deepcopy(record)
            del record["objects"][key]
            if not record["objects"]:
                del self.stacks[stack]
                return None
        else:
            checked = check_entry(key, entry)
            if record is None:
                record = {"name": stack, "objects": {}, "updated_at": float(ts)}
            if key not in record["objects"] and len(record["objects"]) >= MAX_OBJECTS:
                raise StateError(f"stack {stack} has {MAX_OBJECTS} objects already")
            record["objects"][key] = checked
            self.stacks[stack] = record
        record["updated_at"] = float(ts)
        return copy.deepcopy(record)
