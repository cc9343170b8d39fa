"""The image of a `run`: resolve what the user named, then make sure the host has every layer.

A name is, in this order: an ``[images.NAME]`` of the inventory or a built-in (``alpine``) — a
single pinned tarball, run as a one-layer image with ``Cmd ["/bin/sh"]``; a registry reference
``HOST[:PORT]/REPO[:TAG|@DIGEST]`` — pulled by the workstation (default; a tag is resolved to a
digest once, here) or, with ``pull = "hosts"``, by the host itself; else ``NAME[:TAG]`` of the
workstation's store (`image load`/`image pull`). A registry that cannot be reached at all is
replaced by the store's copy of the same name, if there is one (air-gapped hosts, loaded archives).
Pushing sends only the layers the host lacks (``image.status``), each staged over SFTP and
imported by the agent, which checks both digests again.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import secrets
from pathlib import Path

from cantainer import images as legacy
from cantainer.image_store import ImageError, LayerBlob, RegistryUnreachable, RunImage, Store
from cantainer.inventory import Inventory
from cantainer_agent import layout
from cantainer_agent.images.config import ImageConfig
from cantainer_agent.images.errors import BadReference, ImageSourceError
from cantainer_agent.images.manifest import Platform, host_platform
from cantainer_agent.images.reference import looks_like_registry, parse_local, parse_reference

IMAGE_INCOMING = layout.image_incoming_dir()
PULL_TIMEOUT = 1800  # seconds an agent may take to pull an image itself
IMPORT_TIMEOUT = 600


def store() -> Store:
    return Store(legacy.cache_dir())


def _diff_id_of_tarball(path: Path, sha256: str) -> str:
    """The diff_id of a pinned tarball, computed once and kept beside it in the cache."""
    cached = legacy.cache_dir() / f"{sha256}.diff_id"
    try:
        text = cached.read_text().strip()
        if text.startswith("sha256:") and len(text) == 71:
            return text
    except OSError:
        pass
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError) as error:
        raise ImageError(f"image tarball {path} cannot be read: {error}", "fix or re-download the tarball") from None
    diff_id = "sha256:" + digest.hexdigest()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(diff_id + "\n")
    except OSError:
        pass  # a read-only cache: computed again next time
    return diff_id


def tarball_image(name: str, inventory: Inventory) -> RunImage:
    resolved = legacy.resolve_image(name, inventory.images)
    diff_id = _diff_id_of_tarball(resolved.path, resolved.sha256)
    config = ImageConfig(cmd=("/bin/sh",), diff_ids=(diff_id,))
    digest = f"sha256:{resolved.sha256}"
    return RunImage(name, digest, config, (LayerBlob(digest, diff_id, resolved.path.stat().st_size, resolved.path),))


def is_tarball_image(name: str, inventory: Inventory) -> bool:
    return name in inventory.images or name in legacy.CATALOG


def local_image(name: str, platform: Platform, images: Store | None = None) -> RunImage:
    images = images or store()
    try:
        reference = parse_local(name)
    except BadReference as error:
        raise ImageError(str(error), "name an image like app:1.0 or registry.example.org/team/app:1.0") from None
    key = f"{reference.name}@{reference.digest}" if reference.digest and not reference.tag else \
        f"{reference.name}:{reference.tag}"
    digest = images.lookup(key)
    if digest is None and reference.digest and images.has(reference.digest):
        digest = reference.digest
    if digest is None:
        raise ImageError(f"unknown image {name!r}: not built in, not in the inventory's [images] and not loaded",
                         "see `cantainer image ls`; load an archive with `cantainer image load FILE`")
    if reference.digest and digest != reference.digest:
        raise ImageError(f"image {name!r}: the store has {key} at {digest[:19]}…, not {reference.digest[:19]}…",
                         "pull it by digest from its registry")
    return images.image(name, digest, platform)


def pull_to_store(inventory: Inventory, name: str, platform: Platform) -> RunImage:
    """A registry reference pulled into the workstation's store (or its stored copy, registry unreachable)."""
    from cantainer import registries

    try:
        reference = parse_reference(name)
    except BadReference as error:
        raise ImageError(str(error), "write it as HOST[:PORT]/REPO[:TAG] or HOST[:PORT]/REPO@sha256:DIGEST") from None
    images = store()
    if reference.digest and images.has(reference.digest):  # pinned and here: no network needed
        return images.image(name, reference.digest, platform)
    try:
        return registries.pull(images, reference, inventory.registry(reference.registry), platform)
    except RegistryUnreachable:
        try:
            return local_image(name, platform, images)
        except ImageError:
            pass
        raise


async def resolve(session, inventory: Inventory, name: str) -> RunImage:
    """The image *name* for the host of *session* (a containers.HostSession), its layers on the host."""
    if is_tarball_image(name, inventory):
        image = await asyncio.to_thread(tarball_image, name, inventory)
    elif looks_like_registry(name) and inventory.registry(name.partition("/")[0]).pull == "hosts":
        return await pull_on_host(session, inventory, name)
    else:
        platform = host_platform(session.machine)
        if looks_like_registry(name):
            image = await asyncio.to_thread(pull_to_store, inventory, name, platform)
        else:
            image = await asyncio.to_thread(local_image, name, platform)
    await push_layers(session, image)
    return image


async def push_layers(session, image: RunImage) -> list[str]:
    """Send the host the layers it lacks; returns their diff_ids."""
    wanted = [layer.diff_id for layer in image.layers]
    missing = set((await session.client.call("image.status", {"layers": wanted}))["missing"])
    pushed = []
    for layer in image.layers:
        if layer.diff_id not in missing or layer.diff_id in pushed:
            continue
        assert layer.path is not None
        staging = f"{IMAGE_INCOMING}/{layer.digest[7:]}.{secrets.token_hex(4)}"  # concurrent runs push separately
        # image.status made IMAGE_INCOMING, since a layer was missing
        await session.connection.write_file(staging, layer.path, 0o600)
        await session.client.call("image.import", {"digest": layer.digest, "diff_id": layer.diff_id,
                                                   "path": staging}, timeout=IMPORT_TIMEOUT)
        pushed.append(layer.diff_id)
    return pushed


async def pull_on_host(session, inventory: Inventory, name: str) -> RunImage:
    """``pull = "hosts"``: the host pulls; its credentials go to a 0600 file beside the cluster secret."""
    from cantainer import registries

    try:
        reference = parse_reference(name)
    except BadReference as error:
        raise ImageError(str(error), "write it as HOST[:PORT]/REPO[:TAG]") from None
    settings = inventory.registry(reference.registry)
    credentials = registries.credentials(settings)
    auth_file = layout.registry_auth_file(reference.registry)
    if credentials is not None:
        document = json.dumps({"username": credentials.username, "password": credentials.password}).encode()
        await session.connection.run(["install", "-d", "-m", "700", str(Path(auth_file).parent)])
        await session.connection.write_file(auth_file, document, 0o600)
    else:
        await session.connection.run(["rm", "-f", auth_file], check=False)
    result = await session.client.call("image.pull", {"reference": name, "insecure": settings.insecure},
                                       timeout=PULL_TIMEOUT)
    try:
        config = ImageConfig.from_dict(result["config"])
    except ImageSourceError as error:
        raise ImageError(str(error)) from None
    layers = tuple(LayerBlob("", diff_id, 0, None) for diff_id in result["layers"])
    return RunImage(name, result["digest"], config, layers)
