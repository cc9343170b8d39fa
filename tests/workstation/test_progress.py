"""`up`'s live view: the timer runs on while a phase reports nothing (it froze during `start`)."""
from __future__ import annotations

import io

from rich.console import Console

from cantainer.inventory import load_inventory
from cantainer.progress import UpProgress


def test_the_timer_keeps_running_between_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "inventory.toml"
    path.write_text('[cluster]\nname = "lab"\n[[hosts]]\nname = "h1"\naddress = "10.0.0.1"\n')
    now = [100.0]
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    progress = UpProgress(load_inventory(path), console, clock=lambda: now[0])
    progress.report("h1", "start", "")
    now[0] += 7.5  # nothing reported meanwhile: the agent is starting
    rendered = Console(file=io.StringIO(), width=100, color_system=None)
    rendered.print(progress._live.renderable)
    assert "(7.5s)" in rendered.file.getvalue() and "start" in rendered.file.getvalue()
