"""`sudo make demo`: a 3-host lab, `cantainer up`, a named network, Alpine containers (busybox ones
when no source has the pinned Alpine) on two hosts
pinging each other by name over the VXLAN overlay, `cantainer status`, then a stack — one file,
planned and applied, applied again without a change — whose 3-replica service keeps its 3 tasks
through a host crash and whose other service keeps its data in a volume; then a clean teardown.

Each step is the real command a user would type, printed before it runs. Set DEMO_KEEP=1 to keep
the lab and cluster running afterwards for exploring by hand, DEMO_LAB=NAME to use another lab name
than "demo" (a demo already running, or a test lab, keeps its own).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from lab.lab import Lab, LabError

console = Console()
BIN = Path(sys.executable).parent
LAB_NAME = os.environ.get("DEMO_LAB", "demo")  # another name runs the demo beside a lab of that name
RESCHEDULE_AFTER = 10  # seconds (the default is 30): how long a host may be down before its tasks move


STACK = """\
name = "demo"

[networks.front]
subnet = "10.0.0.0/24"             # the network web and db run on: it exists, so the stack uses it

[volumes.notes]                    # one per slot of the service that mounts it: demo_notes.1

[services.hello]
replicas = 3
command = "sleep 3600"

[services.notes]
command = ["sh", "-c", "echo \\"written by $(hostname)\\" >> /data/log; exec sleep 3600"]
volumes = ["notes:/data"]
"""


def step(title: str, argv: list[str], inventory: str | None = None, codes: tuple[int, ...] = (0,)) -> None:
    shown = [Path(argv[0]).name if argv[0].startswith(str(BIN)) else argv[0], *argv[1:]]
    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ {shlex.join(shown)}[/]")
    env = {**os.environ, **({"CANTAINER_INVENTORY": inventory} if inventory else {})}
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, env=env)
    if result.returncode not in codes:
        raise LabError(f"`{shlex.join(shown)}` exited with {result.returncode}")


def main() -> int:
    lab = Lab(LAB_NAME)
    keep = os.environ.get("DEMO_KEEP") == "1"
    cantainer = str(BIN / "cantainer")
    try:
        with console.status("creating 3 lab hosts (namespaces + sshd each)…"):
            inventory = str(lab.up(3))
        text = Path(inventory).read_text()
        setting = f"[cluster]\nreschedule_after = {RESCHEDULE_AFTER}\n"
        Path(inventory).write_text(text.replace("[cluster]\n", setting, 1))
        console.print(f"[green]lab up[/] — 3 hosts, inventory at {inventory} ([cluster] reschedule_after = "
                      f"{RESCHEDULE_AFTER}: the demo waits less than the default 30 s)")
        step("push and start the agents, form the raft cluster", [cantainer, "up", inventory])
        step("re-run: nothing to do, nothing touched", [cantainer, "up", inventory])
        step("a network: one VXLAN segment, its gateway on every host", [cantainer, "network", "create",
                                                                        "10.0.0.0/24", "--name", "backend"], inventory)
        image = lab.base_image()  # the pinned Alpine, or the busybox rootfs when no source had it
        what = "an Alpine container" if image.kind == "alpine" else f"a {image.label} container (no Alpine here)"
        step(f"{what} on h1 …", [cantainer, "run", "--host", "h1", "-n", "backend", "--name", "web",
                                "-d", "--", "sleep", "3600"], inventory)
        step("… and one on h2, same network", [cantainer, "run", "--host", "h2", "-n", "backend", "--name", "db",
                                                "-d", "--", "sleep", "3600"], inventory)
        step(
            "inside web",
            [
                cantainer,
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                '. /etc/os-release; echo "$ID $VERSION_ID on $(hostname)"; ip -4 addr show eth0',
            ],
            inventory,
        )
        step(
            "web on h1 pings db on h2 by name (h1's agent answers DNS on the gateway) over the VXLAN overlay",
            [cantainer, "exec", "web", "--", "ping", "-c", "3", "db"],
            inventory,
        )
        step("the cluster as the agents see it", [cantainer, "status", "-i", inventory])
        stack = Path(inventory).parent / "stack.toml"
        stack.write_text(STACK)
        a_stack(cantainer, inventory, stack)
        service_survives_a_crash(lab, cantainer, inventory)
    except LabError as error:
        console.print(f"[red]demo failed:[/] {error}")
        keep = False
        return 1
    finally:
        if keep:
            console.print(f"\nkept running. Try: [bold]{cantainer} status --watch -i {inventory}[/]\n"
                          f"remove with: [bold]{sys.executable} -m lab down --name {LAB_NAME}[/]")
        else:
            lab.down()
            console.print("[green]lab down[/] — every namespace, link, mount and process removed")
    return 0


def a_stack(cantainer: str, inventory: str, stack: Path) -> None:
    console.rule(f"[bold]a stack: one file ({stack})")
    console.print(STACK, markup=False, highlight=False)
    step("the plan (exit 2: changes pending)", [cantainer, "plan", str(stack)], inventory, codes=(2,))
    step("apply: the network is used, the volume and the services made", [cantainer, "apply", str(stack)],
         inventory)
    step("apply again: nothing to do, nothing touched", [cantainer, "apply", str(stack)], inventory)
    step("the notes service wrote into its volume", [cantainer, "exec", "demo-notes.1", "cat", "/data/log"],
         inventory)
    step("the volume", [cantainer, "volume", "ls"], inventory)


def service_survives_a_crash(lab: Lab, cantainer: str, inventory: str) -> None:
    step("the service hello: 3 replicas, placed by the cluster", [cantainer, "service", "ps", "demo-hello"],
         inventory)
    step("h3 loses power", [sys.executable, "-m", "lab", "crash", "--name", LAB_NAME, "h3"])
    crashed = time.monotonic()
    with console.status(f"waiting: h3 is down after 6 s without a heartbeat, its task moves {RESCHEDULE_AFTER} s "
                        "later…"):
        while True:
            result = subprocess.run([cantainer, "service", "ps", "demo-hello", "--json", "-i", inventory],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL)
            tasks = json.loads(result.stdout)["tasks"] if result.returncode == 0 else []
            running = [t for t in tasks if t["state"] == "running" and t["host"] != "h3"]
            if len(running) == 3:
                break
            if time.monotonic() - crashed > 90:
                raise LabError("the service did not get its 3 tasks back within 90 s")
            time.sleep(1)
    hosts = ", ".join(sorted({t["host"] for t in running}))
    console.print(f"[green]demo-hello has its 3 tasks running again[/] on {hosts}, "
                  f"{time.monotonic() - crashed:.0f} s after h3 crashed")
    step("the tasks now", [cantainer, "service", "ps", "demo-hello"], inventory)
    step("h3 boots again …", [sys.executable, "-m", "lab", "boot", "--name", LAB_NAME, "h3"])
    step("… `up` starts its agent: its stale copy is removed, never started", [cantainer, "up", inventory])


if __name__ == "__main__":
    sys.exit(main())
