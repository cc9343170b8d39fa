"""Fernet for PySyncObj's transport, on the host's libcrypto — without importing `cryptography`.

PySyncObj encrypts every raft message with ``cryptography.fernet.Fernet``; importing `cryptography`
costs ~100 ms of CPU (its Rust extension), two thirds of what an agent imports at every start. The
token format is the Fernet spec (version 0x80, 64-bit timestamp, IV, AES-128-CBC with PKCS#7
padding, HMAC-SHA256 over all of it), so nodes using either implementation talk to each other
(tests/agent/consensus check both directions and tampering). The cipher is OpenSSL's EVP
AES-128-CBC from the libcrypto Python's own hashlib is linked with; HMAC and the constant-time
compare are the stdlib's. Only what PySyncObj calls is here: ``encrypt_at_time``,
``extract_timestamp`` and ``decrypt`` (the MAC is checked before anything is decrypted).
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import hmac
import os
import struct

VERSION = 0x80
_HEADER = 1 + 8 + 16  # version, timestamp, IV
_MAC = 32


class InvalidToken(ValueError):
    """A token that is not a Fernet token of this key (PySyncObj drops the connection)."""


def _libcrypto() -> ctypes.CDLL:
    """The libcrypto `_hashlib` is linked with (same library, same ABI), else the usual soname."""
    import _hashlib  # noqa: F401, PLC0415 - maps libcrypto into this process

    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "/libcrypto.so" in path:
                return ctypes.CDLL(path)
    return ctypes.CDLL("libcrypto.so.3")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
    lib.EVP_CIPHER_CTX_new.argtypes = ()
    lib.EVP_CIPHER_CTX_free.restype = None
    lib.EVP_CIPHER_CTX_free.argtypes = (ctypes.c_void_p,)
    lib.EVP_aes_128_cbc.restype = ctypes.c_void_p
    lib.EVP_aes_128_cbc.argtypes = ()
    for init, update, final in (("EVP_EncryptInit_ex", "EVP_EncryptUpdate", "EVP_EncryptFinal_ex"),
                                ("EVP_DecryptInit_ex", "EVP_DecryptUpdate", "EVP_DecryptFinal_ex")):
        getattr(lib, init).argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                       ctypes.c_char_p)
        getattr(lib, update).argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                         ctypes.c_char_p, ctypes.c_int)
        getattr(lib, final).argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int))
        for name in (init, update, final):
            getattr(lib, name).restype = ctypes.c_int
    return lib


_lib = _bind(_libcrypto())
_AES_128_CBC = _lib.EVP_aes_128_cbc()


def _aes_cbc(encrypt: bool, key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CBC with PKCS#7 padding (OpenSSL's default); a bad padding raises InvalidToken."""
    if encrypt:
        init, update, final = _lib.EVP_EncryptInit_ex, _lib.EVP_EncryptUpdate, _lib.EVP_EncryptFinal_ex
    else:
        init, update, final = _lib.EVP_DecryptInit_ex, _lib.EVP_DecryptUpdate, _lib.EVP_DecryptFinal_ex
    ctx = _lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        out = ctypes.create_string_buffer(len(data) + 16)
        body, tail = ctypes.c_int(0), ctypes.c_int(0)
        if init(ctx, _AES_128_CBC, None, key, iv) != 1:
            raise InvalidToken("cipher initialisation failed")
        if update(ctx, out, ctypes.byref(body), data, len(data)) != 1:
            raise InvalidToken("cipher update failed")
        if final(ctx, ctypes.byref(out, body.value), ctypes.byref(tail)) != 1:
            raise InvalidToken("bad padding")
        return out.raw[:body.value + tail.value]
    finally:
        _lib.EVP_CIPHER_CTX_free(ctx)


class Fernet:
    """A Fernet key (urlsafe base64 of 32 bytes: HMAC key, then AES key), as PySyncObj uses one."""

    def __init__(self, key: bytes) -> None:
        raw = base64.urlsafe_b64decode(key)
        if len(raw) != 32:
            raise ValueError("a Fernet key is 32 url-safe base64-encoded bytes")
        self._signing, self._encryption = raw[:16], raw[16:]

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        iv = os.urandom(16)
        signed = bytes([VERSION]) + struct.pack(">Q", current_time) + iv + _aes_cbc(True, self._encryption, iv, data)
        return base64.urlsafe_b64encode(signed + hmac.new(self._signing, signed, hashlib.sha256).digest())

    def _verified(self, token: bytes) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token)
        except (TypeError, binascii.Error):
            raise InvalidToken("not base64") from None
        if len(raw) < _HEADER + 16 + _MAC or raw[0] != VERSION:
            raise InvalidToken("not a Fernet token")
        if not hmac.compare_digest(hmac.new(self._signing, raw[:-_MAC], hashlib.sha256).digest(), raw[-_MAC:]):
            raise InvalidToken("bad signature")
        return raw

    def extract_timestamp(self, token: bytes) -> int:
        return struct.unpack(">Q", self._verified(token)[1:9])[0]

    def decrypt(self, token: bytes) -> bytes:
        raw = self._verified(token)
        return _aes_cbc(False, self._encryption, raw[9:_HEADER], raw[_HEADER:-_MAC])
