"""Load: 200 `cantainer run -d` at once from several workstation processes, across
3 hosts and 2 networks, then 200 `rm` at once — every address handed out once and freed again.

Each worker is a separate workstation process that runs the real CLI entry point
(`cantainer.cli.main`, argv as typed) once per command, every command with its own SSH
connections and agent calls — exactly what a `cantainer` process does, minus a fresh Python
interpreter per command (which would only burn this 2-core machine's CPU on imports).
"""
from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.labcli import cli, container_processes, ok, ps, status

pytestmark = [pytest.mark.lab, pytest.mark.reliability]
AREA = "Load"

HOSTS = ("h1", "h2", "h3")
NETWORKS = ("10.80.0.0/24", "10.81.0.0/24")
COUNT = 200
WORKERS = 10


def cantainer_main(inventory: str, argv: list[str]) -> tuple[int, str, str, float]:
    """In a worker process: one `cantainer ARGV` through the CLI's entry point; (code, out, err, seconds)."""
    from cantainer import cli as cantainer_cli

    os.environ["CANTAINER_INVENTORY"] = inventory
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cantainer_cli.main(argv)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


def run_all(inventory: Path, commands: list[list[str]]) -> tuple[list[tuple[int, str, str, float]], float]:
    """Every command at once over WORKERS workstation processes; (results in order, wall seconds)."""
    # fork: the workers need no re-import of the test session; each asyncio loop is made after the fork
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
        pool.submit(int).result()  # workers exist before the clock starts
        started = time.monotonic()
        results = list(pool.map(cantainer_main, [str(inventory)] * len(commands), commands))
        return results, time.monotonic() - started


def failures(results) -> list[str]:
    return [f"exit {code}: {err.strip() or out.strip()}" for code, out, err, _ in results if code != 0]


@pytest.mark.timeout(1200)  # ~2 min on a quiet 2-core machine; far more while other labs load it
def test_200_concurrent_runs_then_200_rms(lab, cluster, measured):
    """200 `run -d` at once from 10 workstation processes over 3 hosts and 2 networks: 200 running containers with 200
    distinct addresses and unique names; 200 `rm -f` at once free every address; the raft leader and term stay the
    same"""
    commands = []
    for index in range(COUNT):
        name = ["--name", f"load-{index:03d}"] if index % 2 == 0 else []  # half named, half generated
        commands.append(["run", "--host", HOSTS[index % 3], "-n", NETWORKS[index % 2], *name, "-d", "--",
                         "sleep", "100000"])
    created_names: list[str] = []
    before = status(cluster)
    try:
        results, wall = run_all(cluster, commands)
        created_names = [out.split()[0] for code, out, _, _ in results if code == 0 and out.split()]
        measured("200 runs, wall time", f"{wall:.1f} s ({COUNT / wall:.1f} runs/s)")
        measured("run latency p50/max", "{:.1f}/{:.1f} s".format(*percentiles([r[3] for r in results])))
        assert failures(results) == [], failures(results)

        # What each `run` printed: a unique name and a distinct address inside the requested network.
        printed = [out.split() for _, out, _, _ in results]
        assert all(len(words) == 2 for words in printed), printed
        names = [words[0] for words in printed]
        assert len(set(names)) == COUNT, Counter(names).most_common(3)
        for index, (name, ip) in enumerate(printed):
            if index % 2 == 0:
                assert name == f"load-{index:03d}"
            else:
                assert re.fullmatch(r"c-[0-9a-f]{6}", name), name
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(NETWORKS[index % 2])
        assert len({ip for _, ip in printed}) == COUNT

        # The cluster agrees: 200 running containers, where they were asked for, with those addresses.
        listed = ps(cluster)
        mine = {name: listed[name] for name in names}
        assert Counter(c["state"] for c in mine.values()) == {"running": COUNT}
        assert {name: c["ip"] for name, c in mine.items()} == dict(printed)
        assert Counter(c["host"] for c in mine.values()) == {
            host: COUNT // 3 + (i < COUNT % 3) for i, host in enumerate(HOSTS)
        }
        # … and so do the hosts: each container is a live process on its host.
        for host in HOSTS:
            local = container_processes(lab, host)
            for c in mine.values():
                if c["host"] == host:
                    assert local.get(c["id"], {}).get("alive"), (host, c["name"], local.get(c["id"]))
        measured("containers running / distinct IPs", f"{len(mine)} / {len({c['ip'] for c in mine.values()})}")

        ids = {c["id"] for c in mine.values()}
        results, wall = run_all(cluster, [["rm", "-f", name] for name in names])
        measured("200 rm -f, wall time", f"{wall:.1f} s ({COUNT / wall:.1f} rm/s)")
        assert failures(results) == [], failures(results)
        created_names = []

        listed = ps(cluster)
        assert not set(names) & set(listed), sorted(set(names) & set(listed))[:5]
        networks = {n["cidr"]: n for n in json.loads(ok(cli(cluster, "network", "ls", "--json")))}
        assert {cidr: networks[cidr]["containers"] for cidr in NETWORKS} == {cidr: 0 for cidr in NETWORKS}
        for host in HOSTS:  # nothing left behind on the hosts either
            alive = [cid for cid, p in container_processes(lab, host).items() if p["alive"] and cid in ids]
            assert alive == [], (host, alive)
        # Every address is free again: a new container gets the first one of each network (the
        # gateway's aside).
        for cidr in NETWORKS:
            out = ok(cli(cluster, "run", "--host", "h1", "-n", cidr, "--name", "after-load", "-d", "--", "true"))
            first = next(ip for ip in ipaddress.ip_network(cidr).hosts() if str(ip) != networks[cidr].get("gateway"))
            assert out.split()[1] == str(first), out
            ok(cli(cluster, "rm", "-f", "after-load"))
        # No leader flapping: the load starved the hosts' CPUs, yet no follower stood for election
        # (PreVote: a voter that still hears its leader refuses; the election timeout is 1-2 s).
        after = status(cluster)
        measured("raft leader, term before / after", f"{before['leader']} {before['term']} / "
                                                     f"{after['leader']} {after['term']}")
        assert (after["leader"], after["term"]) == (before["leader"], before["term"])
    finally:
        if created_names:  # a failure half way: leave no load behind for the next modules
            run_all(cluster, [["rm", "-f", name] for name in created_names])


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[-1]
