"""Container start: run /bin/true in the Alpine rootfs to completion, ours vs runc and crun.

    sudo .venv/bin/python -m bench.container_start [--quick] [-n 100]

Ours is ``cantainer_agent.runtime.Runtime`` used directly (as the agent does): ``start`` + ``wait``
until exited + ``remove`` (overlayfs, namespaces, cgroup, shim — and all of it torn down again).
That is what ``runc run`` / ``crun run`` do for one foreground container (create, start, wait,
delete), so the main rows compare those. An extra row gives ours without the teardown next to a
plain fork+exec of /bin/true.

The anchors run the same extracted rootfs from an OCI bundle (``runc spec``, then: args
["/bin/true"], terminal false, read-only root, a cgroup namespace added so the namespaces match
ours: pid, net, ipc, uts, mnt, cgroup). crun refuses this VM's hybrid cgroup layout ("cgroups in
hybrid mode not supported"), so a helper process runs both anchors inside a private mount namespace
(``unshare -m``) after ``umount -l /sys/fs/cgroup/unified`` — runc too, for a like-for-like view.
The helper gets one request per line, so the three are interleaved run by run (this machine is
noisy). The helper starts each anchor with ``subprocess.run``, as a container engine would.

runc and crun are Debian packages; if missing they are installed with apt-get (root needed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "agent") not in sys.path:
    sys.path.insert(0, str(REPO / "agent"))

from bench.results import percentile, row  # noqa: E402

ANCHORS = ("runc", "crun")
WARMUP = 3


def base_tarball() -> tuple[Path, str]:
    """The base image the tests use too (lab/rootfs.py): the pinned Alpine, else busybox; (path, sha256)."""
    from lab.rootfs import base_image

    image = base_image()
    return image.path, image.sha256


def ensure_anchors(install: bool = True) -> tuple[dict[str, str], list[str]]:
    """Paths of runc/crun, installing the Debian packages if missing; plus notes."""
    notes = []
    missing = [name for name in ANCHORS if not shutil.which(name)]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                                  env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            notes.append(f"apt-get install {' '.join(missing)} failed: {proc.stderr.strip()[-200:]}")
    found = {name: shutil.which(name) for name in ANCHORS if shutil.which(name)}
    for name in ANCHORS:
        if name not in found:
            notes.append(f"{name} is not installed: its rows have no anchor value")
    return found, notes


def make_bundle(runc: str, bundle: Path, rootfs: str) -> None:
    bundle.mkdir()
    subprocess.run([runc, "spec"], cwd=bundle, check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config["root"] = {"path": rootfs, "readonly": True}
    namespaces = config["linux"].setdefault("namespaces", [])
    if not any(ns.get("type") == "cgroup" for ns in namespaces):
        namespaces.append({"type": "cgroup"})
    config_path.write_text(json.dumps(config, indent=1))


# -- the helper inside the private mount namespace ---------------------------------------------------
def helper_main(bundle: str, state_root: str, runtimes: dict[str, str]) -> None:
    """Serve 'NAME ID' lines: run that anchor once, answer with elapsed seconds (or 'error ...')."""
    from cantainer_agent.runtime.linux import MNT_DETACH, umount2

    try:
        umount2("/sys/fs/cgroup/unified", MNT_DETACH)
    except OSError:
        pass  # not mounted (pure v1 or pure v2 host)
    print("ready", flush=True)
    for line in sys.stdin:
        name, cid = line.split()
        exe = runtimes[name]
        root = os.path.join(state_root, name)
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "--root", root, "run", "--bundle", bundle, cid],
                              stdin=subprocess.DEVNULL, capture_output=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip().replace("\n", " | ")[-300:]
            subprocess.run([exe, "--root", root, "delete", "--force", cid], capture_output=True)
            print(f"error {name} exit {proc.returncode}: {err}", flush=True)
        else:
            print(f"{elapsed:.9f}", flush=True)


class Helper:
    def __init__(self, bundle: Path, state_root: Path, runtimes: dict[str, str]):
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", sys.executable, "-m", "bench.container_start",
             "--helper", str(bundle), str(state_root), json.dumps(runtimes)],
            cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            self.close()
            raise RuntimeError(f"OCI helper did not start: {first!r}")

    def run(self, name: str, cid: str) -> float:
        self.proc.stdin.write(f"{name} {cid}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(answer or "OCI helper died")
        return float(answer)

    def close(self) -> None:
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # by PID (Popen)
            self.proc.wait()


# -- the measurement ------------------------------------------------------------------------------
def measure(
    quick: bool = False, n: int | None = None, install: bool = True, notes: list[str] | None = None
) -> list[dict]:
    from cantainer.run_image import _diff_id_of_tarball
    from cantainer_agent.runtime import ContainerSpec, LayerStore, Runtime

    notes = notes if notes is not None else []
    if os.geteuid() != 0:
        notes.append("container start needs root (namespaces, overlayfs, cgroups): skipped")
        return []
    n = n or (20 if quick else 100)
    anchors, anchor_notes = ensure_anchors(install)
    notes.extend(anchor_notes)
    base = Path(tempfile.mkdtemp(prefix="cantainer-bench-start-"))
    # The agent's run dir (/run/cantainer: pids.json, attach sockets) is on a tmpfs on every host;
    # the state dir (writable layers, logs) on disk. /dev/shm is this machine's tmpfs.
    run_dir = Path(tempfile.mkdtemp(prefix="cantainer-bench-run-", dir="/dev/shm")) if os.path.isdir(
        "/dev/shm") else base / "run"
    cgroup_parent = f"cantainer-bench-{os.getpid()}"
    runtime = None
    helper = None
    samples: dict[str, list[float]] = {"ours": [], "ours_exit": [], "fork": [], **{a: [] for a in anchors}}
    try:
        store = LayerStore(str(base / "images"))
        tarball, sha256 = base_tarball()
        rootfs = store.import_layer(str(tarball), f"sha256:{sha256}", _diff_id_of_tarball(tarball, sha256))
        runtime = Runtime(str(base / "state"), str(run_dir), cgroup_parent)
        runtime.warm_up()
        if anchors:
            make_bundle(anchors.get("runc") or anchors["crun"], base / "bundle", rootfs)
            (base / "oci-state").mkdir()
            helper = Helper(base / "bundle", base / "oci-state", anchors)

        def ours(i: int) -> tuple[float, float]:
            cid = f"bench-start-{i}"
            t0 = time.perf_counter()
            runtime.start(ContainerSpec(id=cid, name=cid, image=sha256, command=["/bin/true"]), rootfs)
            info = runtime.wait(cid, timeout=30)
            t1 = time.perf_counter()
            runtime.remove(cid)
            t2 = time.perf_counter()
            if info.state != "exited" or info.exit_code != 0:
                raise RuntimeError(f"/bin/true in our container ended {info.state} {info.exit_code}")
            return t2 - t0, t1 - t0

        for i in range(-WARMUP, n):
            full, to_exit = ours(i + WARMUP)
            t0 = time.perf_counter()
            subprocess.run(["/bin/true"], check=True)
            fork = time.perf_counter() - t0
            anchor_times = {}
            for name in list(anchors):
                try:
                    anchor_times[name] = helper.run(name, f"bench-{name}-{i + WARMUP}")
                except RuntimeError as exc:
                    notes.append(f"{name} failed, dropped from the run: {exc}")
                    del anchors[name]
                    samples.pop(name, None)
            if i >= 0:
                samples["ours"].append(full)
                samples["ours_exit"].append(to_exit)
                samples["fork"].append(fork)
                for name, value in anchor_times.items():
                    samples[name].append(value)
    finally:
        if helper is not None:
            helper.close()
        if runtime is not None:
            for info in runtime.list():
                try:
                    runtime.remove(info.id, force=True)
                except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                    notes.append(f"cleanup of container {info.id} failed: {exc}")
            runtime.close()
            try:
                runtime.cgroups.remove_parent()
            except Exception as exc:  # noqa: BLE001
                notes.append(f"cleanup of cgroup {cgroup_parent} failed: {exc}")
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    ms = lambda xs, p: 1000 * percentile(xs, p)  # noqa: E731
    rows = []
    for p in (50, 99):
        for name in ANCHORS:
            value = ms(samples[name], p) if samples.get(name) else None
            rows.append(row(f"container start /bin/true p{p} (n={n})", ms(samples["ours"], p), "ms",
                            f"{name} run", value))
    rows.append(row(f"container start→exit, no teardown p50 (n={n})", ms(samples["ours_exit"], 50), "ms",
                    "fork+exec /bin/true", ms(samples["fork"], 50)))
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--helper":
        helper_main(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int)
    args = ap.parse_args()
    from bench.results import print_table

    notes: list[str] = []
    rows = measure(args.quick, args.n, notes=notes)
    print_table(rows, "container start", notes)


if __name__ == "__main__":
    main()
