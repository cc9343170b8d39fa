"""The raft key is PySyncObj's own key for the cluster secret, derived once and kept beside it."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import pysyncobj
import pytest
from cryptography.fernet import Fernet

from cantainer_agent import raftkey
from cantainer_agent.consensus import RaftError
from cantainer_agent.consensus.pysyncobj import AgentSyncObj, make_conf

SECRET = b"0123456789abcdef0123456789abcdef"


def pysyncobj_encryptor():
    """PySyncObj's own encryptor module (the agent puts a stand-in in its place in sys.modules)."""
    spec = importlib.util.spec_from_file_location("real_encryptor", Path(pysyncobj.__file__).parent / "encryptor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_key_is_the_one_pysyncobj_derives_so_old_and_new_agents_talk():
    encryptor = pysyncobj_encryptor()
    assert raftkey.PYSYNCOBJ_SALT == encryptor.SALT and "iterations=100000" in Path(encryptor.__file__).read_text()
    ours, theirs = Fernet(raftkey.derive(SECRET)), encryptor.getEncryptor(SECRET)
    assert theirs.decrypt(ours.encrypt(b"append entries")) == b"append entries"
    assert ours.decrypt(theirs.encrypt(b"vote")) == b"vote"


def test_a_missing_key_file_is_derived_and_written_0600(tmp_path):
    path = tmp_path / "secret.raftkey"
    assert raftkey.load(SECRET, str(path)) == raftkey.derive(SECRET)
    assert path.read_bytes() == raftkey.record(SECRET) and path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().split()[0] == hashlib.sha256(SECRET).hexdigest().encode()


def test_the_file_of_this_secret_is_used_as_it_is_and_a_stale_one_never(tmp_path):
    path = tmp_path / "secret.raftkey"
    path.write_bytes(hashlib.sha256(SECRET).hexdigest().encode() + b" kept-as-written\n")
    assert raftkey.load(SECRET, str(path)) == b"kept-as-written"  # not derived again
    other = b"another secret of the cluster, 32+"
    assert raftkey.load(other, str(path)) == raftkey.derive(other)  # the file names another secret
    assert path.read_bytes() == raftkey.record(other)
    path.write_bytes(b"garbage")
    assert raftkey.load(SECRET, str(path)) == raftkey.derive(SECRET)


def test_a_key_that_cannot_be_kept_is_derived_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert raftkey.load(SECRET, str(tmp_path / "missing-dir" / "secret.raftkey")) == raftkey.derive(SECRET)
    assert "cannot keep the raft key" in caplog.text


def test_a_raft_node_without_a_secret_is_refused():
    conf = make_conf(None, SECRET, None, None)
    conf.password = None
    with pytest.raises(RaftError, match="secret is mandatory"):
        AgentSyncObj(None, [], conf)
