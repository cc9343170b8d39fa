"""Stack commands: `apply FILE` (`--check`, or `plan FILE`), `rm-stack NAME`, `stack ls`."""
from __future__ import annotations

import argparse
import sys

from cantainer.cli import exitcodes, output
from cantainer.cli.common import consistency, load, run_async
from cantainer.cli.parser import STALE_HELP, Commands

CHANGES_PENDING = 2  # apply --check / plan: terraform plan -detailed-exitcode's "changes present"
CHECK_HELP = "only show what would change; exit 0 (nothing to do) or 2 (changes pending); change nothing"
PRUNE_HELP = "also remove what the stack made that the file no longer has (volumes only with --volumes)"


def register(commands: Commands) -> None:
    apply = commands.add("apply", "bring a stack file's application up, or change it to match the file", cmd_apply,
                         tool_error=exitcodes.ERROR, examples=[
        "cantainer apply --check stack.toml      # the plan: + create, ~ update, - remove, = unchanged",
        "cantainer apply stack.toml              # apply it; a second apply changes nothing",
        "cantainer apply --prune stack.toml      # also remove what the file no longer has",
        "cantainer apply stack.toml --json       # the changes and their results as JSON",
    ], description="Apply a stack file (TOML; see stack.example.toml): networks and volumes first, then services\n"
                   "(updated rolling) and containers; removals last, only with --prune. The plan is shown\n"
                   "first; every object is named after the stack (STACK-NAME, volumes STACK_NAME). Exits 0\n"
                   "when it applied, 1 on any error; with --check 0 (no changes) or 2 (changes pending).")
    _file_options(apply)
    apply.add_argument("--check", action="store_true", help=CHECK_HELP)
    apply.add_argument("-d", "--detach", action="store_true",
                       help="do not wait for services to converge after creating or updating them")
    plan = commands.add("plan", "show what `apply` would change (apply --check)", cmd_plan,
                        tool_error=exitcodes.ERROR, examples=[
        "cantainer plan stack.toml               # exit 0: nothing to do, 2: changes pending",
        "cantainer plan stack.toml --json",
    ], description="Show what `apply FILE` would change, and change nothing (the same as apply --check): exit\n"
                   "0 when there is nothing to do, 2 when changes are pending, 1 on any error.")
    _file_options(plan)
    rm_stack = commands.add("rm-stack", "remove a stack's services, containers and networks", cmd_rm_stack,
                            tool_error=exitcodes.ERROR, examples=[
        "cantainer rm-stack shop                 # its volumes stay",
        "cantainer rm-stack shop --volumes       # its volumes and their data too",
        "cantainer rm-stack shop --check         # what it would remove",
    ], description="Remove everything stack NAME made (as `apply --prune` of an empty file): services,\n"
                   "containers, the networks it created; its volumes only with --volumes.")
    rm_stack.add_argument("name", metavar="NAME", help="the stack's name (name = … in its file)")
    rm_stack.add_argument("--volumes", action="store_true", help="also remove its volumes and delete their data")
    rm_stack.add_argument("--check", action="store_true", help=CHECK_HELP)
    rm_stack.add_argument("--json", action="store_true", help="print JSON")
    group = commands.group("stack", "stacks the cluster knows", examples=["cantainer stack ls"])
    ls = group.add("ls", "list stacks and what they own", cmd_ls, examples=[
        "cantainer stack ls", "cantainer stack ls -q", "cantainer stack ls --json"])
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--stale", action="store_true", help=STALE_HELP)


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the stack file (TOML)")
    parser.add_argument("--prune", action="store_true", help=PRUNE_HELP)
    parser.add_argument("--volumes", action="store_true", help="with --prune: volumes too (their data is deleted)")
    parser.add_argument("--json", action="store_true", help="print JSON")


HEADER = ["", "KIND", "NAME", "IN THE CLUSTER", "CHANGE"]


def change_text(change) -> str:
    what = {"create": "create", "adopt": "use", "record": "record", "scale": "scale", "update": "update",
            "replace": "replace", "remove": "remove", "retire": "remove", "forget": "forget", "first-use": "create",
            "none": ""}[change.op]
    if change.fields:
        what += f" ({', '.join(change.fields)})"
    if change.detail:
        what = f"{what}: {change.detail}" if what else change.detail
    return what or "-"


def rows(changes, results: dict | None = None) -> list[list[str]]:
    out = []
    for change in changes:
        row = [change.symbol, change.kind, change.name, change.target, change_text(change)]
        if results is not None:
            row.append(results.get(id(change), "—"))
        out.append(row)
    return out


def show(plan: dict, as_json: bool, results: dict | None = None) -> None:
    from cantainer.stacks.plan import pending

    if as_json:
        def document(change) -> dict:
            data = change.to_dict()
            if results is not None:
                data["result"] = results.get(id(change), "—")
            return data
        output.print_json({"stack": plan["stack"], "pending": pending(plan),
                           "changes": [document(c) for c in plan["changes"]],
                           "kept": [c.to_dict() for c in plan["kept"]]})
        return
    header = HEADER + (["RESULT"] if results is not None else [])
    listed = plan["changes"] + plan["kept"]
    if listed:
        output.print_table(header, rows(listed, results), shrink=("CHANGE", "RESULT"))
    def counted(change) -> bool:
        return results is None or not results.get(id(change), "").startswith(("failed", "not done"))

    counts = {action: sum(c.action == action and counted(c) for c in plan["changes"])
              for action in ("create", "update", "remove")}
    done = {"create": "created", "update": "updated", "remove": "removed"}
    summary = ", ".join(f"{n} {done[a]}" if results else f"{n} to {a}" for a, n in counts.items() if n) or "no changes"
    print(f"stack {plan['stack']}: {summary}" + (f"; {len(plan['kept'])} kept (not in the file)" if plan["kept"]
                                                 else ""))


def _planned(args: argparse.Namespace, stack: dict, prune: bool, volumes: bool):
    from cantainer.stacks import facts as facts_mod
    from cantainer.stacks.plan import plan
    from cantainer.status import open_status_source

    async def read():
        client, _ = await open_status_source(load(args))
        try:
            return await facts_mod.read(client)
        finally:
            client.close()
            client.connection.close()

    facts = run_async(read())
    return facts, plan(stack, facts, prune=prune, volumes=volumes)


def _stack_of(args: argparse.Namespace) -> dict:
    from cantainer.stacks.file import load_stack

    inventory = load(args)
    return load_stack(args.file, [host.name for host in inventory.hosts])


def cmd_plan(args: argparse.Namespace) -> int:
    from cantainer.stacks.plan import pending

    if args.volumes and not args.prune:
        raise _usage("--volumes only goes with --prune")
    _facts, planned = _planned(args, _stack_of(args), args.prune, args.volumes)
    show(planned, args.json)
    return CHANGES_PENDING if pending(planned) else exitcodes.OK


def cmd_apply(args: argparse.Namespace) -> int:
    if args.check:
        return cmd_plan(args)
    if args.volumes and not args.prune:
        raise _usage("--volumes only goes with --prune")
    return _apply(args, _stack_of(args), args.prune, args.volumes)


def _apply(args: argparse.Namespace, stack: dict, prune: bool, volumes: bool) -> int:
    from cantainer.stacks.apply import Applier
    from cantainer.stacks.plan import pending

    facts, planned = _planned(args, stack, prune, volumes)
    if not pending(planned) and not any(c.op in ("adopt", "forget") for c in planned["changes"]):
        show(planned, args.json, {})
        return exitcodes.OK
    if not args.json:
        show(planned, False)
        print("applying…", flush=True)
    applier = Applier(load(args), stack, facts, wait=not getattr(args, "detach", False))
    outcomes = run_async(applier.run(planned["changes"]))
    results = {id(o.change): o.result for o in outcomes}
    if not args.json:
        print()
    show(planned, args.json, results)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        print(f"cantainer: error: {failed[0].change.kind} {failed[0].change.target}: {failed[0].error}",
              file=sys.stderr)
        return exitcodes.ERROR
    return exitcodes.OK


def cmd_rm_stack(args: argparse.Namespace) -> int:
    from cantainer.stacks.file import check_document
    from cantainer.stacks.plan import pending
    from cantainer_agent.cluster.stacks import STACK_NAME_RE

    if not STACK_NAME_RE.match(args.name):
        raise _usage(f"stack name {args.name!r} is invalid", "see `cantainer stack ls`")
    empty = check_document({"name": args.name})
    facts, planned = _planned(args, empty, True, args.volumes)
    if args.name not in facts["stacks"]:
        from cantainer.stacks.plan import StackNotFound

        raise StackNotFound(f"no stack named {args.name!r}", "see `cantainer stack ls`")
    if args.check:
        show(planned, args.json)
        return CHANGES_PENDING if pending(planned) else exitcodes.OK
    return _apply(args, empty, True, args.volumes)


def cmd_ls(args: argparse.Namespace) -> int:
    from cantainer.cli.common import cluster_call

    stacks = cluster_call(args, "stack.ls", consistency(args))
    if args.json:
        output.print_json(stacks)
    elif args.quiet:
        for stack in stacks:
            print(stack["name"])
    else:
        def count(stack: dict, kind: str) -> str:
            return str(sum(1 for entry in stack["objects"].values() if entry["kind"] == kind))

        output.print_table(["NAME", "SERVICES", "CONTAINERS", "VOLUMES", "NETWORKS", "APPLIED"],
                           [[s["name"], count(s, "service"), count(s, "container"), count(s, "volume"),
                             count(s, "network"), output.age(s["updated_at"])] for s in stacks])
    return exitcodes.OK


def _usage(message: str, hint: str = ""):
    from cantainer.errors import UsageError

    return UsageError(message, hint)
