"""Volumes and bind mounts in the runtime: real mounts in the container's mount namespace.

Root only. What must hold: data written through a mount is the host directory's and outlives the
container; mounts are nosuid,nodev (and ro when asked); a volume starts as a copy of the image's
directory (docker's copy-up); nothing protected — the agent's directories, /proc, /sys, /dev — is
reachable through a bind, whatever symlinks, '..' or other paths to it a source takes; a target
resolves inside the container's root, never on the host.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from cantainer_agent.runtime import ContainerSpec, SpecError, StartError

from .conftest import ALPINE_SHA256

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def spec(cid: str, command, mounts=(), **kwargs) -> ContainerSpec:
    return ContainerSpec(id=cid, name=cid, image=ALPINE_SHA256, command=command, mounts=mounts, **kwargs)


def volume(path, target, readonly=False, name="data") -> dict:
    return {"kind": "volume", "source": str(path), "target": target, "readonly": readonly, "name": name}


def bind(path, target, readonly=False) -> dict:
    return {"kind": "bind", "source": str(path), "target": target, "readonly": readonly}


def run(runtime, lowers, cid, script, mounts=(), **kwargs) -> tuple[int, str, str]:
    runtime.start(spec(cid, ["/bin/sh", "-c", script], mounts, **kwargs), lowers)
    info = runtime.wait(cid, timeout=30)
    out = runtime.read_logs(cid, ("stdout",)).decode()
    err = runtime.read_logs(cid, ("stderr",)).decode()
    runtime.remove(cid)
    return info.exit_code, out, err


def mount_options(out: str, target: str) -> set[str]:
    """The options of the mount at *target* in a copy of /proc/self/mounts printed by the container."""
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == target:
            return set(fields[3].split(","))
    raise AssertionError(f"no mount at {target} in {out!r}")


def test_volume_data_outlives_the_container_and_the_mount_is_nosuid_nodev(runtime, alpine, tmp_path):
    data = tmp_path / "vol"
    data.mkdir()
    code, out, err = run(runtime, alpine, "writer", "echo kept > /data/file && cat /proc/self/mounts",
                         [volume(data, "/data")])
    assert code == 0, err
    assert {"nosuid", "nodev", "rw"} <= mount_options(out, "/data")
    assert (data / "file").read_text() == "kept\n"  # the host's directory, and the container is gone
    code, out, _ = run(runtime, alpine, "reader", "cat /data/file", [volume(data, "/data")])
    assert (code, out) == (0, "kept\n")


def test_a_read_only_volume_refuses_writes(runtime, alpine, tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    (data / "file").write_text("old\n")
    script = "echo new > /data/file 2>/dev/null && echo wrote || echo refused; cat /data/file; cat /proc/self/mounts"
    code, out, _ = run(runtime, alpine, "ro", script, [volume(data, "/data", readonly=True)])
    assert code == 0 and out.splitlines()[:2] == ["refused", "old"], out
    assert {"ro", "nosuid", "nodev"} <= mount_options(out, "/data")


def test_a_device_node_or_setuid_file_in_a_volume_grants_nothing(runtime, alpine, tmp_path):
    data = tmp_path / "dev"
    data.mkdir()
    script = textwrap.dedent("""\
        mknod /data/sda b 8 0 && echo made
        head -c 1 /data/sda >/dev/null 2>&1 && echo opened || echo refused
    """)
    code, out, _ = run(runtime, alpine, "devvol", script, [volume(data, "/data")], cap_add=["MKNOD"])
    assert "refused" in out.splitlines() and "opened" not in out, out


def test_an_empty_volume_starts_as_a_copy_of_the_images_directory(runtime, alpine, tmp_path):
    """docker's copy-up: the image's /seed (owner 1000:1000, mode 0750, a file, a symlink) seeds the
    volume once; a volume that holds something is never overwritten."""
    layer = tmp_path / "layer"
    (layer / "seed" / "sub").mkdir(parents=True)
    (layer / "seed" / "sub" / "conf").write_text("from the image\n")
    os.symlink("sub/conf", layer / "seed" / "link")
    for path in (layer / "seed", layer / "seed" / "sub", layer / "seed" / "sub" / "conf"):
        os.chown(path, 1000, 1000)
    os.chmod(layer / "seed", 0o750)
    data = tmp_path / "seeded"
    data.mkdir()
    code, out, err = run(runtime, [alpine, str(layer)], "seed", "cat /seed/link; stat -c '%u:%g %a' /seed",
                         [volume(data, "/seed")])
    assert code == 0, err
    assert out.splitlines() == ["from the image", "1000:1000 750"]
    assert (data / "sub" / "conf").stat().st_uid == 1000 and os.readlink(data / "link") == "sub/conf"
    (data / "sub" / "conf").write_text("changed\n")
    code, out, _ = run(runtime, [alpine, str(layer)], "seed2", "cat /seed/link", [volume(data, "/seed")])
    assert out == "changed\n"


def test_bind_mounts_of_a_directory_and_a_file(runtime, alpine, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from the host\n")
    single = tmp_path / "single.conf"
    single.write_text("one file\n")
    script = "cat /srv/in /etc/app.conf; echo back > /srv/out; cat /proc/self/mounts"
    code, out, err = run(runtime, alpine, "binds", script,
                         [bind(shared, "/srv"), bind(single, "/etc/app.conf", readonly=True)])
    assert code == 0, err
    assert out.splitlines()[:2] == ["from the host", "one file"]
    assert (shared / "out").read_text() == "back\n"
    assert {"nosuid", "nodev"} <= mount_options(out, "/srv")
    assert {"ro", "nosuid", "nodev"} <= mount_options(out, "/etc/app.conf")


@pytest.mark.parametrize("target, message", [
    ("data", "not an absolute path"),
    ("/", "would hide the image"),
    ("/proc/sys", "inside /proc"),
    ("/dev/shm", "inside /dev"),
    ("/sys", "inside /sys"),
    ("/a/../proc", "contains '..'"),
])
def test_targets_that_are_refused(tmp_path, target, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        spec("t", ["true"], [bind(tmp_path, target)])


@pytest.mark.parametrize("source, message", [
    ("/var/lib/cantainer", "it is /var/lib/cantainer"),
    ("/var/lib/cantainer/volumes/x", "inside /var/lib/cantainer"),
    ("/var/lib", "it contains /var/lib/cantainer"),
    ("/", "it contains"),
    ("/etc/cantainer", "it is /etc/cantainer"),
    ("/run/cantainer/agent.sock", "inside /run/cantainer"),
    ("/proc/1/root", "inside /proc"),
    ("/sys/fs/cgroup", "inside /sys"),
    ("/dev/sda", "inside /dev"),
    ("/srv/../var/lib/cantainer", "it is /var/lib/cantainer"),
    ("relative/path", "not an absolute path"),
])
def test_bind_sources_that_are_refused_by_name(source, message):
    with pytest.raises(SpecError, match=message):
        spec("t", ["true"], [bind(source, "/x")])


def test_bind_sources_that_resolve_to_protected_places_are_refused(runtime, alpine, tmp_path):
    """A symlink to the runtime's own state (or /proc) passes the spec's check by name; the start
    refuses it on the resolved path, and nothing is left behind."""
    os.makedirs(runtime.state_dir, exist_ok=True)
    to_state = tmp_path / "to-state"
    os.symlink(runtime.state_dir, to_state)
    to_proc = tmp_path / "sneaky"
    (tmp_path / "hop").mkdir()
    os.symlink("hop/" + "../" * 20 + "proc/self", to_proc)
    for source, needle in ((to_state, f"resolves to {runtime.state_dir}"), (to_proc, "inside /proc")):
        with pytest.raises(StartError, match=needle):
            runtime.start(spec("refused", ["true"], [bind(source, "/x")]), alpine)
        assert runtime.list() == []


def test_init_refuses_a_source_that_changed_after_the_check_and_another_path_to_a_protected_dir(tmp_path):
    """The check that counts is init's, on what the kernel opened: a source swapped for a symlink to
    /proc after the start's check, or a bind mount elsewhere of a protected directory (the same
    inode under another name), is refused there. Run in a child in its own mount namespace."""
    protected = tmp_path / "agent-data"
    (protected / "volumes").mkdir(parents=True)
    alias = tmp_path / "innocent"
    alias.mkdir()
    swapped = tmp_path / "swapped"
    os.symlink("/proc", swapped)
    program = textwrap.dedent(f"""\
        import os, sys
        from cantainer_agent.runtime import linux, volumes
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        linux.mount({str(protected)!r}, {str(alias)!r}, None, linux.MS_BIND)
        protected = [{str(protected)!r}, "/proc", "/sys", "/dev"]
        for source in ({str(alias)!r}, {str(alias / "volumes")!r}, {str(swapped)!r}):
            try:
                volumes.open_sources([{{"kind": "bind", "source": source, "target": "/x"}}], protected)
                print("opened", source)
            except volumes.MountRefused as error:
                print("refused:", error)
    """)
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("refused:") for line in lines), lines
    assert "another path to cantainer's or the kernel's own files" in lines[0]
    assert "another path" in lines[1]
    assert f"{swapped} (resolves to /proc) is refused: it is /proc" in lines[2]


def test_a_target_symlink_in_the_image_resolves_inside_the_container(runtime, alpine, tmp_path):
    """The image's /escape -> ../../../../tmp/HOST (and an absolute link) lead into the container's
    own /tmp, never the host's."""
    marker = f"volume-escape-{os.getpid()}"
    layer = tmp_path / "layer"
    layer.mkdir()
    os.symlink(f"../../../../../../tmp/{marker}", layer / "escape")
    os.symlink(f"/tmp/{marker}-abs", layer / "absolute")
    data = tmp_path / "v"
    data.mkdir()
    script = f"ls -d /tmp/{marker} /tmp/{marker}-abs && grep -c /tmp/{marker} /proc/self/mounts"
    code, out, err = run(runtime, [alpine, str(layer)], "escape", script,
                         [volume(data, "/escape"), bind(tmp_path / "v", "/absolute")])
    assert code == 0, err
    assert out.splitlines()[-1] == "2"
    assert not Path(f"/tmp/{marker}").exists() and not Path(f"/tmp/{marker}-abs").exists()


def test_a_target_that_leads_into_proc_through_the_image_is_refused(runtime, alpine, tmp_path):
    layer = tmp_path / "layer"
    layer.mkdir()
    os.symlink("/proc/sys/kernel", layer / "conf")
    data = tmp_path / "v"
    data.mkdir()
    with pytest.raises(StartError, match="target /conf leads into /proc in the image"):
        runtime.start(spec("intoproc", ["true"], [volume(data, "/conf")]), [alpine, str(layer)])
    assert runtime.list() == []


def test_a_missing_source_is_a_clear_error(runtime, alpine, tmp_path):
    with pytest.raises(StartError, match="does not exist on this host — create it first"):
        runtime.start(spec("missing", ["true"], [bind(tmp_path / "nope", "/x")]), alpine)
    (tmp_path / "dir").mkdir()
    with pytest.raises(StartError, match="is a directory, but /etc/hostname is a file"):
        runtime.start(spec("clash", ["true"], [bind(tmp_path / "dir", "/etc/hostname")]), alpine)
    assert runtime.list() == []


def test_exec_sees_the_mounts(runtimes, runtime, alpine, tmp_path):
    from .test_container import exec_in

    data = tmp_path / "vol"
    data.mkdir()
    (data / "f").write_text("seen by exec\n")
    runtime.start(spec("execvol", ["sleep", "60"], [volume(data, "/data")]), alpine)
    try:
        result = exec_in(runtimes, "execvol", "cat", "/data/f")
        assert (result.returncode, result.stdout) == (0, "seen by exec\n")
    finally:
        runtime.remove("execvol", force=True)


def test_a_spec_with_mounts_survives_its_record_on_disk(runtime, alpine, tmp_path):
    data = tmp_path / "vol"
    data.mkdir()
    runtime.start(spec("record", ["sleep", "60"], [volume(data, "/data", readonly=True)]), alpine)
    try:
        info = runtime.inspect("record")
        assert info.spec.mounts[0].to_dict() == volume(data, "/data", readonly=True)
        assert ContainerSpec.from_dict({k: v for k, v in info.spec.to_dict().items() if k != "mounts"}).mounts == ()
    finally:
        runtime.remove("record", force=True)


def test_a_restarted_container_gets_its_mounts_again_and_its_data(runtime, alpine, tmp_path):
    """A restart policy restarts from the record on disk: the volume is mounted again, its data kept."""
    data = tmp_path / "vol"
    data.mkdir()
    runtime.start(spec("again", ["/bin/sh", "-c", "echo run >> /data/runs; grep -c run /data/runs"],
                       [volume(data, "/data")]), alpine)
    assert runtime.wait("again", timeout=30).exit_code == 0
    runtime.restart("again")
    info = runtime.wait("again", timeout=30)
    assert info.exit_code == 0 and (data / "runs").read_text() == "run\nrun\n"
    assert runtime.read_logs("again", ("stdout",)).decode().split() == ["1", "2"]
    runtime.remove("again")
