"""The services controller: on the raft leader only, it moves every service toward its spec.

Each pass plans from the leader's replica (cluster/orchestrator.py: pure) and applies the plan as
replicated commands — placements, retirements, stops, removals, update verdicts. Because only the
leader acts and every action is a committed command, a partitioned minority (no leader) starts
nothing, and a leader that lost its majority cannot commit what it planned. A refused start-first
replacement (no host has room for both tasks, a published port) is done stop-first instead. What
keeps a service from converging (no host fits) is noted on the service once per change, for
`service ls`/`ps`, and logged once.
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

from ..cluster import orchestrator, scheduler
from ..cluster.liveness import down_after
from ..cluster.services import task_request
from ..consensus import CommandRejected, RaftNode
from ..consensus.writes import Session, replicate

log = logging.getLogger(__name__)

QUIET = ("set_container_desired",)  # routine steps logged at debug level


class ServicesController:
    name = "services"

    def __init__(self, node: str, raft: Callable[[], RaftNode | None], *, heartbeat_interval: float,
                 reschedule_after: float) -> None:
        self._raft = raft
        self._heartbeat_interval = heartbeat_interval
        self._reschedule_after = reschedule_after
        self._session = Session.new(f"services@{node}")
        self._notes: dict[str, str] = {}  # service -> the note it carries, as this leader last set it
        self._logged: set[str] = set()

    def sync(self, snapshot: dict) -> None:
        raft = self._raft()
        if raft is None or snapshot.get("role") != "leader" or not snapshot.get("ready") or "state" not in snapshot:
            self._notes.clear()
            return
        state = snapshot["state"]
        if not state.get("services") and not any(c.get("service_id") for c in state["containers"].values()):
            return
        now = time.time()
        window = down_after(self._heartbeat_interval, len(state["nodes"]))
        problems: dict[str, str] = {}
        for action in orchestrator.plan(state, now, window, self._reschedule_after):
            error = self._apply(raft, action, now, window)
            if error is not None and action.fallback is not None:
                error = self._apply(raft, action.fallback, now, window)
            service = action.args.get("service")
            if error is not None and service and action.command == "place_task":
                problems.setdefault(service, error)
        for name, record in state.get("services", {}).items():
            message = problems.get(name, "")
            known = self._notes.get(name, (record.get("note") or {}).get("message", ""))
            if message != known:
                try:
                    replicate(raft, "note_service", {"name": name, "message": message, "ts": now}, self._session)
                    self._notes[name] = message
                except CommandRejected:
                    pass

    def _apply(self, raft: RaftNode, action: orchestrator.Action, now: float, window: float) -> str | None:
        """Apply one action; the refusal's message, or None."""
        args = dict(action.args)
        if action.command == "place_task":
            args.update(id=secrets.token_hex(6), ts=now, down_after=window,
                        hint=raft.read(lambda state: _hint(state, args, now, window)))
        elif action.command in ("retire_task", "rollback_service", "service_update_state"):
            args["ts"] = now
        try:
            replicate(raft, action.command, args, self._session)
        except CommandRejected as error:
            key = f"{action.command}:{error}"
            if key not in self._logged:
                self._logged.add(key)
                log.warning("services: %s — refused: %s", action.why, error)
            return str(error)
        self._logged = {key for key in self._logged if not key.startswith(f"{action.command}:")}
        (log.debug if action.command in QUIET else log.info)("services: %s", action.why)
        return None


def _hint(state, args: dict, now: float, window: float) -> str | None:
    """The host this replica's scheduler picks for a task (run in the raft tick thread, on the live
    state: it sees the placements this pass made already)."""
    service = state.services.get(args["service"])
    if service is None:
        return None
    current = state.containers.get(f"{args['service']}.{args['slot']}") if args["supersede"] else None
    try:
        return scheduler.place(state.nodes, state.containers, task_request(service, args["slot"], current), now,
                               window)
    except scheduler.NoHostFits:
        return None
