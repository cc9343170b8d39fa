"""dqlite-style roles: a capped set of voters, every other host a non-voting *standby*.

Why
---
Raft gets slower and less available with more voters (every write waits for a majority; every
election needs one), and an even count buys nothing. So at most ``voters`` (config, odd, ≤ 7,
default 3) hosts vote; the others follow the log without voting: they hold the full state,
serve local reads, and forward writes to the leader (PySyncObj does that for them).

How, with PySyncObj 0.3.17
--------------------------
* A standby is PySyncObj's *read-only node*: ``SyncObj(None, voters)``. It binds no raft port,
  connects to every voter as "readonly", receives every append-entries and snapshot, and is
  counted in no quorum. It keeps its log in memory only (``journalFile=None``): the voters hold
  the durable copy, a restarted standby is refilled from the leader (PySyncObj's read-only node
  cannot reload its own snapshot — it pickles ``None`` as a cluster member), and the agent's
  ``members.json`` remembers the role.
* Joining: the join service adds a joiner as a voter while there are fewer than ``voters``,
  otherwise answers "standby" with the voter list (no raft change).
* A read-only node can not be promoted in place (PySyncObj has no such transition). Promotion is
  therefore two ordinary membership changes on the leader plus a restart of the raft object on
  the standby: the leader first *removes* the dead voter (committed by the live voters), then
  *adds* the standby (with the dead one gone, the live voters alone commit that too — the group
  never waits for the new voter). The standby sees the "add" for its own address in the log,
  records role=voter, and the owner thread of its RaftNode replaces the read-only SyncObj by a
  voting one on a fresh journal (the leader sends it a snapshot); reads keep being served from
  the old replica until the new one has caught up.
* A removed voter that comes back cannot talk to the group any more (voters drop connections
  from unknown addresses). With no leader for a few seconds it asks its peers' join ports; if
  a member with a leader no longer lists it, it becomes a standby the same way (restart of the
  raft object, voter files removed).
* One membership change at a time (PySyncObj refuses a second one until the first commits;
  the leader's loop waits for each commit).

Who gets promoted: a voter unreachable from the leader for ``promote_after`` seconds (10 s by
default — raft elections and TCP take ~2 s to see a dead peer, a reboot of an agent a few
seconds) is replaced by a *healthy* standby: one whose replicated heartbeat the leader has seen
advance within ``STANDBY_FRESH`` seconds, by the leader's own clock so host clock skew does not
matter (longer in large clusters, whose heartbeats are slower: liveness.py). Lowest name first,
for determinism.
"""

from __future__ import annotations

STANDBY_FRESH = 10.0
PROMOTE_AFTER = 10.0


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
