"""``image.status {sha256}`` -> ``{present}``; ``image.import {sha256, path}`` -> ``{sha256}``.

The workstation stages an image tarball in ``images/incoming`` over SFTP; the import verifies its
sha256 and extracts it once (runtime/images.py). The staged file is always removed.
"""
from __future__ import annotations

import os
from typing import Callable

from .. import layout
from ..runtime import ChecksumMismatch, ImageError
from ..workload import Workload
from .errors import rejected


def handlers(workload: Workload) -> dict[str, Callable[[dict], object]]:
    images = workload.images
    incoming = layout.image_incoming_dir(workload.cfg.data_dir)

    def status(params: dict) -> dict:
        return {"present": images.has(params.get("sha256", ""))}

    def import_(params: dict) -> dict:
        sha256, path = params.get("sha256", ""), params.get("path", "")
        if not isinstance(path, str) or os.path.dirname(os.path.abspath(path)) != incoming:
            raise rejected(f"image tarballs are imported from {incoming} only")
        try:
            with workload.import_lock:  # concurrent `run`s may push the same image at once
                if not images.has(sha256):
                    images.import_tarball(path, sha256)
        except ChecksumMismatch as error:
            raise rejected(f"image sha256 mismatch: {error}") from None
        except ImageError as error:
            raise rejected(f"image refused: {error}") from None
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return {"sha256": sha256}

    return {"image.status": status, "image.import": import_}
