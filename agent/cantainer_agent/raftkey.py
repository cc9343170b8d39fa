"""The raft transport's key: the Fernet key PySyncObj derives from the cluster secret, kept beside it.

PySyncObj encrypts raft traffic with Fernet under ``PBKDF2-HMAC-SHA256(secret, its salt, 100 000
rounds)`` — ~40 ms of CPU, which every agent start and every raft role change paid. The key is the
same for every node of a cluster (it must be: mixed versions talk during a rolling upgrade), so it
is derived once: `up` writes it with the secret (``record``), and an agent that finds no valid file
derives it and writes the file itself (``load``; the workstation keeps one beside its copy of the
secret the same way, so `up` derives it once per secret). The file names the secret's sha256, so a
stale key (a secret changed under it) is never used. It is secret material: mode 0600, like the secret.
Stdlib only: the workstation imports it too.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging

from .fsutil import atomic_write

log = logging.getLogger(__name__)

# pysyncobj/encryptor.py's SALT and rounds (tests/agent/consensus check they still are).
PYSYNCOBJ_SALT = b"\x15%q\xe6\xbb\x02\xa6\xf8\x13q\x90\xcf6+\x1e\xeb"
PYSYNCOBJ_ROUNDS = 100000


def key_file(secret_file: str) -> str:
    """Where the key of the secret at *secret_file* is kept."""
    return f"{secret_file}.raftkey"


def derive(secret: bytes) -> bytes:
    """The urlsafe-base64 Fernet key PySyncObj's ``getEncryptor(secret)`` uses."""
    return base64.urlsafe_b64encode(hashlib.pbkdf2_hmac("sha256", secret, PYSYNCOBJ_SALT, PYSYNCOBJ_ROUNDS, 32))


def record(secret: bytes, key: bytes | None = None) -> bytes:
    """The key file's content for *secret*: ``<sha256 of the secret> <key>`` (*key*: derived if None)."""
    return hashlib.sha256(secret).hexdigest().encode() + b" " + (key or derive(secret)) + b"\n"


def load(secret: bytes, path: str | None) -> bytes:
    """The key of *secret*: from the file at *path* when it is the key of this secret, else derived
    (and written there, best-effort, for the next start)."""
    if path:
        try:
            with open(path, "rb") as handle:
                digest, key = handle.read(256).split()
            if hmac.compare_digest(digest, hashlib.sha256(secret).hexdigest().encode()):
                return key
        except (OSError, ValueError):
            pass  # none yet, unreadable or malformed: derived below
    content = record(secret)
    if path:
        try:
            atomic_write(path, content, 0o600)
        except OSError as exc:
            log.warning("cannot keep the raft key in %s (derived again at the next start): %s", path, exc)
    return content.split()[1]
