"""What `up` shows while it works (a live line per host) and after (a summary table)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cantainer.inventory import Inventory

PHASE_STYLE = {"ready": "green", "failed": "red"}


class UpProgress:
    def __init__(self, inventory: Inventory, console: Console | None = None, clock=time.monotonic) -> None:
        self.inventory = inventory
        self.console = console or Console()
        self.phases = {host.name: ("waiting", "") for host in inventory.hosts}
        self.clock = clock
        self.started = clock()
        # get_renderable: every refresh (8 a second) builds the table anew, so the timer keeps
        # running while a long phase (start, join) reports nothing.
        self._live = Live(console=self.console, transient=True, refresh_per_second=8, get_renderable=self._table)

    def __enter__(self) -> "UpProgress":
        if self.console.is_terminal:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.console.is_terminal:
            self._live.__exit__(*exc)

    def report(self, host: str, phase: str, detail: str) -> None:
        self.phases[host] = (phase, detail)
        if self.console.is_terminal:
            self._live.refresh()

    def _table(self) -> Table:
        table = Table(title=f"cantainer up — {self.inventory.cluster.name} ({self.clock() - self.started:.1f}s)")
        table.add_column("host")
        table.add_column("phase")
        table.add_column("detail")
        for host, (phase, detail) in self.phases.items():
            table.add_row(host, f"[{PHASE_STYLE.get(phase, 'yellow')}]{phase}[/]", detail)
        return table

    def summary(self, result) -> None:
        table = Table(
            title=f"cluster {self.inventory.cluster.name}: leader {result.leader or '—'} ({result.seconds:.2f}s)"
        )
        for column in ("host", "address", "python", "agent", "pid", "role", "result"):
            table.add_column(column)
        for host in self.inventory.hosts:
            outcome = result.outcomes.get(host.name)
            error = result.errors.get(host.name)
            if outcome and outcome.probe:
                python = ".".join(map(str, outcome.probe.python))
                agent = f"{outcome.bundle.short[:12]}{' (pushed)' if outcome.pushed else ''}"
            else:
                python = agent = "-"
            verdict = "[red]failed[/]" if error else f"[green]{outcome.action}[/]"
            table.add_row(host.name, host.address, python, agent, str(outcome.pid or "-") if outcome else "-",
                          (outcome.role or "-") if outcome else "-", verdict)
        self.console.print(table)
        for error in result.errors.values():
            self.console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        ok = len(self.inventory.hosts) - len(result.errors)
        self.console.print(
            f"{ok}/{len(self.inventory.hosts)} hosts ready"
            + ("" if not result.errors else f", {len(result.errors)} failed")
        )
