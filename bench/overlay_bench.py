"""The overlay group: `run -d` end to end, overlay convergence, throughput, raft writes via the API.

`measure(quick)` returns rows for `python -m bench`; alone:
`sudo .venv/bin/python -m bench.overlay_bench [--quick]`. One lab `bov` of 3 hosts with a formed
cluster (bench/lab_cluster.py), removed afterwards whatever happens. What each row measures
(details in bench/README.md):

* `cantainer run -d` end to end: wall time of the CLI subprocess (interpreter start, SSH connect,
  `hello`, image check, `container.run` = raft create + container start + raft report), hosts in
  turn, each a new `sleep` container. Beside it, OpenSSH's `ssh HOST true` for scale (no anchor).
* convergence: a pinger container on h1; for each round a new container on h2 is started with
  `cantainer run -d`; from the moment that CLI process has exited to the first ICMP echo reply
  seen by a raw socket *inside the h1 container's network namespace* (created there by this process,
  bench/lab_cluster.socket_in_netns), which sends an echo request every 2 ms until one is answered.
* throughput: iperf3 (the machine's binary, run under `nsenter --net=` in the container's network
  namespace: the Alpine rootfs has no iperf3; what is measured is the overlay data path) from the h1
  container to the h2 container vs from the h1 host netns to the h2 host netns (underlay).
* raft writes through the agent API: threads of this process, each on its own connection to the
  leader's unix socket, alternating `network.create` / `network.rm` of their own CIDR (each a
  committed, fsync'd replicated command that wakes the reconcilers on every node), vs bare PySyncObj
  (bench/raft_bench.py baseline) measured in the same run.
"""
from __future__ import annotations

import json
import os
import select
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path

from bench.lab_cluster import (
    AgentSocket,
    agent_cpu_seconds,
    cluster,
    container_netns,
    host_netns,
    lab_name,
    socket_in_netns,
)
from bench.results import percentile, row
from bench.up_vs_ansible import CANTAINER, BenchError

LAB = "bov"
IPERF_PORT = 5201


# -- helpers ------------------------------------------------------------------------------------------
def cli_run(inventory: Path, host: str, network: str, name: str) -> tuple[str, float, float]:
    """`cantainer run -d` of a sleeping container; returns (ip, wall seconds, monotonic time it exited)."""
    argv = [str(CANTAINER), "run", "--inventory", str(inventory), "--host", host, "-n", network,
            "--name", name, "-d", "--", "sleep", "1000000"]
    started = time.monotonic()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    ended = time.monotonic()
    if result.returncode != 0:
        raise BenchError(f"cantainer run {name} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.split()[1], ended - started, ended


def container_ids(lab, host: str = "h1") -> dict[str, dict]:
    with AgentSocket(lab, host) as api:
        return {c["name"]: c for c in api.call("container.ps")}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Pinger:
    """ICMP echo from inside a container's network namespace, from this process (raw socket made there)."""

    def __init__(self, netns: str) -> None:
        self.sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0

    def _send(self, ip: str) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq)
        payload = b"cantainer-bench!"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), self.ident, self.seq) + payload
        self.sock.sendto(packet, (ip, 0))

    def first_reply(self, ip: str, interval: float = 0.002, timeout: float = 20.0) -> float:
        """Send an echo request every `interval` s until one is answered; the monotonic time of the answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._send(ip)
            until = time.monotonic() + interval
            while (left := until - time.monotonic()) > 0:
                if not select.select([self.sock], [], [], left)[0]:
                    break
                packet, (source, _) = self.sock.recvfrom(2048)
                ihl = (packet[0] & 0x0F) * 4
                kind, _code, _sum, ident = struct.unpack("!BBHH", packet[ihl:ihl + 6])
                if kind == 0 and ident == self.ident and source == ip:
                    return time.monotonic()
        raise BenchError(f"no echo reply from {ip} within {timeout:g} s")

    def close(self) -> None:
        self.sock.close()


def nsenter(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns}", *argv]


def iperf3(server_ns: str, client_ns: str, server_ip: str, seconds: int) -> float:
    """One iperf3 TCP test client → server; Gbit/s received. The server is stopped whatever happens."""
    server = subprocess.Popen(nsenter(server_ns, "iperf3", "-s", "-1", "--forceflush", "-B", server_ip,
                                      "-p", str(IPERF_PORT)),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:  # wait until it listens
            if "listening" in line:
                break
        else:
            raise BenchError(f"iperf3 server did not start (exit {server.wait()})")
        result = subprocess.run(nsenter(client_ns, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                                        "-t", str(seconds), "-J"),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=seconds + 30)
        report = json.loads(result.stdout or "{}")
        if result.returncode != 0 or "error" in report:
            raise BenchError(f"iperf3 client failed: {report.get('error') or result.stderr.strip()}")
        return report["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        if server.poll() is None:
            server.kill()  # by PID (our Popen)
        server.wait(10)
        server.stdout.close()


def writes_made(writes: int, clients: int) -> int:
    """How many writes api_writes makes of *writes*: an even number per client (every create is undone)."""
    return max(2, writes // clients // 2 * 2) * clients


def api_writes(lab, host: str, writes: int, clients: int, sessions: bool = True) -> float:
    """Committed writes/s through the agent API on `host`: `clients` connections, each alternating
    network.create / network.rm of its own CIDR (so the state is as before afterwards). With
    *sessions* every write carries one, as the CLI's do (exactly-once); without, none does."""
    per = writes_made(writes, clients) // clients
    sockets = [AgentSocket(lab, host) for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def worker(index: int, api: AgentSocket) -> None:
        cidr = f"10.210.{index}.0/24"
        client = f"bench:{os.getpid()}:{index}:{time.monotonic_ns()}"
        start.wait()
        try:
            for i in range(per):
                session = {"client": client, "seq": i + 1} if sessions else None
                api.call("network.rm" if i % 2 else "network.create", {"cidr": cidr}, session)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate(sockets)]
    try:
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
    finally:
        for api in sockets:
            api.close()
    if errors:
        raise BenchError(f"agent API write failed: {errors[0]}")
    return per * clients / elapsed


def api_reads(lab, host: str, reads: int, consistency: str) -> list[float]:
    """Latencies (s) of `network.ls` on `host`'s agent at the given consistency, one after the other."""
    samples = []
    with AgentSocket(lab, host) as api:
        for _ in range(reads):
            started = time.perf_counter()
            api.call("network.ls", {"consistency": consistency})
            samples.append(time.perf_counter() - started)
    return samples


# -- the rows -----------------------------------------------------------------------------------------
def cli_wall(inventory: Path, *args: str, persist: bool = True) -> float:
    """Wall time of one CLI process (`cantainer ARGS`, or `cantainer --no-persist ARGS`)."""
    argv = [str(CANTAINER), *([] if persist else ["--no-persist"]), *args]
    started = time.monotonic()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CANTAINER_INVENTORY": str(inventory)})
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(f"cantainer {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return elapsed


def run_rows(inventory: Path, count: int, log=print) -> list[dict]:
    """`run -d` (and ps, exec, logs) as a user types them: through the connection process, beside the
    same command with --no-persist (the CLI connects and imports asyncssh itself), interleaved."""
    from cantainer.inventory import load_inventory

    hosts = load_inventory(inventory).hosts
    first = cli_wall(inventory, "ps")  # no connection process yet: this call starts it
    ours, direct, ssh = [], [], []
    for index in range(count):
        host = hosts[index % len(hosts)]
        _, wall, _ = cli_run(inventory, host.name, "10.202.0.0/24", f"e2e-{index}")
        ours.append(wall)
        direct.append(cli_wall(inventory, "run", "--host", host.name, "-n", "10.202.0.0/24", "--name",
                               f"e2d-{index}", "-d", "--", "sleep", "1000000", persist=False))
        started = time.monotonic()  # interleaved, so all see the same load
        subprocess.run(["ssh", "-i", str(host.identity_file), "-o", f"UserKnownHostsFile={host.known_hosts}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
                        f"root@{host.address}", "true"], stdin=subprocess.DEVNULL, check=True, timeout=30)
        ssh.append(time.monotonic() - started)
    log(f"  run -d: p50 {statistics.median(ours):.3f} s (--no-persist {statistics.median(direct):.3f} s), "
        f"ssh true p50 {statistics.median(ssh):.3f} s; first call {first:.3f} s")
    no_persist = "the same with --no-persist (own SSH connection, asyncssh imported)"
    rows = [
        row(f"cantainer run -d end to end (CLI process), p50 (n={count})", statistics.median(ours), "s",
            no_persist, statistics.median(direct)),
        row(f"cantainer run -d end to end (CLI process), p99 (n={count})", percentile(ours, 99), "s",
            no_persist, percentile(direct, 99)),
        row("first CLI call of a session (`ps`: starts the connection process, connects to 3 hosts)", first, "s"),
        row(f"for scale: OpenSSH `ssh HOST true` (connect + exec), p50 (n={count})", statistics.median(ssh), "s"),
    ]
    others = {"ps": ["ps"], "exec": ["exec", "e2e-0", "true"], "logs": ["logs", "e2e-0"]}
    for name, args in others.items():
        mine, theirs = [], []
        for _ in range(max(5, count // 3)):
            mine.append(cli_wall(inventory, *args))
            theirs.append(cli_wall(inventory, *args, persist=False))
        log(f"  {name}: p50 {statistics.median(mine):.3f} s (--no-persist {statistics.median(theirs):.3f} s)")
        rows.append(row(f"cantainer {' '.join(args)} end to end (CLI process), p50 (n={len(mine)})",
                        statistics.median(mine), "s", no_persist, statistics.median(theirs)))
    return rows


def convergence_rows(lab, inventory: Path, rounds: int, log=print) -> tuple[list[dict], dict]:
    """Also returns the pinger (h1) and last target (h2) containers, for the throughput test."""
    network = "10.201.0.0/24"
    cli_run(inventory, "h1", network, "cv-pinger")
    ids = container_ids(lab)
    pinger = Pinger(container_netns(lab, "h1", ids["cv-pinger"]["id"]))
    samples = []
    try:
        for index in range(rounds):
            time.sleep(0.5)  # let the previous round's reconciles settle
            ip, _, returned = cli_run(inventory, "h2", network, f"cv-{index}")
            samples.append(pinger.first_reply(ip) - returned)
    finally:
        pinger.close()
    log(f"  convergence: {', '.join(f'{1000 * s:.1f}' for s in samples)} ms")
    ids = container_ids(lab)
    pair = {"client": ids["cv-pinger"], "server": ids[f"cv-{rounds - 1}"]}
    return [row(f"overlay convergence: `run -d` on h2 returned → first ping from h1 container, p50 (n={rounds})",
                1000 * statistics.median(samples), "ms")], pair


def throughput_rows(lab, pair: dict, seconds: int, runs: int, log=print) -> list[dict]:
    state = lab.load()
    overlay, underlay = [], []
    for _ in range(runs):  # alternate: the machine's load drifts
        overlay.append(iperf3(container_netns(lab, "h2", pair["server"]["id"]),
                              container_netns(lab, "h1", pair["client"]["id"]), pair["server"]["ip"], seconds))
        underlay.append(iperf3(host_netns(lab, "h2"), host_netns(lab, "h1"), state.hosts["h2"].address, seconds))
    log(f"  iperf3 overlay {overlay} Gbit/s, underlay {underlay} Gbit/s")
    return [row(f"overlay throughput container h1 → container h2, iperf3 TCP {seconds} s (median of {runs})",
                statistics.median(overlay), "Gbit/s", "underlay host h1 → host h2 (same iperf3)",
                statistics.median(underlay))]


def api_write_rows(lab, writes: int, clients: int, runs: int, log=print) -> list[dict]:
    from bench import raft_bench

    with AgentSocket(lab, "h1") as api:
        leader = api.call("status")["leader"]
    hosts = sorted(lab.host("h1")[0].hosts)
    seq, conc, base, cpu = [], [], [], []
    for _ in range(runs):  # alternate with the anchor: the machine's load drifts
        seq.append(api_writes(lab, leader, writes, 1))
        before = sum(agent_cpu_seconds(lab, h) for h in hosts)
        conc.append(api_writes(lab, leader, writes, clients))
        cpu.append(sum(agent_cpu_seconds(lab, h) for h in hosts) - before)
        base.append(raft_bench.writes_per_second(True, writes, clients))
    log(f"  API writes/s sequential {seq}, {clients} clients {conc}; bare PySyncObj {base}; "
        f"agents' CPU for the {clients}-client writes {[round(c, 2) for c in cpu]} s (load {os.getloadavg()[0]:.1f})")
    anchor = "bare PySyncObj, 3 processes on loopback (bench/raft_bench.py --baseline)"
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    return [
        row(
            f"raft committed writes/s through the agent API on the leader, 1 client ({writes} writes, median of "
            f"{runs})",
            statistics.median(seq),
            "writes/s",
            anchor + ", sequential",
            med(base, "sequential"),
        ),
        row(
            f"raft committed writes/s through the agent API on the leader, {clients} clients "
            f"({writes} writes, median of {runs})",
            statistics.median(conc),
            "writes/s",
            anchor + f", {clients} threads",
            med(base, "concurrent"),
        ),
        # CPU per write moves far less with the machine's load than writes/s do (no anchor: PySyncObj
        # alone has no API, state machine or controllers to compare with)
        row(
            f"agents' CPU per committed write through the API, {clients} clients (all {len(hosts)} agents, "
            f"every thread; median of {runs})",
            1000 * statistics.median(c / (writes_made(writes, clients)) for c in cpu),
            "ms",
        ),
    ]


def read_rows(lab, reads: int, log=print) -> list[dict]:
    """Read latency, linearizable (ReadIndex: a heartbeat round answered by a majority) vs stale (the
    local replica), on the leader and on a follower, interleaved."""
    with AgentSocket(lab, "h1") as api:
        leader = api.call("status", {"consistency": "stale"})["leader"]
    follower = next(h for h in ("h1", "h2", "h3") if h != leader)
    rows = []
    for role, host in (("leader", leader), ("follower", follower)):
        linear, stale = [], []
        for _ in range(5):
            linear += api_reads(lab, host, reads // 5, "linearizable")
            stale += api_reads(lab, host, reads // 5, "stale")
        log(f"  reads on the {role}: linearizable p50 {1000 * statistics.median(linear):.2f} ms, "
            f"stale {1000 * statistics.median(stale):.2f} ms")
        rows.append(row(f"read latency `network.ls` through the agent API on a {role}, linearizable (ReadIndex), "
                        f"p50 (n={len(linear)})", 1000 * statistics.median(linear), "ms",
                        "the same read with consistency stale (local replica)", 1000 * statistics.median(stale)))
    return rows


def session_rows(lab, writes: int, clients: int, runs: int, log=print) -> list[dict]:
    """Committed writes/s with sessions (exactly-once: every write leaves its outcome in the state
    machine's table) vs the same writes without, interleaved."""
    with AgentSocket(lab, "h1") as api:
        leader = api.call("status", {"consistency": "stale"})["leader"]
    with_, without = [], []
    for _ in range(runs):
        with_.append(api_writes(lab, leader, writes, clients, sessions=True))
        without.append(api_writes(lab, leader, writes, clients, sessions=False))
    log(f"  writes/s with sessions {with_}, without {without}")
    return [row(f"raft committed writes/s through the agent API, {clients} clients, with exactly-once sessions "
                f"({writes} writes, median of {runs})", statistics.median(with_), "writes/s",
                "the same writes without sessions", statistics.median(without))]


PARTS = ("run", "convergence", "writes", "sessions", "reads")


def measure(quick: bool, log=print, parts: tuple[str, ...] = PARTS) -> list[dict]:
    runs_e2e, rounds, seconds, tp_runs, writes, w_runs = (10, 5, 3, 1, 300, 1) if quick else (30, 20, 10, 3, 2000, 3)
    rows: list[dict] = []
    with cluster(lab_name(LAB, "ov"), 3, log) as (lab, inventory):
        if "run" in parts:
            rows += run_rows(inventory, runs_e2e, log)
        if "convergence" in parts:
            conv, pair = convergence_rows(lab, inventory, rounds, log)
            rows += conv
            rows += throughput_rows(lab, pair, seconds, tp_runs, log)
        if "writes" in parts:
            rows += api_write_rows(lab, writes, 8, w_runs, log)
        if "sessions" in parts:
            rows += session_rows(lab, writes, 8, w_runs, log)
        if "reads" in parts:
            rows += read_rows(lab, 100 if quick else 500, log)
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.overlay_bench")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    args = ap.parse_args()
    print(json.dumps(measure(args.quick, parts=tuple(args.parts.split(","))), indent=1))
