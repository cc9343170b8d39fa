"""The options `run` and `service create|update` share, and their parsing into agent API values."""
from __future__ import annotations

import argparse

from cantainer.cli.parser import finite_float
from cantainer.errors import UsageError

HEALTH_TIMINGS = (("interval", "health_interval", "--health-interval"),
                  ("timeout", "health_timeout", "--health-timeout"),
                  ("start_period", "health_start_period", "--health-start-period"))


def add_placement(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--constraint", action="append", default=None, metavar="EXPR",
                        help="placement rule: host==NAME, host!=NAME, label.KEY==VALUE, label.KEY!=VALUE "
                             "(repeatable; labels from the inventory)")


def add_restart_and_health(parser: argparse.ArgumentParser, restart_default: str) -> None:
    parser.add_argument("--restart", metavar="POLICY",
                        help=f"no, on-failure[:MAX], always or unless-stopped (default {restart_default}); "
                             "back-off 0.1 s doubling to 10 s")
    parser.add_argument("--health-cmd", metavar="CMD", help="health check, run in the container by /bin/sh -c")
    parser.add_argument("--health-interval", metavar="DURATION", help="between checks (default 30s)")
    parser.add_argument("--health-timeout", metavar="DURATION", help="a check running longer fails (default 30s)")
    parser.add_argument("--health-retries", type=int, metavar="N",
                        help="failures in a row that make it unhealthy (default 3)")
    parser.add_argument("--health-start-period", metavar="DURATION",
                        help="failures in this time after the start do not count (default 0s)")
    parser.add_argument("--no-healthcheck", action="store_true", help="disable the image's HEALTHCHECK")


def restart_of(args: argparse.Namespace) -> str | None:
    from cantainer_agent.cluster.specs import parse_restart
    from cantainer_agent.errors import StateError

    if args.restart is None:
        return None
    try:
        parse_restart(args.restart)
    except StateError as error:
        raise UsageError(f"--restart: {error}") from None
    return args.restart


def health_of(args: argparse.Namespace) -> dict | None:
    """The --health-* options as the agent API takes them (merged there with the image's HEALTHCHECK)."""
    from cantainer.timefmt import parse_duration

    if args.no_healthcheck:
        if args.health_cmd:
            raise UsageError("--no-healthcheck and --health-cmd contradict each other", "give one of them")
        return {"disable": True}
    health: dict = {}
    if args.health_cmd:
        health["test"] = ["CMD-SHELL", args.health_cmd]
    for key, attribute, flag in HEALTH_TIMINGS:
        text = getattr(args, attribute)
        if text is None:
            continue
        try:
            health[key] = parse_duration(text)
        except ValueError as error:
            raise UsageError(f"{flag} {error}") from None
        if key != "start_period" and health[key] <= 0:
            raise UsageError(f"{flag} {text} must be longer than 0")
    if args.health_retries is not None:
        if args.health_retries < 1:
            raise UsageError(f"--health-retries {args.health_retries} must be at least 1")
        health["retries"] = args.health_retries
    return health or None


def constraints_of(args: argparse.Namespace) -> list[str] | None:
    from cantainer_agent.cluster.specs import check_constraints
    from cantainer_agent.errors import StateError

    if args.constraint is None:
        return None
    try:
        return check_constraints(list(args.constraint))
    except StateError as error:
        raise UsageError(f"--constraint: {error}") from None


def limits_of(args: argparse.Namespace) -> dict:
    from cantainer.containers import parse_size

    if args.cpus is not None and args.cpus <= 0 or args.pids is not None and args.pids <= 0:
        raise UsageError("--cpus and --pids must be positive")
    return {key: value for key, value in (("memory", parse_size(args.memory) if args.memory else None),
                                          ("cpus", args.cpus), ("pids", args.pids)) if value is not None}


def add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", help="memory limit, e.g. 256m (a reservation when the cluster places it)")
    parser.add_argument("--cpus", type=finite_float, help="CPU limit, e.g. 0.5 (a reservation when placed)")
    parser.add_argument("--pids", type=int, help="maximum number of processes (default 1024)")
