"""The scale group: many lab hosts, many sleeping containers; start rate, agent memory, `status` time.

`measure(quick)` returns rows for `python -m bench`; alone:
`sudo .venv/bin/python -m bench.scale_bench [--quick]`. One lab `bsc` (30 hosts, 1000 containers;
quick: 10 hosts, 100 containers) with a formed cluster (bench/lab_cluster.py), removed afterwards
(`cantainer down --purge`, `lab.down()`) whatever happens.

* start: the containers (`sleep 1000000`, Alpine) are placed round-robin over the hosts and over
  NETWORKS. 1000 CLI processes would cost ~0.6 s of CPU each in interpreter start-up and imports
  on this 2-core box, so the bench drives the CLI's own code in-process instead: per host one SSH
  connection (`containers.HostSession`) with the image pushed (`run_image.push_layers`) — both
  untimed — then, timed, `container.run` calls with `containers.run_params` (what `cantainer run -d`
  sends), CONCURRENCY in flight in all, each on its own agent channel. Each call returns once its
  container runs and is reported in raft, like `run -d`.
* memory, read from /proc through the host's PID 1 (bench/lab_cluster.py): the agent's VmRSS
  (pid from /run/cantainer/agent.pid) before and after; the per-container supervisors (the runtime's
  shims, forked from the agent's zygote, itself a child of the agent) reported apart, as private
  memory (USS = Private_Clean + Private_Dirty of smaps_rollup) per shim: their RSS is mostly pages
  shared with the zygote.
* status: wall time of `cantainer status` (rich table) and `cantainer status --json` subprocesses
  with every container running (median of 3).
* idle CPU: the agents' CPU time (all threads, from /proc through each host's PID 1) over 20 s in
  which nobody calls them, once before the containers and once with all of them running, as cores.
* CPU per start: the agents' CPU time (all hosts) while the containers start, per container — what
  the start rate costs, less sensitive than the rate to other work on the machine.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.lab_cluster import AgentSocket, agent_cpu_seconds, agent_pid, cluster, host_root, idle_cores, lab_name
from bench.results import row
from bench.up_vs_ansible import CANTAINER, BenchError
from cantainer_agent import layout

LAB = "bsc"
NETWORKS = ("10.150.0.0/22", "10.150.4.0/22", "10.150.8.0/22", "10.150.12.0/22")
CONCURRENCY = 8  # in flight in all: more only adds contention on a 2-core machine
IDLE_SETTLE, IDLE_SECONDS = 5.0, 20.0  # idle CPU: wait, then measure the agents' CPU time over this
RETRIES = 5
MiB = 1024 * 1024


async def start_containers(inventory_path: Path, count: int, concurrency: int = CONCURRENCY) -> tuple[float, int]:
    """Start `count` sleeping containers round-robin over hosts and NETWORKS.

    Returns the seconds the runs took and how many calls failed with "outcome unknown" and were retried."""
    from cantainer.client import AgentClient, AgentError
    from cantainer.containers import HostSession, RunRequest, run_params
    from cantainer.inventory import load_inventory
    from cantainer.run_image import push_layers, tarball_image
    from cantainer_agent import protocol

    inventory = load_inventory(inventory_path)
    image = tarball_image("alpine", inventory)
    hosts = inventory.hosts
    queues: dict[str, list[RunRequest]] = {h.name: [] for h in hosts}
    for index in range(count):
        request = RunRequest(host=hosts[index % len(hosts)].name, network=NETWORKS[index % len(NETWORKS)],
                             name=f"s-{index:04d}", command=["sleep", "1000000"])
        queues[request.host].append(request)
    per_host = max(1, concurrency // len(hosts))
    async with contextlib.AsyncExitStack() as stack:
        sessions = await asyncio.gather(*(stack.enter_async_context(HostSession(h)) for h in hosts))
        await asyncio.gather(*(push_layers(s, image) for s in sessions))
        clients = []
        for session in sessions:
            extra = [AgentClient(session.connection) for _ in range(per_host - 1)]
            stack.callback(lambda extra=extra: [c.close() for c in extra])
            clients += [(session.host.name, c) for c in [session.client, *extra]]

        async def drain(host: str, client: AgentClient) -> None:
            queue = queues[host]
            while queue:
                request = queue.pop(0)
                for attempt in range(1, RETRIES + 2):
                    try:
                        async with in_flight:
                            await client.call("container.run", run_params(request, image), timeout=300)
                        break
                    except AgentError as error:
                        # "Outcome unknown" (raft overloaded, leader lost): the agent started nothing;
                        # retry as an operator would, under a new name (the old one may be taken).
                        if error.code != protocol.UNAVAILABLE or attempt > RETRIES:
                            raise
                        retried.append(error.message)
                        request = dataclasses.replace(request, name=f"{request.name}-r{attempt}")
                        await asyncio.sleep(attempt)  # back off: the cluster is overloaded

        retried: list[str] = []
        in_flight = asyncio.Semaphore(concurrency)  # with 30 hosts, one channel each is already 30
        started = time.monotonic()
        await asyncio.gather(*(drain(host, client) for host, client in clients))
        return time.monotonic() - started, len(retried)


def _status_field(path: str, key: str) -> int:
    """A 'Key:   N kB' line of /proc/PID/status or smaps_rollup, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in {path}")


def _children(proc: str, pid: int) -> list[int]:
    kids = []
    for task in Path(f"{proc}/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def host_memory(lab, host: str) -> dict:
    """Agent VmRSS, and the USS of each supervisor (shim) of this host's containers, in bytes."""
    root = host_root(lab, host)
    proc = root + "/proc"
    agent = agent_pid(lab, host)
    # The shims of started containers (not the zygote's warm slot), from the runtime's records.
    serving = {json.loads(p.read_text())["shim_pid"]
               for p in Path(f"{root}{layout.RUN_DIR}/containers").glob("*/pids.json")}
    shims = []
    for child in _children(proc, agent):
        if b"zygote" in Path(f"{proc}/{child}/cmdline").read_bytes():
            for shim in set(_children(proc, child)) & serving:
                rollup = f"{proc}/{shim}/smaps_rollup"
                shims.append(_status_field(rollup, "Private_Clean") + _status_field(rollup, "Private_Dirty"))
    return {"agent_rss": _status_field(f"{proc}/{agent}/status", "VmRSS"), "shim_uss": shims}


def _cli_time(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                                env={**os.environ, "COLUMNS": "200"})
        times.append(time.monotonic() - started)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(argv[1:3])} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return statistics.median(times)


def measure(quick: bool, log=print) -> list[dict]:
    hosts, count = (10, 100) if quick else (30, 1000)
    where = f"{count} containers on {hosts} hosts"
    with cluster(lab_name(LAB, "sc"), hosts, log) as (lab, inventory):
        names = list(lab.load().hosts)
        idle = [host_memory(lab, h)["agent_rss"] for h in names]
        time.sleep(IDLE_SETTLE)  # registrations and the first passes are over
        cores_empty = idle_cores(lab, names, IDLE_SECONDS)
        log(f"  idle cluster, no containers: {cores_empty:.3f} cores")
        cpu_before = sum(agent_cpu_seconds(lab, h) for h in names)
        load_before = os.getloadavg()[0]
        elapsed, retried = asyncio.run(start_containers(inventory, count))
        cpu_per_start = (sum(agent_cpu_seconds(lab, h) for h in names) - cpu_before) / count
        log(f"  started {count} containers in {elapsed:.1f} s ({retried} calls retried); agents' CPU "
            f"{cpu_per_start * 1000:.1f} ms per container; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
        # A start whose "running" report timed out under load is reported by its host's reconciler
        # a few seconds later: wait for the state to show every container running.
        deadline = time.monotonic() + 120
        while True:
            with AgentSocket(lab, names[0]) as api:
                running = sum(c["state"] == "running" for c in api.call("container.ps"))
            if running == count:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"only {running} of {count} containers are running")
            time.sleep(1)
        time.sleep(IDLE_SETTLE)
        cores_full = idle_cores(lab, names, IDLE_SECONDS)
        log(f"  idle cluster, {count} containers: {cores_full:.3f} cores")
        memory = [host_memory(lab, h) for h in names]
        rss = [m["agent_rss"] / MiB for m in memory]
        shims = [uss / MiB for m in memory for uss in m["shim_uss"]]
        status = _cli_time([str(CANTAINER), "status", "-i", str(inventory)], 3)
        status_json = _cli_time([str(CANTAINER), "status", "--json", "-i", str(inventory)], 3)
        log(f"  agent RSS MiB idle {sorted(idle)[len(idle) // 2] / MiB:.1f}, loaded {sorted(rss)}; "
            f"status {status:.2f} s, --json {status_json:.2f} s")
    return [
        row(f"scale: start {where} (in-process API, {CONCURRENCY} in flight)", elapsed, "s"),
        row(f"scale: start rate, {where}", count / elapsed, "containers/s"),
        row(f"scale: container.run calls that failed with outcome unknown and were retried, {where}", retried, "calls"),
        row(f"scale: CPU of all agents together per container started, {where}", cpu_per_start * 1000, "ms"),
        row(f"scale: idle cluster, all agents together, no containers ({hosts} hosts, {IDLE_SECONDS:.0f} s)",
            cores_empty, "cores"),
        row(f"scale: idle cluster, all agents together, {where} ({IDLE_SECONDS:.0f} s)", cores_full, "cores"),
        row(
            f"scale: agent RSS per host, median, before containers ({hosts} hosts)",
            statistics.median(idle) / MiB,
            "MiB",
        ),
        row(f"scale: agent RSS per host, median, {where}", statistics.median(rss), "MiB"),
        row(f"scale: agent RSS per host, max, {where}", max(rss), "MiB"),
        row(
            f"scale: supervisor (shim) private memory per container, median (n={len(shims)})",
            statistics.median(shims),
            "MiB",
        ),
        row(f"scale: `cantainer status` wall time, {where} (median of 3)", status, "s"),
        row(f"scale: `cantainer status --json` wall time, {where} (median of 3)", status_json, "s"),
    ]


if __name__ == "__main__":
    print(json.dumps(measure("--quick" in sys.argv[1:]), indent=1))
