"""The status view renders every status document `status --json` can produce, and never cuts
names, addresses or CIDRs: shrinkable columns give way, narrow terminals get rows as blocks, piped
output is not width-limited."""
from __future__ import annotations

import pytest

from cantainer.status_view import render_status

NOW = 1_700_000_000.0
LONG_COMMAND = ["python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", "/srv/www/static", "8080"]


def render(doc: dict, width: int | None = 160) -> str:
    return "\n".join(render_status(doc, width, now=NOW))


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


def big_doc() -> dict:
    document = doc()
    document["nodes"][0].update(name="storage-node-eu-west-1", address="198.19.160.200", bundle="f" * 64)
    document["networks"] = [{"cidr": "172.31.240.0/20", "vni": 4100, "hosts": ["storage-node-eu-west-1"],
                             "containers": 12}]
    document["containers"] = [{"name": "frontend-web-production-1", "host": "storage-node-eu-west-1",
                               "network": "172.31.240.0/20", "ip": "172.31.255.254", "state": "running",
                               "command": LONG_COMMAND}]
    return document


KEYS = ("storage-node-eu-west-1", "198.19.160.200", "172.31.240.0/20", "frontend-web-production-1", "172.31.255.254")


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


@pytest.mark.parametrize("width", [80, 100, 120])
def test_a_terminal_never_cuts_names_addresses_or_cidrs(width):
    text = render(big_doc(), width)
    for key in KEYS:
        assert key in text, (key, text)
    assert max(len(line) for line in text.splitlines()) <= width


def test_shrinkable_columns_give_way_first():
    text = render(big_doc(), 120)
    assert "f" * 64 not in text and " ".join(LONG_COMMAND) not in text  # bundle, command: ellipsised
    assert "…" in text


def test_a_narrow_terminal_wraps_rows_into_blocks_without_cutting():
    text = render(big_doc(), 40)
    for key in KEYS:
        assert key in text, (key, text)
    assert "ADDRESS 198.19.160.200" in text and "IP 172.31.255.254" in text


def test_piped_output_is_not_width_limited():
    text = render(big_doc(), None)
    assert " ".join(LONG_COMMAND) in text and "f" * 64 in text
    assert max(len(line) for line in text.splitlines()) > 80


def test_a_container_of_a_down_host_shows_unknown_with_the_time_since():
    document = doc()
    document["containers"][0].update(state="unknown", reason="host h1 is down", unknown_since=NOW - 17)
    assert "unknown (host h1 down 17s)" in render(document)


def test_a_thousand_containers_render():
    document = doc()
    document["containers"] = [{"name": f"c-{i:04d}", "host": f"h{i % 30}", "network": "10.0.0.0/16",
                               "ip": f"10.0.{i // 250}.{i % 250 + 1}", "state": "running", "command": ["sleep", "1"]}
                              for i in range(1000)]
    lines = render_status(document, 120, now=NOW)
    assert sum(line.startswith("c-") for line in lines) == 1000


def test_volumes_are_shown_with_their_host_and_containers_only_when_there_are_some():
    assert "VOLUMES" not in render(doc())  # a cluster without volumes: no empty table
    document = doc()
    document["volumes"] = [{"name": "shop_db", "host": "h2", "host_down": True, "containers": ["shop-db"]},
                           {"name": "logs", "host": "h1", "host_down": False, "containers": []}]
    text = render(document)
    assert "VOLUMES" in text and "h2 (down)" in text and "shop-db" in text
    assert [line.split() for line in text.splitlines() if line.startswith("logs")] == [["logs", "h1", "-"]]


def test_the_status_document_keeps_the_clusters_volumes():
    from pathlib import Path

    from cantainer.inventory import parse_inventory
    from cantainer.status import merge_inventory

    inventory = parse_inventory('[cluster]\nname = "lab"\n[[hosts]]\nname = "h1"\naddress = "10.0.0.1"\n',
                                Path("inv.toml"))
    volumes = [{"name": "logs", "host": "h1", "host_down": False, "containers": ["web"]}]
    merged = merge_inventory({**doc(), "volumes": volumes}, inventory)
    assert merged["volumes"] == volumes and "VOLUMES" in "\n".join(render_status(merged, 160, now=NOW))
