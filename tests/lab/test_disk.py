"""A lab's disk (lab/disk.py): an ext4 image, mounted shared, gone with `detach`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import disk
from tests.conftest import require_root


def loop_backing_files() -> set[str]:
    files = set()
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            files.add(entry.read_text().strip())
        except OSError:
            pass
    return files


def mountinfo_line(target: Path) -> str | None:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return next((line for line in mountinfo if line.split()[4] == str(target)), None)


@pytest.fixture
def lab_dir(tmp_path):
    require_root()
    directory = tmp_path / "lab"
    directory.mkdir()
    yield directory
    disk.detach(directory)


def test_attach_makes_a_shared_disk_without_journal_that_outlives_detach_and_attach(lab_dir):
    assert disk.attach(lab_dir) is True
    hosts = disk.mountpoint_of(lab_dir)
    line = mountinfo_line(hosts)
    assert line is not None and " shared:" in line and " - ext4 /dev/loop" in line
    device = line.split(" - ext4 ")[1].split()[0]  # /dev/loopN; a journal would run as jbd2/loopN-8
    journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
    assert not any(name.startswith(os.path.basename(device) + "-") for name in journals)  # fsync as before
    (hosts / "h1").mkdir()
    (hosts / "h1" / "state").write_text("kept")
    assert disk.attach(lab_dir) is True  # already mounted: nothing stacked on it
    assert sum(1 for line in open("/proc/self/mountinfo") if line.split()[4] == str(hosts)) == 1
    disk.detach(lab_dir)
    assert mountinfo_line(hosts) is None and not (hosts / "h1").exists()
    assert str(disk.image_of(lab_dir)) not in loop_backing_files()  # the loop device cleared itself
    assert disk.attach(lab_dir) is True  # the same image again, not a new file system
    assert (hosts / "h1" / "state").read_text() == "kept"


def test_detach_of_a_disk_that_is_not_mounted_does_nothing(lab_dir):
    disk.detach(lab_dir)
    assert not disk.image_of(lab_dir).exists()


def test_a_lab_from_before_disks_keeps_its_hosts_directory(lab_dir):
    (lab_dir / "hosts" / "h1").mkdir(parents=True)
    (lab_dir / "hosts" / "h1" / "console.log").write_text("old")
    assert disk.attach(lab_dir) is False
    assert mountinfo_line(lab_dir / "hosts") is None and not disk.image_of(lab_dir).exists()
    assert (lab_dir / "hosts" / "h1" / "console.log").read_text() == "old"


def test_without_loop_devices_hosts_is_a_plain_directory_and_says_so(lab_dir, monkeypatch):
    real_exists = os.path.exists
    monkeypatch.setattr(disk.os.path, "exists", lambda p: False if p == "/dev/loop-control" else real_exists(p))
    said = []
    assert disk.attach(lab_dir, report=said.append) is False
    assert len(said) == 1 and "no loop devices" in said[0]
    assert (lab_dir / "hosts").is_dir() and mountinfo_line(lab_dir / "hosts") is None
    assert not disk.image_of(lab_dir).exists()


def test_an_image_that_is_no_file_system_is_one_clear_error(lab_dir):
    disk.image_of(lab_dir).write_bytes(b"not ext4" * 1024)
    with pytest.raises(disk.DiskError, match="^mount failed: "):
        disk.attach(lab_dir)
    assert mountinfo_line(lab_dir / "hosts") is None
    assert str(disk.image_of(lab_dir)) not in loop_backing_files()
