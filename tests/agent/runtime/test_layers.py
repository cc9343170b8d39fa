"""Containers on layered images for real: overlay lower dirs in order, whiteouts, a flattened deep
image, the image's user (uid, groups, capabilities, HOME) for the command and for exec, and the
stop signal."""
from __future__ import annotations

import io
import signal
import tarfile
import time
from pathlib import Path

import pytest

from cantainer_agent.runtime import DEFAULT_CAPS, ContainerSpec, LayerStore, StartError
from cantainer_agent.runtime.linux import caps_mask

from .conftest import ALPINE_SHA256, base, diff_id_of
from .test_container import exec_in, run_to_exit, spec

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

# The image's users and groups, whatever the base image has (the first layer replaces both files).
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000:web:/home/web:/bin/sh\n"
GROUP = b"root:x:0:root\nbin:x:1:root\nwww-data:x:82:web\nweb:x:1000:\n"


def _tar_layer(path: Path, members: list[tuple[str, bytes | None, int]]) -> tuple[str, str]:
    """A plain-tar layer (digest = diff_id) of (name, data or None for a directory, mode)."""
    with tarfile.open(path, "w") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    import hashlib

    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, digest


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The base image, a layer with /etc/motd, /etc/apk/old and the users, a layer that whites out
    /etc/motd, makes /etc/apk opaque and adds user web's home, and a layer on top."""
    work = tmp_path_factory.mktemp("layers")
    store = LayerStore(str(work / "store"))
    image = base()
    bottom = diff_id_of(image.path)
    store.import_layer(str(image.path), f"sha256:{image.sha256}", bottom)
    ids = [bottom]
    for name, members in (
        ("first", [("etc", None, 0o755), ("etc/motd", b"welcome\n", 0o644), ("etc/passwd", PASSWD, 0o644),
                   ("etc/group", GROUP, 0o644), ("etc/apk", None, 0o755), ("etc/apk/old", b"x", 0o644)]),
        ("second", [("etc", None, 0o755), ("etc/.wh.motd", b"", 0o644), ("etc/apk", None, 0o755),
                    ("etc/apk/.wh..wh..opq", b"", 0o644), ("etc/apk/only-this", b"x", 0o644), ("home", None, 0o755),
                    ("home/web", None, 0o755), ("layer", b"second\n", 0o644)]),
        ("third", [("layer", b"third\n", 0o644)]),
    ):
        digest, diff_id = _tar_layer(work / f"{name}.tar", members)
        store.import_layer(str(work / f"{name}.tar"), digest, diff_id)
        ids.append(diff_id)
    return store, ids


def test_layers_stack_in_order_with_whiteouts_and_opaque_dirs(runtime, image):
    store, ids = image
    script = "cat /layer; ls /etc/apk; test -e /etc/motd && echo motd || echo no-motd; . /etc/os-release; echo $ID"
    runtime.start(spec("stack", ["/bin/sh", "-c", script]), store.lower_dirs(ids))
    info = runtime.wait("stack", timeout=30)
    assert info.exit_code == 0
    assert runtime.read_logs("stack").decode().split() == ["third", "only-this", "no-motd", base().os_release["ID"]]
    # lower dirs are the layer store's own directories: nothing was copied for this container
    assert Path(store.path(ids[1]), "etc/motd").exists()


def test_a_flattened_deep_image_looks_the_same(runtimes, image):
    store, ids = image
    deep = LayerStore(store.root, max_lower_bytes=10)  # as if the layers did not fit in the mount options
    [flat] = deep.lower_dirs(ids)
    assert flat.startswith(f"{store.root}/flat/")
    runtime = runtimes.make()
    info, log = run_to_exit(runtime, [flat], "flat", ["/bin/sh", "-c", "cat /layer; ls /etc/apk; ls /etc/motd"])
    assert log.split()[:2] == ["third", "only-this"] and info.exit_code == 1
    assert "No such file" in runtime.read_logs("flat", ("stderr",)).decode()


def test_the_image_user_with_groups_home_and_no_capabilities(runtime, runtimes, image):
    store, ids = image
    lowers = store.lower_dirs(ids)
    script = "id -u; id -g; id -G; echo $HOME; grep CapEff /proc/self/status; sleep 100"
    runtime.start(spec("web", ["/bin/sh", "-c", script], user="web"), lowers)
    deadline = time.monotonic() + 10
    while len(runtime.read_logs("web").decode().splitlines()) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = runtime.read_logs("web").decode().splitlines()
    assert lines[:4] == ["1000", "1000", "1000 82", "/home/web"]
    assert lines[4].split() == ["CapEff:", "0000000000000000"]
    # exec runs as the container's user too
    result = exec_in(runtimes, "web", "sh", "-c", "id -u; echo $HOME")
    assert result.returncode == 0 and result.stdout.split() == ["1000", "/home/web"], result.stderr
    runtime.remove("web", force=True)
    info, log = run_to_exit(runtime, lowers, "num", ["/bin/sh", "-c", "id -u; id -g; id -G; echo $HOME"],
                            user="4242:4343")
    assert log.split() == ["4242", "4343", "4343", "/"]
    info, log = run_to_exit(runtime, lowers, "root",
                            ["/bin/sh", "-c", "id -G; echo $HOME; grep CapEff /proc/self/status"])
    groups, home, caps = log.splitlines()
    assert groups.split()[:2] == ["0", "1"] and home == "/root"  # root's groups from the image's /etc/group
    assert caps.split()[1] == f"{caps_mask(DEFAULT_CAPS):016x}"


def test_an_unknown_user_is_a_start_error_and_leaves_nothing(runtime, runtimes, image):
    store, ids = image
    with pytest.raises(StartError, match="nobody-here"):
        runtime.start(spec("nouser", ["/bin/true"], user="nobody-here"), store.lower_dirs(ids))
    assert runtime.list() == []


def test_stop_sends_the_image_stop_signal_first(runtime, image):
    store, ids = image
    script = "trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 0.05; done"
    runtime.start(spec("sig", ["/bin/sh", "-c", script], stop_signal=int(signal.SIGUSR1)), store.lower_dirs(ids))
    deadline = time.monotonic() + 10
    while "ready" not in runtime.read_logs("sig").decode() and time.monotonic() < deadline:
        time.sleep(0.02)
    info = runtime.stop("sig", timeout=10)
    assert info.exit_code == 0 and info.signal is None
    assert "got-usr1" in runtime.read_logs("sig").decode()


def test_spec_refuses_bad_users_and_signals():
    from cantainer_agent.runtime import SpecError

    for bad in ({"user": "a b"}, {"user": "a:b:c"}, {"stop_signal": 0}, {"stop_signal": "TERM"}):
        with pytest.raises(SpecError):
            ContainerSpec(id="x", name="x", image=ALPINE_SHA256, **bad)
    assert ContainerSpec.from_dict(ContainerSpec(id="x", name="x", image=ALPINE_SHA256, user="web:1",
                                                 stop_signal=3).to_dict()).user == "web:1"
