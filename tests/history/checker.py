"""A linearizability checker: Wing & Gong's search with Lowe's memoisation (as Knossos and Porcupine).

A history is a list of :class:`Op` — invocation and response times from one clock, the observed
result. An op whose outcome is unknown (the client gave up: a timeout, a lost connection) is
*pending*: it has no response time, may have taken effect at any point after its call, or never,
and any result is accepted for it. The history is linearizable if some total order of the ops
(every completed one, and any subset of the pending ones) respects real time — an op that returned
before another was called comes first — and, applied one by one to the model, yields every observed
result. ``check`` searches for that order, memoising (linearized set, model state) pairs already
explored, and returns None or a :class:`Violation` naming the ops it could not place.

Models are pure: ``init()`` gives a hashable state, ``step(state, op)`` returns ``(ok, next_state)``
— whether *op* with its observed result can happen in *state*. Histories are split by
``partition(op)`` first (P-compositionality: a history is linearizable iff each object's is).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Protocol

PENDING = None  # the result of an op whose outcome is unknown


@dataclass
class Op:
    client: int
    kind: str
    arg: Any
    call: float
    ret: float | None = None      # None: pending (outcome unknown)
    result: Any = PENDING
    id: int = field(default=-1)   # set by check()

    @property
    def pending(self) -> bool:
        return self.ret is None

    def __str__(self) -> str:
        end = "?" if self.pending else f"{self.ret:.3f}"
        return f"[{self.call:.3f}..{end}] client {self.client}: {self.kind}({self.arg!r}) -> {self.result!r}"


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]: ...

    def partition(self, op: Op) -> Iterable[Hashable]: ...


@dataclass
class Violation:
    partition: Hashable
    ops: list[Op]           # the partition's history
    stuck: list[Op]         # the ops of the longest linearizable prefix found, in order
    unplaced: list[Op]      # completed ops that could not follow that prefix

    def __str__(self) -> str:
        lines = [f"not linearizable (partition {self.partition!r}); longest linearization "
                 f"{len(self.stuck)} of {len(self.ops)} ops, then none of these fits:"]
        lines += [f"  {op}" for op in self.unplaced[:8]]
        return "\n".join(lines)


class _Entry:
    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op: Op | None, is_call: bool) -> None:
        self.op, self.is_call = op, is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _lift(entry: _Entry) -> None:
    for e in (entry, entry.match):
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev


def _unlift(entry: _Entry) -> None:
    for e in (entry.match, entry):
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e


def _search(model: Model, ops: list[Op]) -> tuple[bool, list[Op], list[Op]]:
    events = []
    for op in ops:
        call, ret = _Entry(op, True), _Entry(op, False)
        call.match, ret.match = ret, call
        events.append((op.call, 0, op.id, call))
        events.append((math.inf if op.pending else op.ret, 1, op.id, ret))
    events.sort(key=lambda e: e[:3])  # calls before returns at the same instant: concurrent
    head = _Entry(None, False)
    prev = head
    for *_, entry in events:
        prev.next, entry.prev = entry, prev
        prev = entry
    completed = sum(1 for op in ops if not op.pending)
    state = model.init()
    linearized = 0  # bitset of op ids
    done_completed = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Hashable]] = []
    best: list[Op] = []
    entry = head.next
    while done_completed < completed:
        if entry is not None and entry.is_call:
            ok, after = model.step(state, entry.op)
            key = (linearized | (1 << entry.op.id), after)
            if ok and key not in cache:
                cache.add(key)
                stack.append((entry, state))
                state, linearized = after, key[0]
                done_completed += not entry.op.pending
                _lift(entry)
                if len(stack) > len(best):
                    best = [e.op for e, _ in stack]
                entry = head.next
                continue
            entry = entry.next
            continue
        if entry is not None and entry.op.pending:  # a pending op need not be placed: look further
            entry = entry.next
            continue
        # A completed op's return (or the end) reached before its call could be placed: back up.
        if not stack:
            placed = {op.id for op in best}
            return False, best, [op for op in ops if not op.pending and op.id not in placed]
        top, state = stack.pop()
        linearized &= ~(1 << top.op.id)
        done_completed -= not top.op.pending
        _unlift(top)
        entry = top.next
    return True, [], []


def check(model: Model, history: list[Op]) -> Violation | None:
    """None if *history* is linearizable against *model*, else the first partition that is not."""
    partitions: dict[Hashable, list[Op]] = {}
    for op in history:
        for key in model.partition(op):
            partitions.setdefault(key, []).append(op)
    for key, ops in sorted(partitions.items(), key=lambda item: repr(item[0])):
        copies = [Op(op.client, op.kind, op.arg, op.call, op.ret, op.result, id=i) for i, op in enumerate(ops)]
        ok, best, unplaced = _search(_Projected(model, key), copies)
        if not ok:
            return Violation(key, copies, best, unplaced)
    return None


class _Projected:
    """The model seen by one partition (reads are projected onto it by the model itself)."""

    def __init__(self, model: Model, key: Hashable) -> None:
        self._model, self._key = model, key

    def init(self) -> Hashable:
        return self._model.init()

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        project: Callable[[Hashable, Op], tuple[bool, Hashable]] | None = getattr(self._model, "step_in", None)
        return project(self._key, state, op) if project else self._model.step(state, op)
