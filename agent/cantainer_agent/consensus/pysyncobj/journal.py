"""A crash-safe raft journal for PySyncObj 0.3.17 (a ``pysyncobj.journal.Journal``).

* ``raft.journal``: a magic, then append-only records ``<u32 len, u32 crc32, u64 idx, u64 term>
  command``; reading stops at the first short or bad record and truncates there (only a torn,
  never-synced tail can be bad). Records are never rewritten; a conflicting tail is ``ftruncate``d.
* ``raft.term``: term, vote and a commit-index hint, replaced atomically and durably *before*
  ``setCurrentTerm`` returns (so before any vote reflecting it is sent).
* ``add`` only writes; ``sync`` (fdatasync) runs before any acknowledgement or vote leaves the node
  (transport.py) and in ``setRaftCommitIndex``: every entry is on disk before anyone can count it.
  ``sync_soon`` starts that fdatasync in a background thread (the leader, after sending a round):
  the tick thread goes on reading answers instead of waiting for the disk, and the commit that
  needs the leader's copy usually finds it durable already.
* Compaction fsyncs the snapshot first, then swaps in a new journal; an interrupted one is completed
  at open, and a compacted journal whose snapshot is unreadable is refused.

Every method runs in PySyncObj's tick thread except the background fdatasync, which holds
``_sync_lock``; everything that changes the file other than appending (truncation, compaction,
closing) takes that lock too, and durability is tracked by a generation count of those changes.
Why PySyncObj's FileJournal is not enough, and how this is proven: docs/design/raft.md ("Durability").
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import threading
import time
import zlib
from typing import Any

from pysyncobj import pickle as psopickle
from pysyncobj.journal import Journal

from ...fsutil import atomic_write, fsync_dir, fsync_path
from ..errors import RaftError

log = logging.getLogger(__name__)

MAGIC = b"CNTRJNL1"
_REC = struct.Struct("<IIQQ")
_IDXTERM = struct.Struct("<QQ")
MAX_ENTRY = 256 * 1024 * 1024  # a record claiming more is garbage
_PYSYNCOBJ_MAGIC = b"PYSYNCOBJ"


class JournalError(RaftError):
    """The journal cannot be opened safely (message names the file and the way out)."""


Entry = tuple  # (command: bytes, idx: int, term: int)


def _record(command: bytes, idx: int, term: int) -> bytes:
    it = _IDXTERM.pack(idx, term)
    crc = zlib.crc32(command, zlib.crc32(it))
    return _REC.pack(len(command), crc, idx, term) + command


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def read_snapshot_entries(dump_path: str) -> tuple[Entry, Entry] | None:
    """The (previous, last) log entries a PySyncObj snapshot covers, or None if it is missing.
    Raises JournalError if the file exists but cannot be read."""
    try:
        with open(dump_path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
            data = psopickle.load(g)
        last, prev = data[1], data[2]
        return (tuple(prev), tuple(last))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any decoding problem
        raise JournalError(f"raft snapshot {dump_path} is unreadable ({type(exc).__name__}: {exc})") from None


class DurableJournal(Journal):
    """See the module docstring. *path* is the log, *meta_path* the term file, *dump_path*
    PySyncObj's ``fullDumpFile`` (the snapshot this journal's prefix was compacted into)."""

    def __init__(self, path: str, meta_path: str, dump_path: str | None):
        self.path = path
        self.meta_path = meta_path
        self.dump_path = dump_path
        self._entries: list[Entry] = []  # what is on disk (the view PySyncObj sees is the first _len)
        self._offsets: list[int] = []
        self._len = 0
        self._end = len(MAGIC)
        # Durability: every change to the file bumps _gen; _head is (_gen, last index on disk),
        # _durable the (_gen, index) the last completed fdatasync covered. Tuples, assigned whole,
        # so the background thread reads them consistently.
        self._gen = 0
        self._head = (0, 0)
        self._durable = (0, 0)
        self._sync_lock = threading.Lock()
        self._syncer: threading.Thread | None = None
        self._sync_wanted = threading.Event()
        self._closing = False
        self._fd = -1
        self.syncs = 0  # statistics: fdatasync calls on the log and the time they took
        self.sync_seconds = 0.0
        self._term, self._voted_for, self._commit = self._load_meta()
        self._meta_dirty = False
        self._open()
        self._check_snapshot()
        last = self._entries[-1][1] if self._entries else 0
        self._head = self._durable = (self._gen, last)  # what we read is on disk (truncated tails synced)

    # ---------------------------------------------------------------- opening

    def _load_meta(self) -> tuple[int, Any, int]:
        try:
            with open(self.meta_path, "rb") as f:
                data = json.loads(f.read().decode())
            term, voted, commit = data["term"], data["voted_for"], data["commit_index"]
            if type(term) is not int or type(commit) is not int or not (voted is None or isinstance(voted, str)):
                raise TypeError("field types")
            return term, voted, commit
        except FileNotFoundError:
            return 0, None, 1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JournalError(
                f"raft term file {self.meta_path} is corrupt ({exc}): refusing to start, a lost vote "
                "could elect two leaders; move the data directory away to rejoin through the seeds"
            ) from None

    def _open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        created = not os.path.exists(self.path)
        if not created:
            with open(self.path, "rb") as f:
                head = f.read(len(_PYSYNCOBJ_MAGIC))
            if head == _PYSYNCOBJ_MAGIC:
                self._convert_pysyncobj_journal()  # leaves the new file open and loaded
                return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created or os.fstat(self._fd).st_size == 0:
            _write_all(self._fd, MAGIC, 0)
            os.fsync(self._fd)
            fsync_dir(directory)
            return
        with open(self.path, "rb") as f:
            data = f.read()
        if data[: len(MAGIC)] != MAGIC:
            os.close(self._fd)
            self._fd = -1
            raise JournalError(f"{self.path} is not a cantainer raft journal; move the data directory away to "
                               "rejoin through the seeds")
        pos, size = len(MAGIC), len(data)
        while pos < size:
            if size - pos < _REC.size:
                break
            length, crc, idx, term = _REC.unpack_from(data, pos)
            if length > MAX_ENTRY or size - pos - _REC.size < length:
                break
            command = data[pos + _REC.size: pos + _REC.size + length]
            if zlib.crc32(command, zlib.crc32(_IDXTERM.pack(idx, term))) != crc:
                break
            if self._entries and idx != self._entries[-1][1] + 1:
                break
            self._entries.append((command, idx, term))
            self._offsets.append(pos)
            pos += _REC.size + length
        self._len = len(self._entries)
        if pos < size:
            log.warning("raft journal %s: dropping %d bytes of torn or corrupt tail after entry %s", self.path,
                        size - pos, self._entries[-1][1] if self._entries else "none")
            os.ftruncate(self._fd, pos)
            os.fsync(self._fd)
        self._end = pos

    def _convert_pysyncobj_journal(self) -> None:
        """One-time upgrade from PySyncObj's FileJournal (mmap + pickled ``.meta``)."""
        from pysyncobj.journal import FileJournal

        old = FileJournal(self.path)
        entries = [(bytes(c), i, t) for c, i, t in (old[k] for k in range(len(old)))]
        term, voted, commit = old.getCurrentTerm(), old.getVotedForNodeId(), old.getRaftCommitIndex()
        old._destroy()
        self._rewrite(entries)
        self._term, self._voted_for, self._commit = term, voted, commit
        self._write_meta()
        try:
            os.unlink(self.path + ".meta")
        except FileNotFoundError:
            pass
        log.warning("converted PySyncObj journal %s (%d entries, term %d) to the durable format", self.path,
                    len(entries), term)

    def _check_snapshot(self) -> None:
        if self.dump_path is None:
            return
        compacted = bool(self._entries) and self._entries[0][1] > 1
        try:
            snap = read_snapshot_entries(self.dump_path)
        except JournalError as exc:
            if compacted:
                raise JournalError(f"{exc}; the journal {self.path} starts at entry {self._entries[0][1]} and needs "
                                   "it: move the data directory away to rejoin through the seeds") from None
            log.warning("%s (ignored: the journal starts at entry 1)", exc)
            return
        if snap is None:
            if compacted:
                raise JournalError(f"raft snapshot {self.dump_path} is missing but the journal {self.path} starts at "
                                   f"entry {self._entries[0][1]}: move the data directory away to rejoin")
            return
        prev, last = snap
        for k in range(len(self._entries) - 1):
            if self._entries[k] == prev and self._entries[k + 1] == last:
                if k > 0:
                    log.warning("raft journal %s: completing an interrupted log compaction (dropping %d entries "
                                "covered by the snapshot)", self.path, k)
                    self._rewrite(self._entries[k:])
                return

    # ----------------------------------------------------------- durability

    def sync(self) -> None:
        """Make every written entry (and truncation) durable. Cheap when nothing changed; waits for
        a background fdatasync in progress (which often covers everything already)."""
        if self._durable[0] == self._gen:
            return
        with self._sync_lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        gen, idx = self._head
        if self._durable[0] >= gen or self._fd < 0:
            return
        t0 = time.perf_counter()
        os.fdatasync(self._fd)
        self.sync_seconds += time.perf_counter() - t0
        self.syncs += 1
        self._durable = (gen, idx)

    def sync_soon(self) -> None:
        """Start making what was written durable, in the background; :meth:`sync` still must run
        (and then usually finds nothing left to do) before anything relies on it."""
        if self._durable[0] == self._gen or self._fd < 0:
            return
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._background_sync, name="raft-journal-sync", daemon=True)
            self._syncer.start()
        self._sync_wanted.set()

    def _background_sync(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            with self._sync_lock:
                if self._closing:
                    return
                try:
                    self._sync_locked()
                except OSError:
                    log.exception("background fdatasync of %s failed (the next sync retries)", self.path)

    @property
    def dirty(self) -> bool:
        return self._durable[0] != self._gen

    @property
    def _durable_idx(self) -> int:
        return self._durable[1]

    def _changed(self, durable_idx: int | None = None) -> None:
        """After a change to the file: a new generation (not durable yet); *durable_idx* caps what
        is still known durable (a truncation)."""
        self._gen += 1
        self._head = (self._gen, self._entries[-1][1] if self._entries else 0)
        if durable_idx is not None:
            self._durable = (self._durable[0], min(self._durable[1], durable_idx))

    flush = sync

    def _make_snapshot_durable(self) -> None:
        if self.dump_path and os.path.exists(self.dump_path):
            fsync_path(self.dump_path)
            fsync_dir(os.path.dirname(os.path.abspath(self.dump_path)))

    def _rewrite(self, entries: list[Entry]) -> None:
        """Replace the log file with *entries* atomically (new file, fsync, rename)."""
        with self._sync_lock:
            self._rewrite_locked(entries)

    def _rewrite_locked(self, entries: list[Entry]) -> None:
        tmp = self.path + ".rewrite.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        offsets, pos = [], len(MAGIC)
        try:
            chunks = [MAGIC]
            for command, idx, term in entries:
                rec = _record(command, idx, term)
                offsets.append(pos)
                pos += len(rec)
                chunks.append(rec)
            _write_all(fd, b"".join(chunks), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._entries, self._offsets, self._end = list(entries), offsets, pos
        self._len = len(self._entries)
        self._gen += 1
        self._head = self._durable = (self._gen, self._entries[-1][1] if self._entries else 0)  # fsync'd above

    def _write_meta(self) -> None:
        body = {"version": 1, "term": self._term, "voted_for": self._voted_for, "commit_index": self._commit}
        atomic_write(self.meta_path, (json.dumps(body) + "\n").encode(), 0o600)
        self._meta_dirty = False

    # ------------------------------------------------ pysyncobj Journal API

    def add(self, command, idx, term):
        command = psopickle.to_bytes(command)
        entry = (command, idx, term)
        pos = self._len
        if pos < len(self._entries):
            if self._entries[pos] == entry:
                self._len += 1  # re-sent entry still on disk (see deleteEntriesFrom): adopt it
                return
            self._truncate_disk(pos)  # a real conflict: now drop the old tail on disk
        rec = _record(command, idx, term)
        _write_all(self._fd, rec, self._end)
        self._offsets.append(self._end)
        self._entries.append(entry)
        self._end += len(rec)
        self._len += 1
        self._changed()

    def _truncate_disk(self, pos: int) -> None:
        with self._sync_lock:  # not under a background fdatasync that read the old head
            self._end = self._offsets[pos]
            os.ftruncate(self._fd, self._end)
            del self._entries[pos:]
            del self._offsets[pos:]
            self._changed(durable_idx=self._entries[-1][1] if self._entries else 0)

    def clear(self):
        # PySyncObj clears only to replace the log by a snapshot it has just written.
        self._make_snapshot_durable()
        with self._sync_lock:
            os.ftruncate(self._fd, len(MAGIC))
            self._entries, self._offsets, self._end, self._len = [], [], len(MAGIC), 0
            self._changed(durable_idx=0)

    def deleteEntriesFrom(self, entryFrom):
        # PySyncObj (0.3.17) cuts the log after prevLogIdx on *every* append-entries whose
        # prevLogIdx is behind the end of the log, even when the entries that follow are the very
        # ones it then re-adds (a leader re-sending what was already acknowledged). Cutting them
        # on disk would un-persist acknowledged entries until they are written again. So the cut
        # is applied to PySyncObj's view only; the disk keeps the tail, re-added identical
        # entries are adopted without a write, and the disk is cut at the first entry that really
        # differs (a conflict). A tail left on disk is an ordinary uncommitted raft tail after a
        # restart (the persisted commit index never covers it).
        self._len = max(0, min(self._len, entryFrom))

    def deleteEntriesTo(self, entryTo):
        # Log compaction: the snapshot holding the dropped entries must be durable first.
        self._make_snapshot_durable()
        self.sync()
        keep = max(0, self._len - entryTo)
        self._rewrite(self._entries[entryTo:])
        self._len = keep

    def __getitem__(self, item):
        n = self._len
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            return self._entries[start:stop:step]
        if item < 0:
            item += n
        if not 0 <= item < n:
            raise IndexError("journal index out of range")
        return self._entries[item]

    def __len__(self):
        return self._len

    def _destroy(self):
        if self._fd < 0:
            return
        try:
            self.sync()
            if self._meta_dirty:
                self._write_meta()
        finally:
            with self._sync_lock:
                self._closing = True
                os.close(self._fd)
                self._fd = -1
            self._sync_wanted.set()  # the background thread, if any, sees _closing and ends
            if self._syncer is not None and self._syncer is not threading.current_thread():
                self._syncer.join(5)

    def setRaftCommitIndex(self, raftCommitIndex):
        # Called by the leader right after it advanced the commit index, before applying and
        # answering clients: its own copy of the entries must be on disk by then. (A follower
        # calls it after every append-entries; its acknowledged entries are already synced.)
        if raftCommitIndex > self._durable_idx:
            self.sync()
        if raftCommitIndex != self._commit:
            self._commit = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self):
        return self._commit

    def setCurrentTerm(self, term, votedForNodeId):
        self._term, self._voted_for = term, votedForNodeId
        self._write_meta()  # durable before PySyncObj sends anything reflecting it

    def getCurrentTerm(self):
        return self._term

    def getVotedForNodeId(self):
        return self._voted_for

    def onOneSecondTimer(self):
        if self._meta_dirty:
            if self._commit > self._durable_idx:
                self.sync()  # never persist a commit index beyond the durable log
            self._write_meta()


# ------------------------------------------------------------- the hook into PySyncObj


class JournalSpec:
    """Put in ``SyncObjConf.journalFile``: ``SyncObj.__init__`` passes it to the module-level
    ``pysyncobj.syncobj.createJournal``, which :func:`install_journal_hook` replaces by a
    dispatcher that builds a :class:`DurableJournal` for a spec and defers to the original for
    anything else (so other SyncObj users in the process are unaffected). PySyncObj reads
    ``journalFile`` nowhere else. The spec keeps the journal so the transport can sync it."""

    def __init__(self, path: str, meta_path: str, dump_path: str | None):
        self.path, self.meta_path, self.dump_path = path, meta_path, dump_path
        self.journal: DurableJournal | None = None

    def sync(self) -> None:
        if self.journal is not None:
            self.journal.sync()

    def sync_soon(self) -> None:
        if self.journal is not None:
            self.journal.sync_soon()

    def __repr__(self) -> str:
        return f"JournalSpec({self.path!r})"


def install_journal_hook() -> None:
    """Idempotent; called by :func:`cantainer_agent.consensus.pysyncobj.install`."""
    import pysyncobj.syncobj as so

    if getattr(so.createJournal, "_cantainer", False):
        return
    original = so.createJournal

    def create_journal(journal_file=None):
        if isinstance(journal_file, JournalSpec):
            journal_file.journal = DurableJournal(journal_file.path, journal_file.meta_path, journal_file.dump_path)
            return journal_file.journal
        return original(journal_file)

    create_journal._cantainer = True  # type: ignore[attr-defined]
    so.createJournal = create_journal


def _private_open(path, mode="r", *args, **kwargs):
    """``open`` for PySyncObj's serializer: files it writes (raft.dump and its temporaries: the whole
    state, container environments included) are created 0600, never with the process umask."""
    if not any(flag in mode for flag in "wax+"):
        return open(path, mode, *args, **kwargs)
    flags = os.O_CREAT | os.O_CLOEXEC | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    flags |= os.O_APPEND if "a" in mode else (os.O_EXCL if "x" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing temporary keeps its mode through O_TRUNC
        return os.fdopen(fd, mode, *args, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def install_private_dump() -> None:
    """Idempotent; called by :func:`cantainer_agent.consensus.pysyncobj.install`."""
    import pysyncobj.serializer as serializer

    serializer.open = _private_open  # a module global shadows the builtin in that module only
