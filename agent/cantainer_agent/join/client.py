"""Joining a cluster through its seeds (follows leader redirects, bounded retries)."""
from __future__ import annotations

import time
from typing import Callable

from ..errors import AgentError
from .wire import FATAL_CODES, NOT_LEADER, AuthError, SecretMismatch, request


class JoinError(AgentError):
    """Joining failed; the message names each seed tried and why."""


def join_cluster(seeds: list[str] | tuple[str, ...], secret: bytes, params: dict, *, deadline: float = 30.0,
                 attempt_timeout: float = 12.0, rounds: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> dict:
    """Ask *seeds* (following leader redirects) until one adds us; returns the join result, with
    ``via`` (who answered), ``attempts``, ``seconds`` and ``errors`` (the last error of each
    address that failed before) added.

    Bounded by *deadline* seconds (and at most *rounds* passes over the seeds, if given).
    Raises :class:`JoinError` naming every seed and its last error; fatal answers (wrong
    cluster, name conflict, clock skew, bad request) raise at once.
    """
    if not seeds:
        raise JoinError("no seeds to join through")
    started = time.monotonic()
    end = started + deadline
    last: dict[str, str] = {}
    backoff = 0.2
    n = attempts = 0
    while True:
        n += 1
        mismatched = 0
        for seed in seeds:
            target, hops = seed, 0
            while target is not None and hops <= 3:
                hops += 1
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                attempts += 1
                try:
                    body = request(target, secret, "join", params, timeout=min(attempt_timeout, max(remaining, 0.5)))
                except SecretMismatch as exc:
                    last[target] = str(exc)
                    mismatched += target == seed
                    break
                except (OSError, AuthError, ValueError) as exc:
                    last[target] = str(exc) or type(exc).__name__
                    break
                if body["ok"]:
                    result = body["result"]
                    if not isinstance(result, dict) or not isinstance(result.get("members"), list):
                        last[target] = "malformed join answer"
                        break
                    result["via"] = target
                    # how it went, for the joiner's log: attempts, seconds, what the others answered
                    result["attempts"], result["seconds"], result["errors"] = attempts, time.monotonic() - started, last
                    return result
                err = body.get("error") or {}
                code, message = err.get("code"), err.get("message", "")
                last[target] = f"{code}: {message}"
                if code in FATAL_CODES:
                    raise JoinError(f"join refused by {target}: {message}")
                redirect = err.get("leader_join") if code == NOT_LEADER else None
                target = redirect if isinstance(redirect, str) and redirect != target else None
        if mismatched == len(seeds):
            raise JoinError(f"every seed ({', '.join(seeds)}) rejected our requests: this node's cluster "
                            "secret differs from the cluster's (rewrite the secret file)")
        if time.monotonic() >= end or (rounds is not None and n >= rounds):
            break
        sleep(min(backoff, max(0.0, end - time.monotonic())))
        backoff = min(backoff * 2, 2.0)
    detail = "; ".join(f"{k}: {v}" for k, v in last.items()) or "no attempt completed"
    raise JoinError(f"could not join cluster through seeds {', '.join(seeds)} ({detail})")
