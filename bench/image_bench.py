"""Running a registry image: `cantainer run -d` of a 3-layer ~10 MB image beside `skopeo copy`.

A 2-host lab with a cluster; Debian's docker-registry on the workstation's lab bridge address;
the test image of tests/images/build.py (Alpine minirootfs, a config layer, busybox-static: 3
layers, ~10 MB uncompressed) pushed with skopeo. Timed, each round, through the CLI as a user
runs it (Python start-up included), median of the rounds:

* nothing cached: a fresh workstation store and no layer on the host — pull, push, extract, start;
* host has none of it: the workstation store is warm, the host's layers were pruned;
* cached: the host has every layer (a tag is still resolved against the registry once).

Anchor: `skopeo copy docker://REG/team/app:app oci:DIR:app` into a fresh directory — the same pull,
to local disk only (no push, no extraction, no container).
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.lab_cluster import cluster, lab_name
from bench.results import row
from bench.up_vs_ansible import CANTAINER, _run

LAB = "bim"


def measure(quick: bool, log=print) -> list[dict]:
    from tests.images.build import build_layout, push
    from tests.images.registry import Registry

    rounds = 3 if quick else 7
    work = Path(tempfile.mkdtemp(prefix="cantainer-bench-image-"))
    samples: dict[str, list[float]] = {"cold": [], "host-cold": [], "cached": [], "skopeo": []}
    try:
        layout = build_layout(work / "oci")
        with cluster(lab_name(LAB, "im"), 2, log) as (lab, inventory), \
                Registry(work / "registry", str(lab.load().gateway.ip)) as registry:
            push(layout, "app", registry.host, "team/app")
            text = inventory.read_text()
            at = text.index("[[hosts]]")
            bench_inventory = work / "inventory.toml"
            bench_inventory.write_text(f'{text[:at]}[registries."{registry.host}"]\ninsecure = true\n\n{text[at:]}')
            image = f"{registry.host}/team/app:app"

            def cli(*args: str, cache: Path) -> float:
                env = {**os.environ, "CANTAINER_CACHE": str(cache), "CANTAINER_INVENTORY": str(bench_inventory)}
                return _run([str(CANTAINER), *args], timeout=300, env=env)

            def run(name: str, cache: Path) -> float:
                return cli("run", "--host", "h2", "-n", "10.77.0.0/24", "--name", name, "-d", "--image", image,
                           cache=cache)

            warm = work / "store-warm"
            for index in range(rounds):
                cold = work / f"store-{index}"
                samples["cold"].append(run(f"cold-{index}", cold))
                cli("rm", "-f", f"cold-{index}", cache=cold)
                cli("image", "prune", cache=cold)  # the host has nothing again
                shutil.rmtree(cold, ignore_errors=True)
                if index == 0:
                    cli("image", "pull", image, cache=warm)
                samples["host-cold"].append(run(f"hc-{index}", warm))
                samples["cached"].append(run(f"cached-{index}", warm))
                for name in (f"hc-{index}", f"cached-{index}"):
                    cli("rm", "-f", name, cache=warm)
                cli("image", "prune", "--local", cache=warm)
                cli("image", "prune", cache=warm)
                target = work / f"skopeo-{index}"
                started = time.monotonic()
                _run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image}",
                      f"oci:{target}:app"], timeout=300)
                samples["skopeo"].append(time.monotonic() - started)
                shutil.rmtree(target, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    anchor = "skopeo copy of the same image to a local OCI layout"
    skopeo = 1000 * statistics.median(samples["skopeo"])
    label = f"run -d of a 3-layer ~10 MB registry image (median of {rounds})"
    return [
        row(f"{label}: nothing cached", 1000 * statistics.median(samples["cold"]), "ms", anchor, skopeo),
        row(f"{label}: host has none of it", 1000 * statistics.median(samples["host-cold"]), "ms", anchor, skopeo),
        row(f"{label}: cached on the host", 1000 * statistics.median(samples["cached"]), "ms", anchor, skopeo),
    ]
