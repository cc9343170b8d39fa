"""Test images, built for real with Debian's `umoci` and pushed with `skopeo`.

``build_layout(dir)`` makes an OCI layout holding:

* ``app`` — 3 layers (~10 MB; 4 on the busybox base, see ``base_layers``): the base image; a
  layer that deletes /etc/motd through a whiteout, makes /etc/apk opaque, adds a user ``web`` (uid
  1000, in group ``www-data``) and an entrypoint script; a layer adding Debian's busybox-static as a
  web server with a page. Config: Entrypoint ``/app/entry.sh``, Cmd busybox httpd on 8080, Env,
  WorkingDir /srv/www, User web, ExposedPorts 8080/tcp, StopSignal SIGUSR1;
* ``multi`` — an OCI index for linux/amd64, linux/arm64 and linux/arm/v7 (each the Alpine layer and
  a marker file /platform naming its platform; the arm ones are only labelled so).

``push(layout, tag, registry_host, repo, …)`` copies a tag to a registry (``--all`` for an index,
``v2s2`` for Docker schema-2 media types); ``docker_archive`` writes a ``docker save`` archive.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000:web:/home/web:/bin/sh\n"
GROUP = b"root:x:0:root\nbin:x:1:root\nwww-data:x:82:web\nweb:x:1000:\n"
BUSYBOX_STATIC = Path("/bin/busybox")  # Debian's busybox-static
ENTRY = b"""#!/bin/sh
echo "entry: args=$* uid=$(id -u) gid=$(id -g) groups=$(id -G) pwd=$(pwd) greeting=$GREETING home=$HOME"
exec "$@"
"""


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"
    return result.stdout


def _member(name: str, data: bytes | None = None, mode: int = 0o644, kind: bytes = tarfile.REGTYPE,
            link: str = "", uid: int = 0, gid: int = 0) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid, info.mtime = kind, mode, link, uid, gid, 1_700_000_000
    info.size = len(data) if data is not None else 0
    return info, io.BytesIO(data) if data is not None else None


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, data)
    return path


def base_layers(work: Path) -> list[Path]:
    """The base image (lab/rootfs.py: the pinned Alpine, else busybox) as a plain tar, byte for byte
    (so a host that holds the base image holds this layer), then — only where the base lacks them —
    a layer adding what the later layers delete or hide: /etc/motd and a file in /etc/apk."""
    from lab.rootfs import base_image

    path = work / "l1-base.tar"
    path.write_bytes(gzip.decompress(base_image().path.read_bytes()))
    with tarfile.open(path) as tar:
        names = {name.removeprefix("./").rstrip("/") for name in tar.getnames()}
    extra = [m for name, m in (("etc/motd", _member("./etc/motd", b"welcome\n")),
                               ("etc/apk", _member("./etc/apk/", mode=0o755, kind=tarfile.DIRTYPE)),
                               ("etc/apk/world", _member("./etc/apk/world", b"busybox\n"))) if name not in names]
    return [path, _tar(work / "l1-lower.tar", extra)] if extra else [path]


def layers(work: Path) -> list[Path]:
    """The layers of ``app`` as plain tars: the base image's (one, or two where it needed the lower
    files), the config layer, the httpd layer."""
    base = base_layers(work)
    second = _tar(work / "l2-config.tar", [
        _member("etc/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("etc/.wh.motd"),
        _member("etc/passwd", PASSWD), _member("etc/group", GROUP),
        _member("etc/apk/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("etc/apk/.wh..wh..opq"), _member("etc/apk/only-this", b"opaque\n"),
        _member("home/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("home/web/", mode=0o700, kind=tarfile.DIRTYPE, uid=1000, gid=1000),
        _member("app/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("app/entry.sh", ENTRY, mode=0o755),
    ])
    third = _tar(work / "l3-httpd.tar", [
        _member("usr/", mode=0o755, kind=tarfile.DIRTYPE), _member("usr/local/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("usr/local/bin/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("usr/local/bin/busybox", BUSYBOX_STATIC.read_bytes(), mode=0o755),
        _member("srv/", mode=0o755, kind=tarfile.DIRTYPE), _member("srv/www/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("srv/www/index.html", b"served by busybox-static in a layered image\n"),
    ])
    return [*base, second, third]


def _add_layers(layout: Path, tag: str, tars: list[Path]) -> None:
    run("umoci", "new", "--image", f"{layout}:{tag}")
    for tar in tars:
        run("umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", str(tar))


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest[7:]).read_bytes()


def _descriptor(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    return next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                == tag)


def build_layout(work: Path) -> Path:
    """An OCI layout with the tags ``app`` and ``multi`` (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "layout"
    if layout.exists():
        shutil.rmtree(layout)
    run("umoci", "init", "--layout", str(layout))
    tars = layers(work)
    _add_layers(layout, "app", tars)
    run("umoci", "config", "--image", f"{layout}:app", "--config.entrypoint", "/app/entry.sh",
        "--config.cmd", "/usr/local/bin/busybox", "--config.cmd", "httpd", "--config.cmd", "-f",
        "--config.cmd", "-p", "--config.cmd", "8080", "--config.env", "GREETING=hello-from-image",
        "--config.env", "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--config.workingdir", "/srv/www",
        "--config.user", "web", "--config.exposedports", "8080/tcp", "--config.stopsignal", "SIGUSR1")
    platforms = [("amd64", None), ("arm64", None), ("arm", "v7")]
    entries = []
    for arch, variant in platforms:
        label = f"linux/{arch}" + (f"/{variant}" if variant else "")
        tag = f"p-{arch}{variant or ''}"
        marker = _tar(work / f"marker-{arch}{variant or ''}.tar", [_member("platform", label.encode() + b"\n")])
        _add_layers(layout, tag, [tars[0], marker])
        run("umoci", "config", "--image", f"{layout}:{tag}", "--architecture", arch, "--config.cmd", "/bin/sh")
        descriptor = _descriptor(layout, tag)
        platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        entries.append({"mediaType": descriptor["mediaType"], "digest": descriptor["digest"],
                        "size": descriptor["size"], "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
                             "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    (layout / "index.json").write_text(json.dumps(top))
    return layout


def push(layout: Path, tag: str, registry: str, repository: str, *, all_platforms: bool = False,
         docker_format: bool = False, creds: tuple[str, str] | None = None) -> str:
    """Copy ``layout:tag`` to ``registry/repository:tag`` over plain HTTP; returns the pushed digest."""
    digest_file = layout.parent / f"{repository.replace('/', '_')}-{tag}.digest"
    argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file)]
    if all_platforms:
        argv.append("--all")
    if docker_format:
        argv += ["--format", "v2s2"]
    if creds:
        argv += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    run(*argv, f"oci:{layout}:{tag}", f"docker://{registry}/{repository}:{tag}")
    return digest_file.read_text().strip()


def docker_archive(layout: Path, tag: str, path: Path, name: str) -> Path:
    """A `docker save`-format archive of ``layout:tag`` named *name* (``repo:tag``)."""
    if path.exists():
        path.unlink()
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{path}:{name}")
    return path


def manifest_of(layout: Path, tag: str) -> dict:
    return json.loads(_blob(layout, _descriptor(layout, tag)["digest"]))


WEB_CMD = ("trap 'kill $!; exit 0' TERM; /usr/local/bin/busybox httpd -f -p 80 -h /srv/www & wait")


def build_web_layout(work: Path, versions: tuple[str, ...] = ("v1", "v2")) -> Path:
    """An OCI layout with ``web-<version>`` tags for the service tests: the base image, Debian's
    busybox-static, and a page saying the version; Cmd runs busybox httpd on port 80 under a shell
    that stops it on SIGTERM. The config carries a docker HEALTHCHECK (fetch the page every 0.5 s),
    which umoci cannot write, so it is added to the config blob here."""
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "web-layout"
    if layout.exists():
        shutil.rmtree(layout)
    run("umoci", "init", "--layout", str(layout))
    base = base_layers(work)[0]  # the base image's own layer: shared with what hosts already hold
    server = _tar(work / "l-web-busybox.tar", [
        _member("usr/", mode=0o755, kind=tarfile.DIRTYPE), _member("usr/local/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("usr/local/bin/", mode=0o755, kind=tarfile.DIRTYPE),
        _member("usr/local/bin/busybox", BUSYBOX_STATIC.read_bytes(), mode=0o755)])
    for version in versions:
        tag = f"web-{version}"
        page = _tar(work / f"l-web-{version}.tar", [
            _member("srv/", mode=0o755, kind=tarfile.DIRTYPE), _member("srv/www/", mode=0o755, kind=tarfile.DIRTYPE),
            _member("srv/www/index.html", f"{version}\n".encode())])
        _add_layers(layout, tag, [base, server, page])
        run("umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", "/bin/sh", "--config.cmd", "-c",
            "--config.cmd", WEB_CMD, "--config.exposedports", "80/tcp")
        # `timeout`, not wget's -T: Debian's busybox-static 1.35 wget crashes (SIGSEGV) on -T
        set_healthcheck(layout, tag, {"Test": ["CMD-SHELL", "timeout 1 wget -q -O /dev/null http://127.0.0.1/"],
                                      "Interval": 500_000_000, "Timeout": 2_000_000_000, "Retries": 2})
    return layout


def set_healthcheck(layout: Path, tag: str, healthcheck: dict) -> None:
    """Add docker's Healthcheck to the config of ``layout:tag`` (new config and manifest blobs)."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                 == tag)
    manifest = json.loads(_blob(layout, entry["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    config.setdefault("config", {})["Healthcheck"] = healthcheck

    def store(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return digest

    config_bytes = json.dumps(config).encode()
    manifest["config"].update(digest=store(config_bytes), size=len(config_bytes))
    manifest_bytes = json.dumps(manifest).encode()
    entry.update(digest=store(manifest_bytes), size=len(manifest_bytes))
    (layout / "index.json").write_text(json.dumps(index))
