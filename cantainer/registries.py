"""Registries from the workstation: credentials from ``[registries."HOST:PORT"]`` and pulls into the store.

``pull(store, reference, settings, platform)`` resolves a tag to a digest once, keeps the index (if
any), the platform's manifest and config, and downloads only the layers the store lacks, each
verified by digest; then it names the image in ``tags.json``. The password is read from
``password_file`` (which must not be readable by group or others) when a client is made, and goes
nowhere else: not to argv, logs or errors.
"""
from __future__ import annotations

import os
import stat

from cantainer.image_store import ImageError, RegistryUnreachable, RunImage, Store
from cantainer.inventory import RegistrySettings
from cantainer_agent.images.errors import ImageSourceError, Unreachable
from cantainer_agent.images.manifest import Platform, check_layer_type
from cantainer_agent.images.reference import Reference
from cantainer_agent.images.registry import Credentials, RegistryClient


def credentials(settings: RegistrySettings) -> Credentials | None:
    if settings.username is None or settings.password_file is None:
        return None
    path = settings.password_file
    where = f'[registries."{settings.host}"] password_file {path}'
    try:
        info = os.stat(path)
        if info.st_mode & 0o077:
            raise ImageError(f"{where} is readable by others (mode {stat.S_IMODE(info.st_mode):04o})",
                             f"chmod 600 {path}")
        with open(path, encoding="utf-8") as handle:
            password = handle.read().rstrip("\r\n")
    except OSError as error:
        raise ImageError(f"{where}: {error.strerror}", "fix password_file in the inventory") from None
    if not password:
        raise ImageError(f"{where} is empty", "write the registry password into it")
    return Credentials(settings.username, password)


def client(settings: RegistrySettings) -> RegistryClient:
    return RegistryClient(settings.host, credentials(settings), insecure=settings.insecure)


def pull(store: Store, reference: Reference, settings: RegistrySettings, platform: Platform) -> RunImage:
    """Pull *reference* for *platform* into *store* (only what is missing) and return it."""
    registry = client(settings)
    try:
        resolved = registry.resolve(reference, platform, have=lambda digest: store.read(digest)
                                    if store.has(digest) else None)
        for digest, body in resolved.blobs.items():
            store.put_bytes(body, digest)
        for layer in resolved.manifest.layers:
            check_layer_type(str(reference), layer)
            if store.has(layer.digest):
                continue
            temp = store.temp_path()
            registry.fetch_blob(reference.repository, layer.digest, str(temp), layer.size,
                                f"{reference} layer {layer.digest[:19]}…")
            store.adopt(temp, layer.digest)
    except Unreachable as error:
        raise RegistryUnreachable(str(error), f'check the address, or [registries."{reference.registry}"] in the '
                                              f'inventory') from None
    except ImageSourceError as error:
        raise ImageError(str(error)) from None
    name = f"{reference.name}:{reference.tag}" if reference.tag else f"{reference.name}@{resolved.digest}"
    store.tag(name, resolved.digest, f"pulled from {reference.registry}")
    return store.image(str(reference), resolved.digest, platform)
