"""The rich status view renders every status document `status --json` can produce."""
from __future__ import annotations

import io

from rich.console import Console

from cantainer.status_view import render_status


def render(doc: dict) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(render_status(doc))
    return console.file.getvalue()


def doc(**nodes_extra) -> dict:
    return {
        "cluster": "lab", "leader": "h1", "term": 3, "commit_index": 40, "answered_by": "h1",
        "nodes": [
            {"name": "h1", "address": "10.0.0.1", "role": "leader", "state": "up", "version": "0.1.0",
             "bundle": "abcdef0123456789", "last_seen": None,
             "overlay": {"programmed": 4, "expected": 4, "pending": 0, "networks": 1}},
            # an inventory host that started but has not joined: `merge_inventory` lists it like this
            {"name": "h3", "address": "10.0.0.3", "role": "none", "state": "not-member"},
        ],
        "networks": [{"cidr": "10.0.0.0/24", "vni": 4096, "hosts": ["h1"], "containers": 1}],
        "containers": [{"name": "web", "host": "h1", "network": "10.0.0.0/24", "ip": "10.0.0.1",
                        "state": "running", "command": ["sleep", "3600"]}],
    }


def test_a_host_that_has_not_joined_renders_instead_of_crashing():
    text = render(doc())
    assert "not-member" in text and "none" in text


def test_values_are_shown_literally_not_as_markup():
    document = doc()
    document["nodes"][1]["role"] = "[bold]x[/]"  # whatever a host reports is text
    assert "[bold]x[/]" in render(document)


def test_overlay_health_shows_pending_changes():
    document = doc()
    document["nodes"][0]["overlay"] = {"programmed": 2, "expected": 4, "pending": 3, "networks": 1}
    assert "2/4 (3 pending)" in render(document)


def test_empty_cluster_says_so():
    document = doc()
    document["networks"], document["containers"] = [], []
    text = render(document)
    assert "no networks yet" in text and "no containers yet" in text
