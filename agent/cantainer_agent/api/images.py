"""Image methods of the agent API: this host's layer store.

``image.status {layers: [diff_id]}`` -> ``{missing: [diff_id]}``: ``images/incoming`` exists if any are
    missing; the host also starts preparing for a container start (Workload.prepare).
``image.import {digest, diff_id, path}`` -> ``{diff_id}``: a blob the workstation staged in
    ``images/incoming`` over SFTP, verified (blob digest and diff_id) and extracted once; the staged
    file is always removed.
``image.pull {reference, insecure, platform?}`` -> ``{reference, digest, config, layers, pulled}``: the
    host pulls from the registry itself (``pull = "hosts"``), credentials from the file the workstation
    wrote beside the cluster secret (layout.registry_auth_file), never from the request.
``image.ls`` -> ``{layers: [{diff_id, size, in_use}]}``;  ``image.prune`` -> ``{removed: [diff_id]}``.
"""
from __future__ import annotations

import json
import os
import secrets
from typing import Callable

from .. import layout
from ..images.errors import ImageSourceError
from ..runtime import ChecksumMismatch, ImageError
from ..workload import Workload
from .errors import rejected


def _diff_ids(params: dict, key: str = "layers") -> list[str]:
    value = params.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 1000:
        raise rejected(f"{key} must be a list of layer digests")
    return value


def read_credentials(config_dir: str, registry: str):
    path = layout.registry_auth_file(registry, config_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise rejected(f"credentials of registry {registry} in {path} are unreadable: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("username"), str) \
            or not isinstance(data.get("password"), str):
        raise rejected(f"credentials of registry {registry} in {path} need a username and a password")
    from ..images.registry import Credentials  # the HTTP client is imported by a pull, not at start

    return Credentials(data["username"], data["password"])


def handlers(workload: Workload) -> dict[str, Callable[[dict], object]]:
    images = workload.images
    incoming = layout.image_incoming_dir(workload.cfg.data_dir)
    config_dir = os.path.dirname(workload.cfg.secret_file)

    def status(params: dict) -> dict:
        try:
            missing = images.missing(_diff_ids(params))
        except ImageError as error:
            raise rejected(str(error)) from None
        if missing:  # the workstation stages them there next (SFTP), without making it first
            os.makedirs(incoming, mode=0o700, exist_ok=True)
        workload.prepare()  # a run comes next, as a rule: its first start's work begins now
        return {"missing": missing}

    def import_blob(path: str, digest: str, diff_id: str) -> None:
        try:
            with workload.image_lock:
                images.import_layer(path, digest, diff_id)
        except ChecksumMismatch as error:
            raise rejected(f"image refused: digest mismatch: {error}") from None
        except ImageError as error:
            raise rejected(f"image refused: layer {str(diff_id)[:19]}…: {error}") from None

    def import_(params: dict) -> dict:
        digest, diff_id, path = params.get("digest", ""), params.get("diff_id", ""), params.get("path", "")
        if not isinstance(path, str) or os.path.dirname(os.path.abspath(path)) != incoming:
            raise rejected(f"layer blobs are imported from {incoming} only")
        try:
            import_blob(path, digest, diff_id)
        finally:
            if os.path.exists(path):
                os.unlink(path)
        workload.layers_changed()
        return {"diff_id": diff_id}

    def pull(params: dict) -> dict:
        from ..images.manifest import Platform, check_layer_type, host_platform  # a pull's, not the start's
        from ..images.reference import parse_reference

        try:
            reference = parse_reference(params.get("reference", ""))
            platform = Platform.parse(params["platform"]) if params.get("platform") else host_platform()
            from ..images.registry import RegistryClient

            client = RegistryClient(reference.registry, read_credentials(config_dir, reference.registry),
                                    insecure=bool(params.get("insecure")))
            resolved = client.resolve(reference, platform)
        except ImageSourceError as error:
            raise rejected(str(error)) from None
        layers = resolved.manifest.layers
        diff_ids = list(resolved.config.diff_ids)
        pulled = []
        os.makedirs(incoming, mode=0o700, exist_ok=True)
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            if images.has(diff_id):
                continue
            check_layer_type(str(reference), layer)
            staged = os.path.join(incoming, f"{layer.digest[7:]}.{secrets.token_hex(4)}.pull")
            try:
                client.fetch_blob(reference.repository, layer.digest, staged, layer.size,
                                  f"{reference} layer {layer.digest[:19]}…")
                import_blob(staged, layer.digest, diff_id)
            except ImageSourceError as error:
                raise rejected(str(error)) from None
            finally:
                if os.path.exists(staged):
                    os.unlink(staged)
            pulled.append(diff_id)
        if pulled:
            workload.layers_changed()
        return {"reference": str(resolved.reference), "digest": resolved.digest,
                "config": resolved.config.to_dict(), "layers": diff_ids, "pulled": pulled}

    def ls(_params: dict) -> dict:
        in_use = images.layers_in_use(workload.runtime.lower_dirs_in_use())
        out = []
        for diff_id in images.list():
            try:
                size = images.info(diff_id).get("size")
            except (OSError, ValueError):
                size = None
            out.append({"diff_id": diff_id, "size": size, "in_use": diff_id in in_use})
        return {"layers": out}

    def prune(_params: dict) -> dict:
        removed = workload.prune_images()
        if removed:
            workload.layers_changed()
        return {"removed": removed}

    return {"image.status": status, "image.import": import_, "image.pull": pull, "image.ls": ls,
            "image.prune": prune}
