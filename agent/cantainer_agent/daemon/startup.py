"""How an agent finds its raft partners at start-up (and joins, if it must).

1. ``members.json`` exists -> restart with exactly those members (never the configured seeds: a
   bootstrap node restarted with ``[]`` elects itself alone);
2. else a raft journal exists (members file lost) -> rejoin through the seeds;
3. else ``bootstrap`` -> if a seed already answers as a member of this cluster with a leader, join
   it (a wiped bootstrap host must not found a second cluster); otherwise found the cluster with the
   ``initial_voters`` (all started together, like etcd's initial-cluster), or alone;
4. else join through the seeds.

Who calls the first election (``Partners.elect_early``): a voter with no partner leads at once, and
of a freshly founded group the first initial voter stands as soon as it reaches a majority — the
others keep the randomised timeout, so they vote for it instead of competing.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from .. import __version__
from ..config import AgentConfig
from ..consensus import RaftError, journal_path, load_members, save_members
from ..errors import AgentError
from ..join.client import JoinError, join_cluster
from ..join.wire import request as join_request

log = logging.getLogger(__name__)

JOIN_DEADLINE = 45.0


class StartupError(AgentError):
    """Start-up failed; the message is the one line shown to the operator."""


@dataclass(frozen=True)
class Partners:
    mode: str                 # restart | rejoin | bootstrap | join
    partners: list[str]       # the other voters to start raft with
    elect_early: bool = False  # stand for election as soon as a majority is reachable


def decide_partners(cfg: AgentConfig, secret: bytes) -> Partners:
    """How this node starts raft: the mode, the other voters, and whether it calls the first election."""
    try:
        known = load_members(cfg.data_dir)
    except RaftError as exc:
        raise StartupError(str(exc)) from None
    if known is not None:
        if known.cluster != cfg.cluster:
            raise StartupError(f"{cfg.data_dir} belongs to cluster {known.cluster!r}, not {cfg.cluster!r}")
        if known.self_addr != cfg.raft_addr:
            raise StartupError(f"{cfg.data_dir} was created for raft address {known.self_addr}, now "
                               f"{cfg.raft_addr}; remove {cfg.data_dir} to join again")
        alone = known.role == "voter" and not known.partners
        return Partners("restart", known.partners, elect_early=alone)
    if os.path.exists(journal_path(cfg.data_dir)):
        if not cfg.seeds:
            raise StartupError(f"{cfg.data_dir} has a raft journal but no members.json and no seeds are "
                               "configured: cannot know the cluster members")
        return Partners("rejoin", join(cfg, secret))
    if cfg.bootstrap:
        serving = _seed_with_leader(cfg, secret)
        if serving is not None:
            log.info("bootstrap requested but %s already serves cluster %s: joining it", serving, cfg.cluster)
            return Partners("join", join(cfg, secret))
        voters = list(cfg.initial_voters) or [cfg.raft_addr]
        save_members(cfg.data_dir, cfg.cluster, cfg.raft_addr, voters)
        partners = [v for v in voters if v != cfg.raft_addr]
        return Partners("bootstrap", partners, elect_early=voters[0] == cfg.raft_addr)
    if not cfg.seeds:  # a config may say so once the node has state (one host: no seeds, founding keys dropped)
        raise StartupError(f"{cfg.path or 'the config'}: 'seeds' is empty and 'bootstrap' is false, and {cfg.data_dir} "
                           "has no raft state: this node could never join a cluster")
    return Partners("join", join(cfg, secret))


def _seed_with_leader(cfg: AgentConfig, secret: bytes) -> str | None:
    """A seed that answers as a member of this cluster with a leader, if any (all asked at once: a
    founding `up` starts every node together, so most seeds refuse at once or have no leader yet)."""
    found: list[str] = []

    def ask(seed: str) -> None:
        try:
            body = join_request(seed, secret, "ping", {}, timeout=1.0)
        except Exception:  # noqa: BLE001 - an unreachable or misbehaving seed: nobody there yet
            return
        result = body.get("result") if body.get("ok") else None
        if isinstance(result, dict) and result.get("cluster") == cfg.cluster and result.get("leader"):
            found.append(seed)

    threads = [threading.Thread(target=ask, args=(seed,), daemon=True) for seed in cfg.seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found[0] if found else None


def join(cfg: AgentConfig, secret: bytes) -> list[str]:
    """Join through the seeds; records the member list and role, returns the other voters."""
    params = {"cluster": cfg.cluster, "node": cfg.node, "address": cfg.address, "raft_addr": cfg.raft_addr,
              "join_addr": cfg.join_addr, "version": __version__, "bundle": cfg.bundle}
    try:
        result = join_cluster(cfg.seeds, secret, params, deadline=JOIN_DEADLINE)
    except JoinError as exc:
        raise StartupError(str(exc)) from None
    members = [m for m in result["members"] if isinstance(m, str)]
    role = "standby" if result.get("role") == "standby" else "voter"  # controllers/voters.py
    if role == "voter" and cfg.raft_addr not in members:
        raise StartupError(f"join answer from {result.get('via')} does not list this node {cfg.raft_addr}")
    save_members(cfg.data_dir, cfg.cluster, cfg.raft_addr, members, role=role)
    log.info("joined through %s as %s (already member: %s) after %d attempt(s) in %.1f s; voters %s",
             result.get("via"), role, result.get("already_member"), result.get("attempts", 1),
             result.get("seconds", 0.0), members)
    if result.get("errors"):  # a slow join says what held it up (the first few addresses and answers)
        errors = sorted(result["errors"].items())
        log.info("join: before that, %d address(es) failed: %s%s", len(errors),
                 "; ".join(f"{addr}: {why}" for addr, why in errors[:5]), " …" if len(errors) > 5 else "")
    return [m for m in members if m != cfg.raft_addr]


def check_port_free(host: str, port: int) -> None:
    """Fail before joining if the raft port cannot be bound (a joined member that cannot
    start would hurt the cluster's quorum)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as exc:
        raise StartupError(f"cannot bind the raft port {host}:{port}: {exc.strerror}") from None
    finally:
        s.close()
