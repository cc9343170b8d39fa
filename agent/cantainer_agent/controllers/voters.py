"""The voters controller: who votes in raft (dqlite-style roles), as policy outside the raft node.

At most ``voters`` hosts (config, odd, ≤ 7, default 3) vote; every other host is a non-voting
*standby* that holds the full state, serves reads and forwards writes. On the leader,
``sync(status)`` replaces a voter unreachable for ``promote_after`` seconds by a *healthy* standby
(one whose replicated heartbeat this leader saw advance recently, by its own clock), one
membership change at a time: first remove the dead voter, then add the standby. A voter that has
had no leader for a while asks its peers' join ports whether it still votes; a member with a leader
that lists it no more — twice in a row — makes it a standby. The raft node carries out the role
changes (RaftNode.add_voter / remove_server / become_standby); docs/design/raft.md has the why.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ..cluster.liveness import down_after
from ..consensus import RaftNode
from ..join.wire import request
from ..netaddr import split_hostport

log = logging.getLogger(__name__)

STANDBY_FRESH = 10.0
PROMOTE_AFTER = 10.0
DEMOTE_PROBE_AFTER = 5.0  # a voter without a leader this long asks its peers whether it still votes


def plan_change(voters: set[str], self_addr: str, cap: int, unreachable_for: dict[str, float],
                healthy_standbys: list[str], promote_after: float = PROMOTE_AFTER) -> tuple[str, str] | None:
    """Pure: the single membership change the leader should start now, or None.

    *voters* are the raft addresses of the voting members (the leader included),
    *unreachable_for* how long each voter has been disconnected from the leader (seconds),
    *healthy_standbys* the raft addresses of standbys fit to become voters.
    """
    candidates = sorted(a for a in healthy_standbys if a not in voters)
    if not candidates:
        return None
    dead = sorted(v for v in voters if v != self_addr and unreachable_for.get(v, 0.0) >= promote_after)
    if dead:
        return ("remove", dead[0])  # then, on the next pass, the standby is added
    if len(voters) < cap:
        return ("add", candidates[0])
    return None


class VotersController:
    name = "voters"

    def __init__(self, raft: Callable[[], RaftNode | None], secret: bytes, *, voters: int,
                 heartbeat_interval: float, promote_after: float = PROMOTE_AFTER, join_port: int | None = None) -> None:
        self._raft = raft
        self._secret = secret
        self.join_port = join_port  # ours: where a partner's host is asked when the state names none
        self.voters = voters
        self.heartbeat_interval = heartbeat_interval
        self.promote_after = promote_after
        self._hb_seen: dict[str, tuple[float, float]] = {}  # leader: node -> (heartbeat, when it moved)
        self._last_probe = 0.0
        self._removal_seen = False

    def sync(self, status: dict) -> None:
        raft = self._raft()
        if raft is None:
            return
        if status["role"] == "leader":
            self._maintain(raft, status)
            return
        self._hb_seen = {}
        if status["role"] != "standby" and status["leaderless_for"] > DEMOTE_PROBE_AFTER:
            self._probe(raft, status)

    def _maintain(self, raft: RaftNode, status: dict) -> None:
        now = time.monotonic()
        voters = set(status["members"])
        nodes = raft.read(lambda state: {name: (rec["raft_addr"], rec["heartbeat"])
                                         for name, rec in state.nodes.items()})
        healthy = []
        # Fit to vote: a standby whose heartbeat moved within STANDBY_FRESH, or within the time after
        # which status calls it down where heartbeats are slower (large clusters, cluster/liveness.py).
        fresh = max(STANDBY_FRESH, down_after(self.heartbeat_interval, len(nodes)))
        for name, (raft_addr, heartbeat) in nodes.items():
            before = self._hb_seen.get(name)
            if before is None or before[0] != heartbeat:  # the first sight proves nothing: stale
                self._hb_seen[name] = (heartbeat, now if before is not None else float("-inf"))
            if raft_addr not in voters and now - self._hb_seen[name][1] < fresh:
                healthy.append(raft_addr)
        change = plan_change(voters, status["self"], self.voters, raft.peer_contact(), healthy, self.promote_after)
        if change is None:
            return
        kind, addr = change
        if kind == "remove":
            log.warning("roles: voter %s unreachable for %.0f s and a healthy standby exists: removing it",
                        addr, raft.peer_contact().get(addr, 0))
            raft.remove_server(addr)
        else:
            log.warning("roles: promoting standby %s to voter (%d of %d voters)", addr, len(voters) + 1, self.voters)
            raft.add_voter(addr)

    def _probe(self, raft: RaftNode, status: dict) -> None:
        """A voter without a leader for a while: has the group removed us? Ask the peers' join
        ports (signed ping); a member that has a leader and does not list us — twice in a row,
        DEMOTE_PROBE_AFTER apart, so a peer that has not yet seen our own addition cannot demote
        us — settles it."""
        if time.monotonic() - self._last_probe < DEMOTE_PROBE_AFTER:
            return
        self._last_probe = time.monotonic()
        me = status["self"]
        join_addrs = raft.read(lambda state: [rec["join_addr"] for rec in state.nodes.values()
                                              if rec.get("raft_addr") != me and rec.get("join_addr")])
        if not join_addrs and self.join_port is not None:
            # A restarted replica applies only what its persisted commit index covers (written about
            # once a second), so it may not know the nodes yet: ask its partners' hosts, at our join port.
            join_addrs = [f"{split_hostport(addr)[0]}:{self.join_port}" for addr in status["members"] if addr != me]
        for addr in join_addrs:
            try:
                body = request(addr, self._secret, "ping", {}, timeout=1.0)
            except Exception:  # noqa: BLE001 - an unreachable or misbehaving peer: ask the next
                continue
            result = body.get("result") if body.get("ok") else None
            if not isinstance(result, dict) or result.get("cluster") != raft.cluster or not result.get("leader"):
                continue
            members = result.get("members")
            if isinstance(members, list) and members and me not in members:
                if not self._removal_seen:
                    self._removal_seen = True  # confirm on the next probe
                    return
                log.warning("roles: %s says the voters are %s without us: becoming a standby", addr, members)
                raft.become_standby(members)
            self._removal_seen = False
            return
        self._removal_seen = False
