"""DurableJournal: format, recovery from torn tails, lazy truncation, compaction, term file, hook."""

import gzip
import json
import logging
import os
import time

import pytest
from pysyncobj import SyncObjConf
from pysyncobj import pickle as psopickle
from pysyncobj.journal import FileJournal

from cantainer_agent.consensus.pysyncobj import journal as jmod
from cantainer_agent.consensus.pysyncobj.journal import (
    MAGIC,
    DurableJournal,
    JournalError,
    JournalSpec,
    install_journal_hook,
)


def paths(tmp_path):
    return str(tmp_path / "raft.journal"), str(tmp_path / "raft.term"), str(tmp_path / "raft.dump")


def open_journal(tmp_path):
    return DurableJournal(*paths(tmp_path))


def cmd(i: int) -> bytes:
    return b"\x00" + f"command-{i}".encode()


def fill(j, n, start=1, term=1):
    for i in range(start, start + n):
        j.add(cmd(i), i, term)


def write_dump(tmp_path, prev, last, state=None):
    """A snapshot in PySyncObj's format: gzip(pickle((data, last, prev, cluster)))."""
    with open(paths(tmp_path)[2], "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        psopickle.dump(([{}, {"state": state}], last, prev, set()), g)


def test_round_trip_and_term_file(tmp_path):
    j = open_journal(tmp_path)
    assert len(j) == 0 and j.getCurrentTerm() == 0 and j.getVotedForNodeId() is None and j.getRaftCommitIndex() == 1
    fill(j, 5)
    j.setCurrentTerm(3, "10.0.0.2:7480")
    j.setRaftCommitIndex(4)
    assert j.syncs >= 1 and not j.dirty  # the commit index covered unsynced entries
    j._destroy()
    again = open_journal(tmp_path)
    assert [again[i] for i in range(5)] == [(cmd(i), i, 1) for i in range(1, 6)]
    assert again[-1] == (cmd(5), 5, 1) and again[1:3] == [(cmd(2), 2, 1), (cmd(3), 3, 1)]
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) == (3, "10.0.0.2:7480", 4)
    meta = json.loads(open(paths(tmp_path)[1]).read())
    assert meta["term"] == 3 and meta["voted_for"] == "10.0.0.2:7480"
    assert os.stat(paths(tmp_path)[0]).st_mode & 0o777 == 0o600
    assert os.stat(paths(tmp_path)[1]).st_mode & 0o777 == 0o600
    again._destroy()


def test_term_and_vote_are_durable_at_once(tmp_path):
    j = open_journal(tmp_path)
    j.setCurrentTerm(7, "a:1")
    # no _destroy: a crash right now must not lose the vote
    assert json.loads(open(paths(tmp_path)[1]).read())["voted_for"] == "a:1"
    assert DurableJournal(*paths(tmp_path)).getCurrentTerm() == 7


def test_sync_policy(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 3)
    assert j.dirty
    n = j.syncs
    j.setRaftCommitIndex(1)  # index 1..3 not yet known durable -> sync
    assert j.syncs == n + 1 and not j.dirty
    j.sync()
    assert j.syncs == n + 1  # nothing to do
    fill(j, 1, start=4)
    j.setRaftCommitIndex(3)  # covered by the earlier sync: a follower's case, no extra fdatasync
    assert j.syncs == n + 1 and j.dirty
    j.setRaftCommitIndex(4)
    assert j.syncs == n + 2


def test_background_sync_covers_what_was_written_and_the_next_sync_has_nothing_left(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 3)
    n = j.syncs
    j.sync_soon()  # the leader after sending a round: fdatasync in another thread
    assert j._syncer is not None
    deadline = time.monotonic() + 10
    while j.dirty and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not j.dirty and j.syncs == n + 1
    j.setRaftCommitIndex(3)  # the commit finds the entries durable: no fdatasync of its own
    j.sync()
    assert j.syncs == n + 1
    j._destroy()
    assert not j._syncer.is_alive()


def test_a_truncation_waits_for_a_background_sync_and_is_never_counted_durable(tmp_path, monkeypatch):
    """A background fdatasync read the head (entries 1..5) before a conflict cut the log at 3 and
    new entries 4'..5' were written: 4' and 5' must not count as durable because of it."""
    import threading

    j = open_journal(tmp_path)
    fill(j, 5)
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd):
        entered.set()
        assert release.wait(10)
        real(fd)

    monkeypatch.setattr(jmod, "os", type("SlowOs", (), {"__getattr__": lambda self, n: getattr(os, n),
                                                         "fdatasync": staticmethod(slow_fdatasync)})())
    j.sync_soon()
    assert entered.wait(10)
    cut = threading.Thread(target=lambda: (j.deleteEntriesFrom(3), j.add(cmd(40), 4, 2), j.add(cmd(50), 5, 2)))
    cut.start()
    cut.join(0.2)
    assert cut.is_alive()  # the truncation waits for the fdatasync in flight
    release.set()
    cut.join(10)
    assert j._durable_idx <= 3 and j.dirty  # 4' and 5' are not durable yet ...
    monkeypatch.setattr(jmod, "os", os)
    j.setRaftCommitIndex(5)  # ... so the commit syncs them itself
    assert not j.dirty and j._durable_idx == 5
    j._destroy()
    again = open_journal(tmp_path)
    assert [again[i] for i in range(5)][3:] == [(cmd(40), 4, 2), (cmd(50), 5, 2)]
    again._destroy()


@pytest.mark.parametrize("garbage", [b"\x05", b"\x10\x00\x00\x00" + b"\x01" * 10, b"\xff" * 40])
def test_torn_tail_is_dropped(tmp_path, garbage, caplog):
    j = open_journal(tmp_path)
    fill(j, 4)
    j._destroy()
    with open(paths(tmp_path)[0], "ab") as f:
        f.write(garbage)
    with caplog.at_level(logging.WARNING):
        again = open_journal(tmp_path)
    assert len(again) == 4 and again[-1][1] == 4
    assert "torn" in caplog.text
    fill(again, 1, start=5)
    again._destroy()
    assert len(open_journal(tmp_path)) == 5


def test_corrupt_record_truncates_from_there(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 5)
    offset = j._offsets[2]
    j._destroy()
    with open(paths(tmp_path)[0], "r+b") as f:
        f.seek(offset + 30)
        f.write(b"X")
    again = open_journal(tmp_path)
    assert [e[1] for e in again[:]] == [1, 2]


def test_not_a_journal(tmp_path):
    with open(paths(tmp_path)[0], "wb") as f:
        f.write(b"something else entirely")
    with pytest.raises(JournalError, match="not a cantainer raft journal"):
        open_journal(tmp_path)


def test_corrupt_term_file_refuses(tmp_path):
    with open(paths(tmp_path)[1], "w") as f:
        f.write("{")
    with pytest.raises(JournalError, match="corrupt"):
        open_journal(tmp_path)


def test_cut_then_identical_entries_are_adopted_without_writes(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 6)
    j.sync()
    size = os.path.getsize(paths(tmp_path)[0])
    j.deleteEntriesFrom(3)  # PySyncObj: cut after prevLogIdx=3 ...
    assert len(j) == 3 and j[-1][1] == 3
    with pytest.raises(IndexError):
        j[3]
    fill(j, 2, start=4)  # ... and re-add what the leader re-sent
    assert len(j) == 5 and not j.dirty and os.path.getsize(paths(tmp_path)[0]) == size
    j._destroy()
    # the acknowledged entry 6 never left the disk
    assert [e[1] for e in open_journal(tmp_path)[:]] == [1, 2, 3, 4, 5, 6]


def test_cut_then_conflict_truncates_the_disk(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 6)
    j.deleteEntriesFrom(3)
    j.add(cmd(4), 4, 1)           # identical: adopted
    j.add(b"\x00other", 5, 2)     # conflict at 5: the disk is cut there
    assert j.dirty
    j._destroy()
    again = open_journal(tmp_path)
    assert [(e[1], e[2]) for e in again[:]] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2)]
    assert again[-1][0] == b"\x00other"


def test_compaction_rewrites_atomically(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 10)
    write_dump(tmp_path, (cmd(6), 6, 1), (cmd(7), 7, 1))
    j.deleteEntriesTo(5)  # keep entries 6..10
    assert [e[1] for e in j[:]] == [6, 7, 8, 9, 10]
    fill(j, 2, start=11)
    j.deleteEntriesFrom(6)  # offsets are right after a rewrite
    j.add(b"\x00x", 12, 2)
    j._destroy()
    assert [(e[1], e[2]) for e in open_journal(tmp_path)[:]] == [(6, 1), (7, 1), (8, 1), (9, 1), (10, 1), (11, 1),
                                                                 (12, 2)]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_interrupted_compaction_is_completed_at_open(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 10)
    j._destroy()
    # snapshot written (covering up to 7), crash before the journal was cut
    write_dump(tmp_path, (cmd(6), 6, 1), (cmd(7), 7, 1))
    again = open_journal(tmp_path)
    assert [e[1] for e in again[:]] == [6, 7, 8, 9, 10]


def test_compacted_journal_needs_its_snapshot(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 10)
    write_dump(tmp_path, (cmd(6), 6, 1), (cmd(7), 7, 1))
    j.deleteEntriesTo(5)
    j._destroy()
    os.unlink(paths(tmp_path)[2])
    with pytest.raises(JournalError, match="missing"):
        open_journal(tmp_path)
    with open(paths(tmp_path)[2], "wb") as f:
        f.write(b"not gzip")
    with pytest.raises(JournalError, match="unreadable"):
        open_journal(tmp_path)


def test_clear_for_snapshot_install(tmp_path):
    j = open_journal(tmp_path)
    fill(j, 4)
    write_dump(tmp_path, (cmd(20), 20, 3), (cmd(21), 21, 3))
    j.clear()
    j.add(cmd(20), 20, 3)
    j.add(cmd(21), 21, 3)
    j._destroy()
    assert [e[1] for e in open_journal(tmp_path)[:]] == [20, 21]


def test_converts_a_pysyncobj_journal(tmp_path, caplog):
    path, term_path, dump = paths(tmp_path)
    old = FileJournal(path)
    for i in range(1, 4):
        old.add(cmd(i), i, 2)
    old.setCurrentTerm(5, "b:2")
    old.setRaftCommitIndex(3)
    old.onOneSecondTimer()
    old._destroy()
    with caplog.at_level(logging.WARNING):
        j = DurableJournal(path, term_path, dump)
    assert "converted" in caplog.text
    assert [e[1] for e in j[:]] == [1, 2, 3] and j[0][0] == cmd(1)
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (5, "b:2", 3)
    assert not os.path.exists(path + ".meta")
    with open(path, "rb") as f:
        assert f.read(len(MAGIC)) == MAGIC
    j._destroy()


def test_create_journal_hook(tmp_path):
    install_journal_hook()
    install_journal_hook()  # idempotent
    import pysyncobj.syncobj as so

    spec = JournalSpec(*paths(tmp_path))
    made = so.createJournal(spec)
    assert isinstance(made, DurableJournal) and spec.journal is made
    made._destroy()
    assert isinstance(so.createJournal(str(tmp_path / "plain")), FileJournal)  # others unaffected
    assert type(so.createJournal(None)).__name__ == "MemoryJournal"
    SyncObjConf(journalFile=spec).validate()


def test_record_crc_covers_index_and_term():
    rec = jmod._record(b"abc", 1, 2)
    forged = rec[:8] + jmod._IDXTERM.pack(1, 3) + rec[24:]
    assert jmod._record(b"abc", 1, 3) != forged  # same command, other term: CRC differs


# ------------------------------------------------------------------ power-loss model


class _RecordingOs:
    """``os`` for journal.py that remembers, for the log file, what was written since the last
    fdatasync/fsync: on a power loss any subset of those writes (each possibly torn) may be on
    disk, on top of exactly what was there at the last sync."""

    def __init__(self, path):
        self._path = path
        self._fds = set()
        self.synced = b""
        self.pending = []

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, flags, mode=0o777):
        fd = os.open(path, flags, mode)
        if os.path.abspath(path) == self._path:
            self._fds.add(fd)
        return fd

    def close(self, fd):
        self._fds.discard(fd)
        os.close(fd)

    def pwrite(self, fd, data, offset):
        n = os.pwrite(fd, data, offset)
        if fd in self._fds:
            self.pending.append(("w", offset, bytes(data[:n])))
        return n

    def ftruncate(self, fd, size):
        os.ftruncate(fd, size)
        if fd in self._fds:
            self.pending.append(("t", size, b""))

    def _synced(self, fd):
        if fd in self._fds:
            with open(self._path, "rb") as f:
                self.synced = f.read()
            self.pending = []

    def fdatasync(self, fd):
        os.fdatasync(fd)
        self._synced(fd)

    def fsync(self, fd):
        os.fsync(fd)
        self._synced(fd)

    def replace(self, src, dst):
        os.replace(src, dst)  # journal.py fsyncs the new file before and the directory after
        if os.path.abspath(dst) == self._path:
            with open(self._path, "rb") as f:
                self.synced = f.read()
            self.pending = []

    def crash_image(self, rng):
        image = bytearray(self.synced)
        for kind, arg, data in self.pending:
            if rng.random() < 0.5:
                continue  # this write never reached the disk
            if kind == "t":
                del image[arg:]
                continue
            if rng.random() < 0.3:
                data = data[: rng.randrange(len(data) + 1)]  # torn
            if len(image) < arg:
                image.extend(b"\0" * (arg - len(image)))
            image[arg: arg + len(data)] = data
        return bytes(image)

    def first_touched_offset(self):
        offsets = [arg for kind, arg, _ in self.pending] or [len(self.synced)]
        return min(min(offsets), len(self.synced))


def _entries_of(image, tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "raft.journal").write_bytes(image)
    j = DurableJournal(str(d / "raft.journal"), str(d / "raft.term"), None)
    entries = [j[i] for i in range(len(j))]
    offsets = list(j._offsets[: len(j)])
    j._destroy()
    return entries, offsets


def test_power_loss_keeps_every_synced_entry(tmp_path, monkeypatch):
    import random

    rng = random.Random(84)
    path = str(tmp_path / "raft.journal")
    fake = _RecordingOs(path)
    monkeypatch.setattr(jmod, "os", fake)
    j = DurableJournal(path, str(tmp_path / "raft.term"), None)
    written = set()
    term, crashes = 1, 0
    for step in range(400):
        op = rng.random()
        if op < 0.55 or len(j) < 3:
            idx = (j[-1][1] + 1) if len(j) else 1
            entry = (f"e{idx}-t{term}-{rng.randrange(9)}".encode() * rng.randrange(1, 40), idx, term)
            j.add(*entry)
            written.add(entry)
        elif op < 0.75:
            j.sync()
        elif op < 0.85:  # PySyncObj's cut-and-re-add, sometimes with a real conflict
            cut = rng.randrange(max(1, len(j) - 5), len(j))
            tail = [j[i] for i in range(cut, len(j))]
            j.deleteEntriesFrom(cut)
            if rng.random() < 0.5:
                for e in tail[: rng.randrange(len(tail) + 1)]:
                    j.add(*e)
            else:
                term += 1
        else:
            j.setRaftCommitIndex(j[-1][1])
        if step % 8 == 0:
            durable, durable_offsets = _entries_of(fake.synced, tmp_path, f"s{step}")
            limit = fake.first_touched_offset()
            keep = [e for e, off in zip(durable, durable_offsets, strict=True) if off < limit and
                    off + jmod._REC.size + len(e[0]) <= limit]
            for trial in range(3):
                crashes += 1
                recovered, _ = _entries_of(fake.crash_image(rng), tmp_path, f"c{step}-{trial}")
                assert recovered[: len(keep)] == keep  # nothing that was synced (and not cut) is lost
                assert all(e in written for e in recovered)  # and nothing that was never written appears
                assert [e[1] for e in recovered] == list(range(1, len(recovered) + 1))
    j._destroy()
    assert crashes > 100
