"""The transport's Fernet (on libcrypto) is the Fernet spec: tokens go both ways with `cryptography`'s."""
from __future__ import annotations

import base64
import os

import pytest
from cryptography.fernet import Fernet as Reference
from cryptography.fernet import InvalidToken as ReferenceInvalid

from cantainer_agent.consensus.pysyncobj.fernet import Fernet, InvalidToken

KEY = Reference.generate_key()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 300, 70000])
def test_tokens_go_both_ways_with_the_reference_implementation(size):
    ours, theirs, data = Fernet(KEY), Reference(KEY), os.urandom(size)
    token = ours.encrypt_at_time(data, 1_796_000_000)
    assert theirs.decrypt(token) == data and theirs.extract_timestamp(token) == 1_796_000_000
    token = theirs.encrypt_at_time(data, 1_796_000_123)
    assert ours.decrypt(token) == data and ours.extract_timestamp(token) == 1_796_000_123


def test_a_fresh_iv_per_token():
    ours = Fernet(KEY)
    assert ours.encrypt_at_time(b"same", 1) != ours.encrypt_at_time(b"same", 1)


def flip(token: bytes, at: int) -> bytes:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[at] ^= 1
    return base64.urlsafe_b64encode(bytes(raw))


@pytest.mark.parametrize("at", [0, 3, 12, 30, -40, -1])  # version, timestamp, IV, ciphertext, MAC
def test_any_changed_bit_is_refused_before_anything_is_decrypted(at):
    ours, token = Fernet(KEY), Reference(KEY).encrypt_at_time(b"x" * 40, 7)
    for call in (ours.decrypt, ours.extract_timestamp):
        with pytest.raises(InvalidToken):
            call(flip(token, at))
    with pytest.raises(ReferenceInvalid):  # the reference agrees
        Reference(KEY).decrypt(flip(Fernet(KEY).encrypt_at_time(b"x" * 40, 7), at))


def test_another_key_garbage_and_short_tokens_are_refused():
    token = Fernet(KEY).encrypt_at_time(b"raft", 1)
    for bad in (Fernet(Reference.generate_key()).encrypt_at_time(b"raft", 1), b"\xff\xfe", b"gAAAAA==", token[:40]):
        with pytest.raises(InvalidToken):
            Fernet(KEY).decrypt(bad)
    with pytest.raises(ValueError):
        Fernet(base64.urlsafe_b64encode(b"short"))
