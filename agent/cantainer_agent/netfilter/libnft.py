"""A minimal ctypes binding of libnftables' JSON API (``libnftables.so.1``, Debian/Ubuntu ``libnftables1``).

Why not python3-nftables: hosts need only python3, and every dependency is pushed to every host;
the library itself ships with the nft tool and on standard Ubuntu Server installs. Five calls, as
``nftables.py`` of the nftables project uses them: a context per ``Nft``, JSON output (which also
makes the library accept JSON input), buffered output and errors, ``nft_run_cmd_from_buffer``.
One command batch is one netlink transaction: it applies whole or not at all. The context acts
in the network namespace of the calling thread. ``Nft`` is thread-safe (one lock per context).
"""
from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

from ..errors import AgentError

LIBRARY = "libnftables.so.1"
PACKAGE_HINT = "install the package libnftables1 (Debian/Ubuntu: apt-get install libnftables1)"
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


class NftError(AgentError):
    """nftables refused a command batch; nothing of the batch was applied."""


class NftUnavailable(NftError):
    """libnftables cannot be loaded on this host."""


def _load() -> ctypes.CDLL:
    global _lib, _lib_error
    with _lib_lock:
        if _lib is None and _lib_error is None:
            try:
                lib = ctypes.CDLL(LIBRARY, use_errno=True)
            except OSError as exc:
                _lib_error = f"{LIBRARY} cannot be loaded ({exc}): {PACKAGE_HINT}"
            else:
                lib.nft_ctx_new.restype = ctypes.c_void_p
                lib.nft_ctx_new.argtypes = (ctypes.c_uint32,)
                lib.nft_ctx_free.argtypes = (ctypes.c_void_p,)
                lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
                lib.nft_ctx_output_get_flags.argtypes = (ctypes.c_void_p,)
                lib.nft_ctx_output_set_flags.argtypes = (ctypes.c_void_p, ctypes.c_uint)
                for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                    getattr(lib, name).restype = ctypes.c_int
                    getattr(lib, name).argtypes = (ctypes.c_void_p,)
                for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                    getattr(lib, name).restype = ctypes.c_char_p
                    getattr(lib, name).argtypes = (ctypes.c_void_p,)
                lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
                lib.nft_run_cmd_from_buffer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
                _lib = lib
        if _lib is None:
            raise NftUnavailable(_lib_error)
        return _lib


def nft_available() -> str | None:
    """None when libnftables loads, else the one-line reason (with the package to install)."""
    try:
        _load()
    except NftUnavailable as exc:
        return str(exc)
    return None


class Nft:
    """One libnftables context. ``run`` takes a list of JSON commands and returns the parsed output."""

    def __init__(self) -> None:
        self._lib = _load()
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx = ctypes.c_void_p(ctx)
        flags = self._lib.nft_ctx_output_get_flags(self._ctx)
        self._lib.nft_ctx_output_set_flags(self._ctx, flags | _OUTPUT_JSON | _OUTPUT_HANDLE)
        if self._lib.nft_ctx_buffer_output(self._ctx) or self._lib.nft_ctx_buffer_error(self._ctx):
            self.close()
            raise NftError("cannot buffer libnftables output")
        self._lock = threading.Lock()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run one batch (one transaction); the ``nftables`` array of the answer, [] if none."""
        text = json.dumps({"nftables": commands}, separators=(",", ":"))
        with self._lock:
            if self._ctx is None:
                raise NftError("nftables context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            lines = [line.strip() for line in error.decode("utf-8", "replace").splitlines() if line.strip()]
            raise NftError("nftables: " + (lines[0] if lines else f"command failed (status {rc})"))
        if not output.strip():
            return []
        try:
            return json.loads(output).get("nftables", [])
        except ValueError as exc:
            raise NftError(f"nftables: unreadable JSON output ({exc})") from None

    def close(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            self._lib.nft_ctx_free(ctx)

    def __enter__(self) -> "Nft":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
