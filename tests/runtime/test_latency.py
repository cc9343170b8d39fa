"""Start latency of `/bin/true` (reported, never asserted: timings belong to bench/).

Run with ``-s`` to see the numbers. Anchors on this machine (DESIGN.md): runc ≈ 20 ms, crun ≈ 6 ms.
"""
from __future__ import annotations

import statistics
import time

from cantainer_agent.runtime import ContainerSpec, Limits

from .conftest import ALPINE_SHA256

RUNS = 50


def test_start_latency_bin_true(runtime, alpine):
    runtime.warm_up()
    time.sleep(0.2)  # let the zygote prepare its first warm slot
    start_ms, exit_ms = [], []
    for n in range(RUNS):
        spec = ContainerSpec(id=f"lat{n}", name=f"lat{n}", image=ALPINE_SHA256, command=["/bin/true"],
                             limits=Limits(memory=64 << 20, pids=64))
        t0 = time.perf_counter()
        runtime.start(spec, alpine)
        t1 = time.perf_counter()
        info = runtime.wait(spec.id, timeout=30)
        t2 = time.perf_counter()
        assert info.exit_code == 0
        start_ms.append((t1 - t0) * 1000)
        exit_ms.append((t2 - t0) * 1000)
        runtime.remove(spec.id)

    def summary(values):
        values = sorted(values)
        return f"p50 {statistics.median(values):.2f} ms, p90 {values[int(len(values) * 0.9)]:.2f} ms, min {values[0]:.2f} ms"

    print(f"\nstart(/bin/true) until its command runs, {RUNS} runs: {summary(start_ms)}")
    print(f"start(/bin/true) until its exit is recorded: {summary(exit_ms)}")
