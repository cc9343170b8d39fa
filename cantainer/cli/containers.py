"""Container commands: `run`, `exec`, `logs`, `stop`, `rm`, `ps`."""
from __future__ import annotations

import argparse
import os
import sys

from cantainer.cli import exitcodes, output, runopts
from cantainer.cli.common import cluster_call, consistency, load, run_async
from cantainer.cli.parser import STALE_HELP, Commands, finite_float
from cantainer.errors import CantainerError, UsageError

# run and exec use -i for --interactive (as docker does); they take --inventory only.
LONG_INVENTORY = ("--inventory",)


def register(commands: Commands) -> None:
    run = commands.add("run", "start a container (on a host, or where the cluster places it)", cmd_run,
                       inventory_flags=LONG_INVENTORY, tool_error=exitcodes.TOOL_ERROR, examples=[
        "cantainer run --host h1 -n 10.0.0.0/24 --name web -d sleep 3600   # prints \"web 10.0.0.2\"",
        "cantainer run -n 10.0.0.0/24 -d --memory 256m sleep 3600         # placed: prints name, IP and host",
        "cantainer run -n 10.0.0.0/24 -d --constraint label.zone==a sleep 3600",
        "cantainer run --host h1 -n backend -p 8080:80 -d --image team/web:1.4   # h1:8080 reaches its port 80",
        "cantainer run --host h2 -n 10.0.0.0/24 sh -c 'echo hi; exit 3'   # streams output, exits 3",
        "cantainer run -it --rm --host h1 -n 10.0.0.0/24 sh                # a shell; removed on exit",
        "cantainer run -d --restart on-failure:5 --host h1 -n 10.0.0.0/24 -- ./job",
        "cantainer run -d --health-cmd 'wget -qO- localhost' -n 10.0.0.0/24 --image app:1",
        "cantainer run --host h1 -n 10.0.0.0/24 -v data:/data -d sleep 1d  # volume data, made on first use",
        "cantainer run -n 10.0.0.0/24 -v data:/data -v /srv/conf:/etc/app:ro sh  # placed on data's host",
    ], description="Start a container. With --host it runs there; without, the cluster places it: a host that is\n"
                   "up, meets every --constraint, holds its -v volumes that exist, has the image and room for\n"
                   "--memory/--cpus, with the fewest containers. Everything after the options is the command, as\n"
                   "with docker run (it replaces the image's Cmd; without one the image's Entrypoint + Cmd run);\n"
                   "exits with the command's code (125: cantainer failed, 126: the command cannot be executed,\n"
                   "127: it was not found).")
    run.add_argument("--host", help="inventory host to run on (default: the cluster places it)")
    # required, but checked in cmd_run: a mistyped option must be named before a "missing" one
    run.add_argument("-n", "--network", metavar="NETWORK",
                     help="network name or CIDR (a CIDR is created on first use) (required)")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="[HOSTIP:]HOSTPORT:PORT[/PROTO]",
                     help="publish a container port on the host's address (tcp or udp; repeatable)")
    run.add_argument("--name", help="unique container name (default: generated)")
    run.add_argument("--image", default="alpine",
                     help="alpine, an [images.NAME], NAME:TAG (image load/pull) or HOST[:PORT]/REPO[:TAG|@DIGEST]")
    run.add_argument("-d", "--detach", action="store_true", help="print name and IP and return")
    run.add_argument("--rm", action="store_true", help="remove the container once it has exited")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    run.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    run.add_argument("-w", "--workdir", help="working directory inside the container (default: the image's, or /)")
    run.add_argument("--user", "-u", help="NAME|UID[:GROUP|GID] to run as (default: the image's User, or root)")
    run.add_argument("--entrypoint", help="replace the image's Entrypoint (and drop its Cmd); '' clears it")
    runopts.add_limits(run)
    run.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                     help="add a Linux capability, e.g. NET_RAW (ALL: every one)")
    run.add_argument("--cap-drop", action="append", default=[], metavar="CAP", help="drop a Linux capability")
    run.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                     help="seccomp=unconfined: no seccomp filter (no-new-privileges is always on)")
    runopts.add_placement(run)
    runopts.add_restart_and_health(run, "no")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:/PATH[:ro]",
                     help="NAME:/path mounts the named volume NAME (created on first use, on the container's host); "
                          "/host/path:/path binds a host path (not cantainer's own, /proc, /sys or /dev); nosuid,nodev")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                     help="the command and its arguments (default: the image's)")
    execute = commands.add("exec", "run a command in a running container", cmd_exec, inventory_flags=LONG_INVENTORY,
                           tool_error=exitcodes.TOOL_ERROR, examples=[
        "cantainer exec web cat /etc/hostname",
        "cantainer exec -it web sh                                          # interactive terminal",
        "cantainer exec web -- ping -c1 10.0.0.2                            # -- is accepted too",
    ], description="Run a command in a running container; everything after NAME is the command. Exits with\n"
                   "its code (125: cantainer failed, 126: not executable, 127: not found).")
    execute.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    execute.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    execute.add_argument("name", metavar="NAME", help="container name or id")
    execute.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                         help="the command and its arguments")
    logs = commands.add("logs", "print a container's output", cmd_logs, examples=[
        "cantainer logs web                      # its stdout to stdout, its stderr to stderr",
        "cantainer logs -f --tail 20 web         # the last 20 lines, then follow until it exits",
        "cantainer logs --since 10m -t web       # the last ten minutes, each line with its time",
        "cantainer logs --stderr web             # only what it wrote to stderr",
    ])
    logs.add_argument("name", metavar="NAME", help="container name or id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following until the container exits")
    logs.add_argument("-n", "--tail", metavar="N", help="only the last N lines (default: all)")
    logs.add_argument("--since", metavar="WHEN",
                      help="only output since WHEN: a duration back from now (90s, 10m, 2h) or a time (RFC 3339)")
    logs.add_argument("-t", "--timestamps", action="store_true", help="start each line with its time (RFC 3339)")
    logs.add_argument("--stdout", action="store_true", help="only the container's stdout")
    logs.add_argument("--stderr", action="store_true", help="only the container's stderr")
    stop = commands.add("stop", "stop containers (SIGTERM, then SIGKILL)", cmd_stop, examples=[
        "cantainer stop web", "cantainer stop --time 2 web db"])
    stop.add_argument("names", nargs="+", metavar="NAME", help="container name or id")
    stop.add_argument("--time", type=finite_float, default=10.0, help="seconds before SIGKILL (default 10)")
    rm = commands.add("rm", "remove stopped containers and release their addresses", cmd_rm, examples=[
        "cantainer rm web db",
        "cantainer rm -f web                     # stop it first if it runs",
        "cantainer rm -f $(cantainer ps -aq)     # everything",
        "cantainer rm -f web                     # its host is down: removed from the cluster now, and from",
        "                                        # the host when it returns (it never runs again)",
    ])
    rm.add_argument("names", nargs="+", metavar="NAME", help="container name or id")
    rm.add_argument("-f", "--force", action="store_true",
                    help="stop it first if it runs; if its host is down, remove it from the cluster now")
    ps = commands.add("ps", "list containers", cmd_ps, examples=[
        "cantainer ps                            # running ones (and unknown: their host is down)",
        "cantainer ps -a                         # exited and dead ones too, with exit code and reason",
        "cantainer ps -aq                        # names only",
        "cantainer ps -a --json                  # times in RFC 3339",
    ])
    ps.add_argument("-a", "--all", action="store_true", help="include exited containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="only names")
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.add_argument("--stale", action="store_true", help=STALE_HELP)


def command_of(args: argparse.Namespace) -> list[str]:
    """The container command: everything after the options (a leading `--` is dropped)."""
    command = list(args.command)
    return command[1:] if command[:1] == ["--"] else command


PS_HEADER = ["NAME", "ID", "HOST", "NETWORK", "IP", "STATE", "RESTARTS", "SERVICE", "CREATED", "IMAGE", "PORTS",
             "COMMAND"]


def ps_rows(containers: list[dict], now: float | None = None) -> list[list[str]]:
    return [[c["name"], c["id"], c["host"], c.get("network_name") or c["network"], c["ip"], output.state_text(c, now),
             str(c.get("restart_count", 0)), c.get("service") or "-", output.age(c["created_at"], now), c["image"],
             output.ports_text(c), " ".join(c["command"])] for c in containers]


def cmd_ps(args: argparse.Namespace) -> int:
    containers = cluster_call(args, "container.ps", consistency(args))
    if not args.all:
        containers = [c for c in containers if c["state"] not in ("exited", "dead")]
    if args.json:
        output.print_json(containers)
    elif args.quiet:
        for container in containers:
            print(container["name"])
    else:
        output.print_table(PS_HEADER, ps_rows(containers), shrink=("COMMAND",))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cantainer import containers

    if not args.network:
        raise UsageError("the following arguments are required: -n/--network", "see `cantainer run --help`")
    if (args.interactive or args.tty) and args.detach:
        raise UsageError(
            "-d cannot be combined with -i/-t", "use `cantainer exec -it NAME -- sh` on a detached container"
        )
    if args.tty and not containers.stdin_is_tty():
        raise UsageError("-t needs a terminal on stdin and stdout", "drop -t when piping")
    if not args.network:
        raise UsageError("the following arguments are required: -n/--network", "see `cantainer run --help`")
    env = containers.parse_env(args.env)
    publish = containers.parse_publish(args.publish)
    if args.tty:  # a terminal needs its type, as docker run -t sets it
        env.setdefault("TERM", os.environ.get("TERM") or "xterm")
    limits = runopts.limits_of(args)
    constraints = runopts.constraints_of(args)
    if constraints and args.host:
        raise UsageError("--constraint places a container; --host names its host", "give one of them")
    restart = runopts.restart_of(args)
    if restart and restart != "no" and args.rm:
        raise UsageError("--rm and --restart contradict each other", "a container removed when it exits cannot "
                                                                     "be restarted: give one of them")
    mounts = containers.parse_mounts(args.volume)
    request = containers.RunRequest(
        host=args.host, network=args.network, mounts=mounts, image=args.image, name=args.name,
        command=command_of(args) or None, env=env, workdir=args.workdir,
        entrypoint=args.entrypoint, user=args.user,
        memory=limits.get("memory"), cpus=limits.get("cpus"), pids=limits.get("pids"),
        auto_remove=args.rm, publish=publish, restart=restart, health=runopts.health_of(args),
        constraints=constraints or [],
        **containers.parse_security(args.cap_add, args.cap_drop, args.security_opt),
    )
    if request.workdir is not None and not request.workdir.startswith("/"):
        raise UsageError(f"-w {request.workdir!r} is not an absolute path", "write it like -w /app")
    return run_async(containers.run(load(args), request, args.detach, args.interactive, args.tty))


def cmd_exec(args: argparse.Namespace) -> int:
    from cantainer import containers

    command = command_of(args)
    if not command:
        raise UsageError("no command given", "name it after the container, e.g. cantainer exec web cat /etc/hostname")
    if args.tty and not containers.stdin_is_tty():
        raise UsageError("-t needs a terminal on stdin and stdout", "drop -t when piping")
    return run_async(containers.exec_in(load(args), args.name, command, args.interactive, args.tty))


def logs_request(args: argparse.Namespace):
    from cantainer.containers import LogsRequest

    tail = None
    if args.tail is not None and args.tail != "all":
        if not args.tail.isdigit():
            raise UsageError(f"--tail {args.tail!r} is not a number of lines", "give a count like --tail 20, or all")
        tail = int(args.tail)
    since = ""
    if args.since:
        try:
            since = output.rfc3339(output.parse_since(args.since))
        except ValueError as error:
            raise UsageError(f"--since {error}", "give a duration like 10m or 1h30m, or a time like "
                                                 "2024-05-01T12:00:00Z") from None
    streams = tuple(stream for stream in ("stdout", "stderr") if getattr(args, stream))
    return LogsRequest(follow=args.follow, tail=tail, since=since, timestamps=args.timestamps, streams=streams)


def cmd_logs(args: argparse.Namespace) -> int:
    from cantainer import containers

    request = logs_request(args)
    run_async(containers.logs(load(args), args.name, request))
    return 0


def report(results, done) -> int:
    """One line per container: what happened (stdout) or its error (stderr). The exit code is the
    failures' own when they agree (3 for names that do not exist), 1 when they differ, 0 with none."""
    codes = set()
    for name, outcome in results:
        if isinstance(outcome, CantainerError):
            print(f"cantainer: error: {outcome}", file=sys.stderr)
            codes.add(outcome.exit_code)
        else:
            print(done(name, outcome))
    if not codes:
        return exitcodes.OK
    return codes.pop() if len(codes) == 1 else exitcodes.ERROR


def cmd_stop(args: argparse.Namespace) -> int:
    from cantainer import containers

    if not 0 <= args.time <= 3600:
        raise UsageError(f"--time {args.time:g} is out of range", "give the seconds before SIGKILL, from 0 to 3600")
    results = run_async(containers.stop(load(args), args.names, args.time))

    def done(name: str, result: dict) -> str:
        code = result.get("exit_code")
        return f"{name} {result.get('state', 'stopped')}{f' ({code})' if code is not None else ''}"

    return report(results, done)


def cmd_rm(args: argparse.Namespace) -> int:
    from cantainer import containers

    results = run_async(containers.remove(load(args), args.names, args.force))

    def done(name: str, result: dict) -> str:
        host = result.get("leftover_on")
        return f"removed {name}" + (f" (its host {host} is down: {host} removes it when it returns)" if host else "")

    return report(results, done)
