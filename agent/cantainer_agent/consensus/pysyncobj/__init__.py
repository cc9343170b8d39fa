"""Every touch of PySyncObj lives in this subpackage, behind one version check.

PySyncObj 0.3.17 is pinned: :mod:`.journal` and :mod:`.transport` replace or wrap private,
name-mangled parts of it, and :mod:`.syncobj` reads a few more. Importing this package

* refuses any other PySyncObj version (an upgrade must be reviewed, not discovered);
* undoes PySyncObj's ``win_inet_pton`` side effect, which replaces ``socket.inet_ntop`` with a
  Windows-only shim on every OS and so broke pyroute2's address decoding in the agent;
* puts a stand-in in place of ``pysyncobj.encryptor`` (it would import `cryptography`): the
  transport's Fernet is :mod:`.fernet`, on libcrypto.

:func:`install` hooks the durable journal into ``SyncObj``'s journal factory, makes its
snapshot file private and its tick thread tick at once (no fixed 0.1 s sleep first);
``RaftNode.start`` calls it, so nothing is patched merely by importing.
See docs/design/raft.md ("PySyncObj traps").
"""
from __future__ import annotations

import _socket
import socket
import sys
import types

# PySyncObj's encryptor module imports `cryptography` (~100 ms of CPU at every agent start) only to
# build a Fernet from a password; AgentSyncObj hands PySyncObj its own (fernet.py) and no password,
# so a stand-in takes that module's place before PySyncObj is imported (unless it already was).
_encryptor = types.ModuleType("pysyncobj.encryptor", "stand-in: cantainer_agent/consensus/pysyncobj/fernet.py")
_encryptor.HAS_CRYPTO = True


def _no_password(_password):
    raise RuntimeError("PySyncObj got a password: AgentSyncObj gives it its encryptor (fernet.py) instead")


_encryptor.getEncryptor = _no_password
sys.modules.setdefault("pysyncobj.encryptor", _encryptor)

import pysyncobj  # noqa: E402 - after the stand-in above
from pysyncobj import version as _version  # noqa: E402 - as above

from .journal import (  # noqa: E402 - as above
    DurableJournal,
    JournalError,
    JournalSpec,
    install_journal_hook,
    install_private_dump,
)
from .syncobj import (  # noqa: E402 - as above
    ROLE_NAMES,
    AgentSyncObj,
    StateStore,
    SyncTuning,
    change_membership,
    install_prompt_tick,
    make_conf,
    submit,
    transfer_succeeded,
)
from .transport import AgentTransport  # noqa: E402 - as above

# pysyncobj.win_inet_pton (imported by its TCP connection module) replaced socket.inet_ntop with
# a Windows-only shim; the C implementation is still in _socket.
socket.inet_ntop = _socket.inet_ntop

SUPPORTED_VERSION = "0.3.17"
if _version.VERSION != SUPPORTED_VERSION:  # pragma: no cover - guarded upgrade
    raise ImportError(f"PySyncObj {_version.VERSION} is not {SUPPORTED_VERSION}: review "
                      "cantainer_agent/consensus/pysyncobj/ (journal.py, transport.py, syncobj.py)")

__all__ = ["pysyncobj", "DurableJournal", "JournalError", "JournalSpec", "ROLE_NAMES", "AgentSyncObj", "StateStore",
           "SyncTuning", "change_membership", "make_conf", "submit", "transfer_succeeded", "AgentTransport",
           "install"]


def install() -> None:
    """Idempotent: make ``SyncObj`` build a :class:`DurableJournal` for a :class:`JournalSpec`, write
    its snapshot file (raft.dump) 0600, and tick as soon as its transport is ready."""
    install_journal_hook()
    install_private_dump()
    install_prompt_tick()
