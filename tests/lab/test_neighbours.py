"""Sizing the machine's neighbour table for the labs' hosts (lab/neighbours.py), on a stand-in
sysctl directory; tests/integration/test_lab_teardown.py checks the real one is left as found."""
from __future__ import annotations

import json

from lab import neighbours


def sysctl(tmp_path, thresh2: int = 512, thresh3: int = 1024):
    directory = tmp_path / "sysctl"
    directory.mkdir()
    (directory / "gc_thresh2").write_text(f"{thresh2}\n")
    (directory / "gc_thresh3").write_text(f"{thresh3}\n")
    return directory


def values(directory) -> tuple[int, int]:
    return int((directory / "gc_thresh2").read_text()), int((directory / "gc_thresh3").read_text())


def test_room_for_every_host_to_reach_every_other_and_the_workstation():
    assert neighbours.needed(100) == {"gc_thresh2": 10100, "gc_thresh3": 20200}
    assert neighbours.needed(3) == {"gc_thresh2": 12, "gc_thresh3": 24}


def test_small_labs_change_nothing(tmp_path):
    directory, record = sysctl(tmp_path), tmp_path / "record.json"
    assert neighbours.ensure(20, record, directory) is False  # 840 entries: the default 1024 holds them
    assert values(directory) == (512, 1024) and not record.exists()
    neighbours.settle(0, record, directory)  # nothing recorded: nothing to put back
    assert values(directory) == (512, 1024)


def test_large_labs_raise_the_limits_once_and_restore_the_machines_values(tmp_path):
    directory, record = sysctl(tmp_path), tmp_path / "record.json"
    assert neighbours.ensure(100, record, directory) is True
    assert values(directory) == (10100, 20200)
    assert json.loads(record.read_text()) == {"gc_thresh2": 512, "gc_thresh3": 1024}
    assert neighbours.ensure(120, record, directory) is True  # more hosts: higher still
    assert values(directory) == (14520, 29040)
    assert json.loads(record.read_text()) == {"gc_thresh2": 512, "gc_thresh3": 1024}  # the machine's, kept
    assert neighbours.ensure(50, record, directory) is False  # fewer: `up` never lowers them
    neighbours.settle(50, record, directory)  # a `down` leaves labs of 50 hosts: as low as they allow
    assert values(directory) == (2550, 5100) and record.exists()
    neighbours.settle(10, record, directory)  # 10 hosts left: the machine's own suffice
    assert values(directory) == (512, 1024) and not record.exists()


def test_a_machine_with_higher_limits_keeps_them(tmp_path):
    directory, record = sysctl(tmp_path, 50000, 100000), tmp_path / "record.json"
    assert neighbours.ensure(100, record, directory) is False
    assert values(directory) == (50000, 100000) and not record.exists()
