"""The service group: a 30-replica service on 10 lab hosts, and how fast a crashed host's tasks move.

`measure(quick)` returns rows for `python -m bench`; alone: `sudo .venv/bin/python -m bench.service_bench`.
One lab `bsv` (10 hosts; quick: 5 hosts and 15 replicas) with `[cluster] reschedule_after = 10`,
removed afterwards whatever happens.

* create: `cantainer service create bench --replicas 30 … -- sleep 1000000`, the real CLI, timed
  until it returns (it waits until every task runs); the image is on every host already (a warm-up
  service made and removed first), so this is placement and starts. Anchor: the same number of
  containers started by `container.run` calls, 8 in flight (the scale group's driver, in-process).
* reschedule: one host crashed (`lab crash`) while the service runs 3 tasks a host; the time until
  all 30 run again, none on the crashed host, polled every 0.2 s over one agent connection. The
  floor is the silence that makes the host `down` (3 heartbeats of 2 s) plus reschedule_after.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.lab_cluster import private_connection_process
from bench.results import row
from bench.scale_bench import start_containers
from bench.up_vs_ansible import CANTAINER, BenchError, _run
from lab.lab import Lab

LAB = "bsv"
NET = "10.160.0.0/20"
RESCHEDULE_AFTER = 10
DOWN_AFTER = 6.0  # cluster/liveness.py: 3 heartbeats of 2 s up to 10 hosts


def _inventory(lab: Lab) -> Path:
    text = lab.inventory_file.read_text()
    path = lab.dir / "bench-services.toml"
    path.write_text(text.replace("[cluster]\n", f"[cluster]\nreschedule_after = {RESCHEDULE_AFTER}\n", 1))
    return path


async def _wait_rescheduled(inventory_path: Path, crashed: str, replicas: int, timeout: float) -> float:
    """Seconds until *replicas* tasks run, none on *crashed* (one connection, polled every 0.2 s)."""
    from cantainer.inventory import load_inventory
    from cantainer.status import open_status_source

    inventory = load_inventory(inventory_path)
    started = time.monotonic()
    client, _ = await open_status_source(inventory)
    try:
        while True:
            doc = await client.call("service.ps", {"name": "bench", "consistency": "stale"}, timeout=30)
            running = [t for t in doc["tasks"] if t["state"] == "running" and t["host"] != crashed
                       and not t["retiring"]]
            if len(running) == replicas:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise BenchError(f"only {len(running)} of {replicas} tasks run elsewhere after {timeout:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        client.close()
        client.connection.close()


def measure(quick: bool, log=print) -> list[dict]:
    """The rows below; CLI calls share a connection process of this run, stopped afterwards (it
    used to be the user's own, left to exit when idle)."""
    with private_connection_process():
        return _measure(quick, log)


def _measure(quick: bool, log=print) -> list[dict]:
    hosts, replicas = (5, 15) if quick else (10, 30)
    lab = Lab(LAB)
    lab.down()
    cantainer = str(CANTAINER)
    try:
        lab.up(hosts)
        inventory = _inventory(lab)
        _run([cantainer, "up", str(inventory)], timeout=900)
        # warm-up: the image on every host, the network made
        _run([cantainer, "service", "create", "warm", "--replicas", str(hosts), "-n", NET, "-i", str(inventory),
              "--", "sleep", "1000000"], timeout=600)
        _run([cantainer, "service", "rm", "warm", "-i", str(inventory)])
        created = _run([cantainer, "service", "create", "bench", "--replicas", str(replicas), "-n", NET,
                        "-i", str(inventory), "--timeout", "600", "--", "sleep", "1000000"], timeout=900)
        log(f"  service create --replicas {replicas} on {hosts} hosts: {created:.1f} s")
        crashed = f"h{hosts}"
        lab.crash(crashed)
        moved = asyncio.run(_wait_rescheduled(inventory, crashed, replicas, 300))
        log(f"  {crashed} crashed: {replicas} tasks running elsewhere after {moved:.1f} s")
        lab.boot(crashed)
        _run([cantainer, "up", str(inventory)], timeout=900)
        _run([cantainer, "service", "rm", "bench", "-i", str(inventory)])
        direct, _retried = asyncio.run(start_containers(inventory, replicas))
        log(f"  the same {replicas} containers by container.run: {direct:.1f} s")
    finally:
        try:
            if lab.inventory_file.exists():
                _run([cantainer, "down", "--purge", "-i", str(lab.inventory_file)], timeout=900)
        except Exception as error:  # noqa: BLE001 - lab.down() removes whatever is left anyway
            log(f"  cantainer down --purge failed ({error}); removing the lab anyway")
        finally:
            lab.down()
    where = f"{replicas} tasks on {hosts} hosts"
    anchor = f"{replicas} `container.run` calls, 8 in flight"
    return [
        row(f"service: `service create --replicas {replicas}` until all run, {hosts} hosts (image present)", created,
            "s", anchor, direct),
        row(f"service: create rate, {where}", replicas / created, "tasks/s", anchor, replicas / direct),
        row(f"service: host crash → all {replicas} tasks running again elsewhere (down after {DOWN_AFTER:g} s + "
            f"reschedule_after {RESCHEDULE_AFTER} s)", moved, "s"),
        row(f"service: reschedule beyond the configured wait ({DOWN_AFTER:g} + {RESCHEDULE_AFTER} s)",
            moved - DOWN_AFTER - RESCHEDULE_AFTER, "s"),
    ]


if __name__ == "__main__":
    print(json.dumps(measure("--quick" in sys.argv[1:]), indent=1))
