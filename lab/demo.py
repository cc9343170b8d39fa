"""`sudo make demo`: a 3-host lab, `cantainer up`, Alpine containers on two hosts pinging each other
over the VXLAN overlay, `cantainer status`, then a clean teardown.

Each step is the real command a user would type, printed before it runs. Set DEMO_KEEP=1 to keep
the lab and cluster running afterwards for exploring by hand.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from lab.lab import Lab, LabError

console = Console()
BIN = Path(sys.executable).parent


def step(title: str, argv: list[str], inventory: str | None = None) -> None:
    shown = [Path(argv[0]).name if argv[0].startswith(str(BIN)) else argv[0], *argv[1:]]
    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ {shlex.join(shown)}[/]")
    env = {**os.environ, **({"CANTAINER_INVENTORY": inventory} if inventory else {})}
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, env=env)
    if result.returncode != 0:
        raise LabError(f"`{shlex.join(shown)}` exited with {result.returncode}")


def main() -> int:
    lab = Lab("demo")
    keep = os.environ.get("DEMO_KEEP") == "1"
    cantainer = str(BIN / "cantainer")
    try:
        with console.status("creating 3 lab hosts (namespaces + sshd each)…"):
            inventory = str(lab.up(3))
        console.print(f"[green]lab up[/] — 3 hosts, inventory at {inventory}")
        step("push and start the agents, form the raft cluster", [cantainer, "up", inventory])
        step("re-run: nothing to do, nothing touched", [cantainer, "up", inventory])
        step("an Alpine container on h1 …", [cantainer, "run", "--host", "h1", "-n", "10.0.0.0/24", "--name", "web",
                                              "-d", "--", "sleep", "3600"], inventory)
        step("… and one on h2, same network", [cantainer, "run", "--host", "h2", "-n", "10.0.0.0/24", "--name", "db",
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
            "web on h1 pings db on h2 over the VXLAN overlay",
            [cantainer, "exec", "web", "--", "ping", "-c", "3", "10.0.0.2"],
            inventory,
        )
        step("the cluster as the agents see it", [cantainer, "status", "-i", inventory])
    except LabError as error:
        console.print(f"[red]demo failed:[/] {error}")
        keep = False
        return 1
    finally:
        if keep:
            console.print(f"\nkept running. Try: [bold]{cantainer} status --watch -i {inventory}[/]\n"
                          f"remove with: [bold]{sys.executable} -m lab down --name demo[/]")
        else:
            lab.down()
            console.print("[green]lab down[/] — every namespace, link, mount and process removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
