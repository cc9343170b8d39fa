"""The election rules PySyncObj lacks, as pure functions: PreVote and a fast start on leader death.

* **PreVote** (Ongaro's thesis §9.6): before a node raises its term it asks the voters whether they
  would vote for it at term+1. A voter says yes only if its log is no newer, the proposed term is
  above its own, and it has no *live* leader — it is not the leader itself, and its leader is
  connected and was heard from within the minimum election timeout. A node cut off from a healthy
  leader (a partition, a starved tick thread, a returning host) therefore never raises its term
  and never disrupts the group. Granting a pre-vote changes nothing on the granting node.
* **Fast start:** a follower that sees its connection to the leader *close* (the leader's process
  died and its host answered with FIN/RST) starts a pre-vote round at once instead of after 1–2 s;
  the survivors go in address order, ``STAGGER`` apart, so they do not split the vote (should it
  split anyway, the candidates retry after 0.15-0.3 s, not 1-2 s). Silent failures (a crashed
  host, a cut link) close nothing and keep the election timeout.
* **CheckQuorum** is PySyncObj's ``leaderFallbackTimeout``: a leader that heard from no majority
  within it steps down.
"""
from __future__ import annotations

import random

STAGGER = 0.15      # seconds between the survivors' first pre-vote rounds after the leader's death
FAST_RETRY = 0.05   # seconds between pre-vote rounds while the leader is known dead
JITTER = 0.02       # seconds of random spread on both


def log_up_to_date(cand_last_term: int, cand_last_index: int, own_last_term: int, own_last_index: int) -> bool:
    """Raft's vote restriction (§5.4.1): the candidate's log is at least as up to date as ours."""
    return (cand_last_term, cand_last_index) >= (own_last_term, own_last_index)


def grant_pre_vote(*, proposed_term: int, cand_last_term: int, cand_last_index: int, own_term: int,
                   own_last_term: int, own_last_index: int, leader_alive: bool, voter: bool) -> bool:
    """Would this node vote for the candidate at *proposed_term*? (Answering changes nothing.)"""
    return (voter and not leader_alive and proposed_term > own_term
            and log_up_to_date(cand_last_term, cand_last_index, own_last_term, own_last_index))


def leader_alive(*, is_leader: bool, leader_known: bool, leader_connected: bool, since_heard: float,
                 election_min: float) -> bool:
    """A leader this node would not depose: itself, or a connected one heard from recently."""
    return is_leader or (leader_known and leader_connected and since_heard < election_min)


def pre_vote_won(grants: int, voters: int) -> bool:
    """*grants* counts this node's own vote; *voters* includes this node."""
    return grants > voters / 2


def fast_delay(self_id: str, other_voters: list[str], lost_leader: str, rng: random.Random = random) -> float:
    """Seconds until this survivor's first pre-vote after *lost_leader*'s connection closed: the
    surviving voters in address order, ``STAGGER`` apart, plus a little jitter."""
    survivors = sorted({self_id, *other_voters} - {lost_leader})
    return survivors.index(self_id) * STAGGER + rng.random() * JITTER


def retry_delay(rng: random.Random = random) -> float:
    """Seconds until the next pre-vote round while the leader is known dead."""
    return FAST_RETRY + rng.random() * JITTER


def split_retry_delay(rng: random.Random = random) -> float:
    """Seconds a candidate waits for its votes while the leader is known dead before it tries
    again (randomised, so a split vote resolves), instead of the 1-2 s election timeout."""
    return STAGGER * (1 + rng.random())
