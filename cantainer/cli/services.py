"""Service commands: `service create|ls|ps|scale|update|rollback|rm`."""
from __future__ import annotations

import argparse

from cantainer.cli import exitcodes, output, runopts
from cantainer.cli.common import load, run_async
from cantainer.cli.parser import STALE_HELP, Commands, finite_float
from cantainer.errors import CantainerError, UsageError

WAIT_HELP = "return at once instead of waiting until the service has converged"


def register(commands: Commands) -> None:
    group = commands.group("service", "replicated containers the cluster places, restarts, heals and updates",
                           examples=[
        "cantainer service create web --replicas 3 -n 10.0.0.0/24 --image app:1 -p 8080:80",
        "cantainer service ls",
        "cantainer service ps web",
        "cantainer service scale web=5",
        "cantainer service update web --image app:2          # rolling, health-checked, rolls back on failure",
        "cantainer service rollback web",
        "cantainer service rm web",
    ], description="Services: N copies of a container (tasks named NAME.SLOT; global mode: NAME.HOST, one per\n"
                   "host), placed by the cluster, restarted by their hosts (default --restart always), moved\n"
                   "off a host that is down for [cluster] reschedule_after, updated a few at a time.")
    verbs = group
    create = verbs.add("create", "create a service and wait until its tasks run", cmd_create, examples=[
        "cantainer service create web --replicas 3 -n 10.0.0.0/24 --image app:1 -p 8080:80",
        "cantainer service create agent --mode global -n 10.0.0.0/24 -- sleep 1d",
        "cantainer service create db --replicas 2 -n 10.0.0.0/24 -v data:/var/lib/db --image db:1  # data.1, data.2",
        "cantainer service create api --replicas 2 -n 10.0.0.0/24 --health-cmd 'wget -qO- localhost/health' \\",
        "    --constraint label.zone==a --memory 128m --update-order stop-first -- ./api",
    ], description="Create a service and wait until its tasks run. The command, if any, follows -- (default:\n"
                   "the image's).")
    create.add_argument("name", metavar="NAME", help="service name (1-32 lowercase letters, digits, hyphens)")
    mode = create.add_mutually_exclusive_group()
    mode.add_argument("--replicas", type=int, default=None, metavar="N", help="number of tasks (default 1)")
    mode.add_argument("--mode", choices=("replicated", "global"), default="replicated",
                      help="replicated (default) or global: one task on every host that fits")
    create.add_argument("-n", "--network", required=True, metavar="NETWORK",
                        help="network name or CIDR (a CIDR is created on first use)")
    _task_options(create, update=False)
    create.dash_command = "command"

    ls = verbs.add("ls", "list services", cmd_ls, examples=["cantainer service ls", "cantainer service ls --json",
                                                            "cantainer service ls -q      # names only"])
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--stale", action="store_true", help=STALE_HELP)

    ps = verbs.add("ps", "list a service's tasks and its update's progress", cmd_ps, examples=[
        "cantainer service ps web", "cantainer service ps web --json   # also the addresses that serve"])
    ps.add_argument("name", metavar="NAME", help="service name")
    ps.add_argument("-q", "--quiet", action="store_true", help="only the tasks' names")
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.add_argument("--stale", action="store_true", help=STALE_HELP)

    scale = verbs.add("scale", "change the number of tasks", cmd_scale, examples=[
        "cantainer service scale web=5", "cantainer service scale web=0 api=2"])
    scale.add_argument("scales", nargs="+", metavar="NAME=N", help="a service and its number of tasks")
    scale.add_argument("-d", "--detach", action="store_true", help=WAIT_HELP)
    scale.add_argument("--timeout", type=finite_float, default=120.0, help="seconds to wait (default 120)")

    update = verbs.add("update", "change a service: a rolling update (start-first, health-checked)", cmd_update,
                       examples=[
        "cantainer service update web --image app:2",
        "cantainer service update web -e LOG=debug --update-parallelism 2",
        "cantainer service update web --force                # replace every task",
        "cantainer service update web                        # resume a paused update",
        "cantainer service update web -- sh -c 'exec ./app'  # a new command",
    ], description="Change a service. A changed task (image, command, options) is a new version, rolled out\n"
                   "--update-parallelism tasks at a time: each new task must run (and be healthy) for\n"
                   "--update-monitor before the next; one that fails rolls the service back (or pauses it).\n"
                   "Options given replace the service's; -e adds or overrides variables (--env-rm drops them);\n"
                   "a new command follows --.")
    update.add_argument("name", metavar="NAME", help="service name")
    update.add_argument("--replicas", type=int, metavar="N", help="number of tasks")
    update.add_argument("-n", "--network", metavar="NETWORK", help="move the tasks to another network (name or CIDR)")
    update.add_argument("--env-rm", action="append", default=[], metavar="KEY", help="drop an environment variable")
    update.add_argument("--force", action="store_true", help="replace every task even if nothing changed")
    _task_options(update, update=True)
    update.dash_command = "command"

    rollback = verbs.add("rollback", "go back to the previous version (rolling)", cmd_rollback, examples=[
        "cantainer service rollback web"])
    rollback.add_argument("name", metavar="NAME", help="service name")
    rollback.add_argument("-d", "--detach", action="store_true", help=WAIT_HELP)
    rollback.add_argument("--timeout", type=finite_float, default=300.0, help="seconds to wait (default 300)")

    rm = verbs.add("rm", "remove services (their tasks are stopped and removed)", cmd_rm, examples=[
        "cantainer service rm web", "cantainer service rm web api"])
    rm.add_argument("names", nargs="+", metavar="NAME", help="service name")


def _task_options(parser: argparse.ArgumentParser, update: bool) -> None:
    parser.add_argument("--image", default=None if update else "alpine",
                        help="alpine, an [images.NAME], NAME:TAG or HOST[:PORT]/REPO[:TAG|@DIGEST]"
                             + ("" if update else " (default alpine)"))
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    parser.add_argument("-w", "--workdir", help="working directory inside the container")
    parser.add_argument("--user", "-u", help="NAME|UID[:GROUP|GID] to run as")
    parser.add_argument("--entrypoint", help="replace the image's Entrypoint (and drop its Cmd); '' clears it")
    parser.add_argument("-v", "--volume", action="append", default=None, metavar="SRC:/PATH[:ro]",
                        help="NAME:/path gives each task its own volume NAME.SLOT (its tasks stay on its host); "
                             "/host/path:/path binds a host path"
                             + (" (replaces the service's mounts)" if update else ""))
    parser.add_argument("--volume-policy", choices=("stay", "move-empty"), metavar="POLICY",
                        help="a task whose host is lost: stay (default: it waits for its volume's host) or "
                             "move-empty (an empty volume is made again where the task moves)")
    parser.add_argument("-p", "--publish", action="append", default=None, metavar="HOST:CONTAINER[/udp]",
                        help="publish a port on every host running a task (repeatable)")
    runopts.add_limits(parser)
    runopts.add_placement(parser)
    runopts.add_restart_and_health(parser, "always")
    parser.add_argument("--update-parallelism", type=int, metavar="N", help="tasks replaced at a time (default 1; "
                                                                              "0: all)")
    parser.add_argument("--update-order", choices=("start-first", "stop-first"), metavar="ORDER",
                        help="start-first (default: the new task starts before the old stops) or stop-first")
    parser.add_argument("--update-monitor", metavar="DURATION",
                        help="how long a new task must run healthy before the next batch (default 5s)")
    parser.add_argument("--update-failure-action", choices=("rollback", "pause"), metavar="ACTION",
                        help="when a new task fails: rollback (default) or pause")
    parser.add_argument("--drain", metavar="DURATION",
                        help="a retiring task leaves the service's addresses this long before it is stopped "
                             "(default 2s)")
    if not update:
        parser.add_argument("-d", "--detach", action="store_true", help=WAIT_HELP)
        parser.add_argument("--timeout", type=finite_float, default=120.0, help="seconds to wait (default 120)")
    else:
        parser.add_argument("-d", "--detach", action="store_true", help=WAIT_HELP)
        parser.add_argument("--timeout", type=finite_float, default=300.0, help="seconds to wait (default 300)")


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command or [])
    return command[1:] if command[:1] == ["--"] else command


def _policy(args: argparse.Namespace) -> dict:
    from cantainer.timefmt import parse_duration

    policy: dict = {}
    if args.update_parallelism is not None:
        if args.update_parallelism < 0:
            raise UsageError(f"--update-parallelism {args.update_parallelism} must be 0 (all) or more")
        policy["parallelism"] = args.update_parallelism
    if args.update_order:
        policy["order"] = args.update_order
    if args.update_failure_action:
        policy["failure_action"] = args.update_failure_action
    if args.volume_policy:
        policy["volumes"] = args.volume_policy
    for key, flag in (("monitor", "update_monitor"), ("drain", "drain")):
        text = getattr(args, flag)
        if text is not None:
            try:
                policy[key] = parse_duration(text)
            except ValueError as error:
                raise UsageError(f"--{flag.replace('_', '-')} {error}") from None
    return policy


def _publish(args: argparse.Namespace) -> list[dict] | None:
    from cantainer.containers import parse_publish  # run -p's syntax and checks

    return None if args.publish is None else parse_publish(list(args.publish))


def _options(args: argparse.Namespace) -> dict:
    """The task options given (None: not given), as the agent API takes them."""
    from cantainer.containers import parse_env, parse_mounts

    if args.workdir is not None and not args.workdir.startswith("/"):
        raise UsageError(f"-w {args.workdir!r} is not an absolute path", "write it like -w /app")
    limits = runopts.limits_of(args)
    command = _command(args)
    mounts = None if args.volume is None else parse_mounts(args.volume)
    return {"command": command or None, "entrypoint": args.entrypoint, "env": parse_env(args.env) or None,
            "mounts": mounts,
            "workdir": args.workdir, "user": args.user, "limits": limits or None,
            "restart": runopts.restart_of(args), "health": runopts.health_of(args),
            "constraints": runopts.constraints_of(args), "publish": _publish(args)}


def _progress_line(doc: dict) -> str:
    service = doc["service"]
    update = service["update"]
    what = "rollback" if update["kind"] == "rollback" else "update"
    line = f"{service['name']}: {service['ready']}/{service['replicas']} tasks ready, version {service['version']}"
    if update["state"] == "updating":
        line += f"; {what} to v{update['to']} in progress ({update['updated']}/{update['total']} updated)"
    elif update["state"] == "paused":
        line += f"; {what} paused: {update['message']}"
    elif update.get("from") is not None:
        line += f"; {what} from v{update['from']} completed" + (f" ({update['message']})" if update["message"]
                                                                  and what == "rollback" else "")
    if service.get("note"):
        line += f"; {service['note']}"
    return line


def _wait(inventory, name: str, timeout: float) -> int:
    from cantainer import services

    doc = run_async(services.wait(inventory, name, timeout))
    print(_progress_line(doc))
    update = doc["service"]["update"]
    if update["state"] == "paused":
        hint = f"fix it and run `cantainer service update {name}`, or `cantainer service rollback {name}`"
        raise CantainerError(f"service {name}: {update['message']}", hint)
    if update["kind"] == "rollback" and update["message"] and "failed" in update["message"]:
        raise CantainerError(f"service {name}: {update['message']} to v{doc['service']['version']}",
                             f"see `cantainer service ps {name}`")
    return exitcodes.OK


def cmd_create(args: argparse.Namespace) -> int:
    from cantainer import services
    from cantainer_agent.cluster.specs import check_service_name
    from cantainer_agent.errors import StateError

    try:  # before any image is sent anywhere
        check_service_name(args.name)
    except StateError as error:
        raise UsageError(str(error)) from None
    options = _options(args)
    if args.mode == "global" and args.replicas is not None:
        raise UsageError("--replicas and --mode global contradict each other",
                         "a global service runs one task per host")
    replicas = 1 if args.replicas is None else args.replicas
    if replicas < 0:
        raise UsageError(f"--replicas {replicas} must be 0 or more")
    params = {"name": args.name, "mode": args.mode, "network": args.network,
              **({"replicas": replicas} if args.mode == "replicated" else {}),
              **{key: value for key, value in options.items() if value is not None}, "policy": _policy(args)}
    inventory = load(args)
    created = run_async(services.create(inventory, params, args.image))
    print(f"service {created['name']} created (version {created['version']})")
    return exitcodes.OK if args.detach else _wait(inventory, args.name, args.timeout)


LS_HEADER = ["NAME", "MODE", "REPLICAS", "IMAGE", "VERSION", "UPDATE", "PORTS", "NOTE"]


def cmd_ls(args: argparse.Namespace) -> int:
    from cantainer import services
    from cantainer.cli.common import consistency

    inventory = load(args)
    listing = run_async(services.cluster_read(inventory, "service.ls", consistency(args)))
    if args.json:
        output.print_json(listing)
        return exitcodes.OK
    if args.quiet:
        for service in listing:
            print(service["name"])
        return exitcodes.OK
    rows = []
    for service in listing:
        update = service["update"]
        state = update["state"] if update.get("from") is not None else "-"
        if update["state"] == "updating":
            state = f"{update['kind']} {update['updated']}/{update['total']}"
        ports = ",".join(f"{p['host_port']}->{p['container_port']}/{p['protocol']}" for p in service["publish"]) or "-"
        rows.append([service["name"], service["mode"], f"{service['ready']}/{service['replicas']}", service["image"],
                     str(service["version"]), state, ports, service.get("note") or "-"])
    output.print_table(LS_HEADER, rows, shrink=("NOTE",))
    return exitcodes.OK


PS_HEADER = ["TASK", "SLOT", "HOST", "IP", "STATE", "VERSION", "RESTARTS", "CREATED"]


def cmd_ps(args: argparse.Namespace) -> int:
    from cantainer import services
    from cantainer.cli.common import consistency

    inventory = load(args)
    doc = run_async(services.cluster_read(inventory, "service.ps", {"name": args.name, **consistency(args)}))
    if args.json:
        output.print_json(doc)
        return exitcodes.OK
    if args.quiet:
        for task in doc["tasks"]:
            print(task["name"])
        return exitcodes.OK
    print(_progress_line(doc))
    rows = [[t["name"], t["slot"], t["host"], t["ip"], output.state_text(t), f"v{t['version']}",
             str(t["restart_count"]), output.age(t["created_at"])] for t in doc["tasks"]]
    output.print_table(PS_HEADER, rows)
    return exitcodes.OK


def cmd_scale(args: argparse.Namespace) -> int:
    from cantainer import services

    wanted = []
    for item in args.scales:
        name, sep, count = item.partition("=")
        if not sep or not count.isdigit():
            raise UsageError(f"{item!r} is not NAME=N", "write it like web=3")
        wanted.append((name, int(count)))
    inventory = load(args)
    for name, count in wanted:
        run_async(services.cluster_write(inventory, "service.scale", {"name": name, "replicas": count}))
        print(f"service {name} scaled to {count}")
    if not args.detach:
        for name, _ in wanted:
            _wait(inventory, name, args.timeout)
    return exitcodes.OK


def cmd_update(args: argparse.Namespace) -> int:
    from cantainer import services

    options = _options(args)
    if args.replicas is not None and args.replicas < 0:
        raise UsageError(f"--replicas {args.replicas} must be 0 or more")
    params = {"name": args.name, **{key: value for key, value in options.items() if value is not None},
              "force": args.force, **({"env_rm": args.env_rm} if args.env_rm else {}),
              **({"network": args.network} if args.network else {}),
              **({"replicas": args.replicas} if args.replicas is not None else {})}
    policy = _policy(args)
    if policy:
        params["policy"] = policy
    inventory = load(args)
    updated = run_async(services.update(inventory, params, args.image))
    update = updated["update"]
    if update["state"] == "updating":
        print(f"service {args.name}: update to version {updated['version']} started")
    else:
        print(f"service {args.name}: nothing to roll out (version {updated['version']})")
    return exitcodes.OK if args.detach else _wait(inventory, args.name, args.timeout)


def cmd_rollback(args: argparse.Namespace) -> int:
    from cantainer import services

    inventory = load(args)
    done = run_async(services.cluster_write(inventory, "service.rollback", {"name": args.name}))
    print(f"service {args.name}: rolling back to version {done['version']}")
    return exitcodes.OK if args.detach else _wait(inventory, args.name, args.timeout)


def cmd_rm(args: argparse.Namespace) -> int:
    from cantainer import services
    from cantainer.cli.containers import report

    inventory = load(args)
    results = []
    for name in args.names:
        try:
            results.append((name, run_async(services.cluster_write(inventory, "service.rm", {"name": name}))))
        except CantainerError as error:
            results.append((name, error))

    def done(name: str, removed: dict) -> str:
        return f"removed service {name} ({removed['tasks']} task{'s' if removed['tasks'] != 1 else ''} stopping)"

    return report(results, done)  # the failures' own exit code when they agree (3: no such service)
