"""Networking on the real lab: names across hosts, egress, published ports, internal networks and the
isolation between networks — and all of it again after every agent was SIGKILLed and `up` brought
them back while pings flowed.

The workstation's lab address runs what a real network would have outside the overlay (and nothing
else is ever contacted): a DNS resolver (each lab host's resolv.conf points there) and a TCP server
that answers with the source address it sees.

    backend 10.40.0.0/24: web@h1, db@h2 (-p 8080:80, -p 5353:53/udp)
    other   10.41.0.0/24: o1@h1, o2@h2          vault 10.42.0.0/24 (internal): v1@h1
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from tests import udpnet
from tests.labcli import (
    agent_pid,
    cli,
    container_processes,
    host_exec,
    kill_agent,
    ok,
    one_line_error,
    ps,
    status,
    wait_for,
)
from tests.pingout import replies

pytestmark = pytest.mark.lab
OUTSIDE_NAME, OUTSIDE_ADDRESS = "outside.test", "203.0.113.7"  # documentation range: an answer, never contacted
TCP_SERVER = "while true; do echo hello-from-$(hostname) | nc -l -p 80; done"


class Outside:
    """The world outside the overlay, on the workstation's lab address: a resolver and a TCP server."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.queries: list[tuple[str, str]] = []  # (name, source address)
        self.dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dns.bind((address, 53))
        self.dns.settimeout(0.2)
        self.tcp = socket.create_server((address, 0))
        self.tcp.settimeout(0.2)
        self.port = self.tcp.getsockname()[1]
        self._stop = False
        self.threads = [threading.Thread(target=self._resolve, daemon=True),
                        threading.Thread(target=self._serve, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _resolve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.dns.recvfrom(4096)
            except socket.timeout:
                continue
            query = DNSRecord.parse(data)
            name = str(query.q.qname).rstrip(".")
            self.queries.append((name, peer[0]))
            reply = query.reply()
            if name == OUTSIDE_NAME:
                if query.q.qtype == QTYPE.A:
                    reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(OUTSIDE_ADDRESS), ttl=30))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            self.dns.sendto(reply.pack(), peer)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, peer = self.tcp.accept()
            except socket.timeout:
                continue
            with conn:
                conn.sendall(f"seen-from {peer[0]}\n".encode())

    def close(self) -> None:
        self._stop = True
        for thread in self.threads:
            thread.join(2)
        self.dns.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def outside(lab):
    world = Outside(str(lab.load().gateway.ip))
    yield world
    world.close()


@pytest.fixture(scope="module")
def net(lab, cluster, outside):
    """The networks and containers of the module docstring; {name: ip}, and the hosts' addresses."""
    ok(cli(cluster, "network", "create", "10.40.0.0/24", "--name", "backend"))
    ok(cli(cluster, "network", "create", "10.41.0.0/24", "--name", "other"))
    ok(cli(cluster, "network", "create", "10.42.0.0/24", "--name", "vault", "--internal"))
    for name, host, network, extra in (
            ("web", "h1", "backend", ()), ("db", "h2", "backend", ("-p", "8080:80", "-p", "5353:53/udp")),
            ("o1", "h1", "other", ()), ("o2", "h2", "other", ()), ("v1", "h1", "vault", ())):
        ok(cli(cluster, "run", "--host", host, "-n", network, "--name", name, *extra, "-d", "--", "sleep", "100000"))
    # setsid, not nohup: Debian's busybox-static (the fallback image) has no nohup
    ok(cli(cluster, "exec", "db", "--", "sh", "-c", f"setsid sh -c '{TCP_SERVER}' >/dev/null 2>&1 &"))
    ips = {name: c["ip"] for name, c in ps(cluster).items()}
    hosts = {node["name"]: node["address"] for node in status(cluster)["nodes"]}
    return {"ips": ips, "hosts": hosts, "inventory": cluster}


def sh(inventory: Path, container: str, script: str, timeout: float = 60):
    return cli(inventory, "exec", container, "--", "sh", "-c", script, timeout=timeout)


def tcp_get(address: str, port: int, timeout: float = 3) -> str:
    with socket.create_connection((address, port), timeout=timeout) as conn:
        conn.shutdown(socket.SHUT_WR)
        return conn.recv(1000).decode().strip()


def udp_ask(address: str, port: int) -> str:
    """One datagram to a published UDP port; the answer (the container's server restarts after each)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.sendto(b"ping\n", (address, port))
        try:
            return sock.recvfrom(100)[0].decode().strip()
        except (socket.timeout, ConnectionRefusedError):
            return ""


HOST_TCP_GET = ("import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); "
                "c.shutdown(socket.SHUT_WR); print(c.recv(1000).decode().strip())")


def host_tcp_get(lab, host: str, address: str, port: int) -> str:
    result = host_exec(lab, host, "python3", "-c", HOST_TCP_GET, address, str(port))
    return result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr.strip()[-200:]}"


def resolves(inventory: Path, container: str, name: str) -> list[str]:
    """The addresses `nslookup NAME` gives inside the container (busybox prints them after the server)."""
    result = sh(inventory, container, f"nslookup {name} 2>&1")
    answer = result.stdout.split("Name:", 1)[1] if "Name:" in result.stdout else ""
    return re.findall(r"Address(?: \d+)?:\s*([0-9.]+)", answer)


def reaches(inventory: Path, container: str, address: str, port: int | None = None) -> bool:
    if port is None:
        return cli(inventory, "exec", container, "--", "ping", "-c", "1", "-W", "1", address).returncode == 0
    return "hello" in sh(inventory, container, f"echo | timeout 2 nc {address} {port} 2>&1").stdout


# -- names ------------------------------------------------------------------------------------------

def test_names_and_name_dot_network_across_hosts(net):
    inventory, ips = net["inventory"], net["ips"]
    assert resolves(inventory, "web", "db") == [ips["db"]]  # db is on h2, web on h1
    assert resolves(inventory, "web", "db.backend") == [ips["db"]]
    assert resolves(inventory, "db", "web.backend") == [ips["web"]]
    assert reaches(inventory, "web", "db")  # `ping db`, through the search domain
    resolv = sh(inventory, "web", "cat /etc/resolv.conf").stdout
    assert resolv.splitlines() == ["nameserver 10.40.0.1", "search backend"]


def test_the_first_container_of_a_network_on_a_host_resolves_names_first_thing(net):
    """h3 has no backend container yet: its DNS server must serve backend's gateway before the
    command runs, not at the agent's next reconcile pass (nslookup's first query would be refused)."""
    inventory, ips = net["inventory"], net["ips"]
    result = cli(inventory, "run", "--rm", "--host", "h3", "-n", "backend", "--name", "first", "--",
                 "nslookup", "db")
    assert result.returncode == 0 and ips["db"] in result.stdout.split("Name:")[-1], result.stdout + result.stderr


def test_other_names_are_forwarded_to_the_hosts_resolver(net, outside):
    inventory, hosts = net["inventory"], net["hosts"]
    assert resolves(inventory, "web", OUTSIDE_NAME) == [OUTSIDE_ADDRESS]
    assert resolves(inventory, "v1", OUTSIDE_NAME) == [OUTSIDE_ADDRESS]  # names, even without egress
    assert (OUTSIDE_NAME, hosts["h1"]) in outside.queries  # asked by h1's agent, from the host
    assert not any(name.endswith(("backend", "other", "vault")) for name, _ in outside.queries)  # ours stay home


def test_another_networks_names_are_nxdomain(net):
    inventory = net["inventory"]
    for name in ("web", "db", "db.backend"):
        result = sh(inventory, "o1", f"nslookup {name} 2>&1")
        assert "NXDOMAIN" in result.stdout and net["ips"]["db"] not in result.stdout, result.stdout


def test_a_removed_container_is_nxdomain_at_once(net):
    inventory, ips = net["inventory"], net["ips"]
    ip = ok(cli(inventory, "run", "--host", "h2", "-n", "backend", "--name", "brief", "-d", "--", "sleep", "1000"))
    assert resolves(inventory, "web", "brief") == [ip.split()[1]]
    ok(cli(inventory, "rm", "-f", "brief"))
    # the first query after `rm` returned, on another host (h1 answers from its replica): NXDOMAIN
    assert "NXDOMAIN" in sh(inventory, "web", "nslookup brief.backend 2>&1").stdout
    assert resolves(inventory, "web", "db") == [ips["db"]]


# -- egress -----------------------------------------------------------------------------------------

def test_egress_from_h1_and_h2_leaves_with_the_hosts_address(net, outside):
    inventory, hosts = net["inventory"], net["hosts"]
    for container, host in (("web", "h1"), ("db", "h2"), ("o2", "h2")):
        result = sh(inventory, container, f"echo | timeout 3 nc {outside.address} {outside.port}")
        assert result.stdout.strip() == f"seen-from {hosts[host]}", (container, result.stdout, result.stderr)


def test_an_internal_network_has_no_egress(net, outside):
    inventory = net["inventory"]
    result = sh(inventory, "v1", f"echo | timeout 3 nc {outside.address} {outside.port}; echo rc=$?")
    assert "seen-from" not in result.stdout
    assert "default" not in sh(inventory, "v1", "ip route").stdout  # and no route that would pretend
    assert not reaches(inventory, "v1", net["hosts"]["h2"], 8080)  # not even to a published port


# -- published ports --------------------------------------------------------------------------------

def test_published_tcp_from_the_workstation_another_host_and_the_host_itself(lab, net):
    h2 = net["hosts"]["h2"]
    assert wait_for(lambda: tcp_get(h2, 8080) == "hello-from-db", 10, what="db's server")
    assert host_tcp_get(lab, "h1", h2, 8080) == "hello-from-db"  # another host
    assert host_tcp_get(lab, "h3", h2, 8080) == "hello-from-db"
    assert host_tcp_get(lab, "h2", h2, 8080) == "hello-from-db"  # the host itself, on its address
    assert host_tcp_get(lab, "h2", "127.0.0.1", 8080) == "hello-from-db"  # … and on localhost
    assert host_tcp_get(lab, "h1", "127.0.0.1", 8080).startswith("failed")  # published on h2 only


def test_published_udp_from_the_workstation(lab, net):
    pid = container_processes(lab, "h2")[ps(net["inventory"])["db"]["id"]]["pid"]
    with udpnet.responder(lab, "h2", pid, 53, "udp-hello") as db:
        assert wait_for(lambda: udp_ask(net["hosts"]["h2"], 5353) == "udp-hello", 20, what="a UDP answer")
    assert db.datagrams == [b"ping\n"]  # answered in db's network namespace, port 53 (published as 5353)


def test_hairpin_a_container_reaches_published_ports_through_a_hosts_address(net):
    inventory, h2 = net["inventory"], net["hosts"]["h2"]
    assert reaches(inventory, "db", h2, 8080)  # itself, through its own host
    assert reaches(inventory, "web", h2, 8080)  # from h1, through egress
    assert reaches(inventory, "o2", h2, 8080)  # a published port is public: other networks too


def test_a_taken_port_is_one_line_before_anything_is_created(net):
    inventory = net["inventory"]
    before = ps(inventory)
    line = one_line_error(cli(inventory, "run", "--host", "h2", "-n", "backend", "--name", "clash", "-p", "8080:81",
                              "-d", "--", "sleep", "10"),
                          "port 8080/tcp is already published on h2 by container 'db'", "pick another host port")
    assert line.startswith("cantainer: error:")
    one_line_error(cli(inventory, "run", "--host", "h2", "-n", "backend", "--name", "clash", "-p", "22:22", "-d",
                       "--", "sleep", "10"), "port 22/tcp is in use on h2 (a process of the host listens on")
    result = cli(inventory, "run", "--host", "h2", "-n", "backend", "--name", "clash", "-p", "8080:81", "-d", "--",
                 "true")
    assert result.returncode == 125  # run's own failure, as docker's
    after = ps(inventory)
    assert after.keys() == before.keys()  # nothing created, no address taken
    ok(cli(inventory, "run", "--host", "h2", "-n", "backend", "--name", "taker", "-d", "--", "sleep", "10"))
    assert ps(inventory)["taker"]["ip"] == "10.40.0.4"  # the lowest free one (brief's): the refused took none
    ok(cli(inventory, "rm", "-f", "taker"))


def test_ps_and_network_ls_show_ports_names_and_gateways(net):
    inventory = net["inventory"]
    table = ok(cli(inventory, "ps"))
    db_line = next(line for line in table.splitlines() if line.startswith("db "))
    assert "0.0.0.0:8080->80/tcp, 0.0.0.0:5353->53/udp" in db_line and " backend " in db_line
    networks = {n["name"]: n for n in json.loads(ok(cli(inventory, "network", "ls", "--json")))}
    assert {k: networks["backend"][k] for k in ("cidr", "gateway", "internal", "hosts", "containers")} == {
        "cidr": "10.40.0.0/24", "gateway": "10.40.0.1", "internal": False, "hosts": ["h1", "h2"], "containers": 2}
    assert networks["vault"]["internal"] is True and isinstance(networks["vault"]["vni"], int)


def test_a_service_name_answers_its_tasks_and_its_port_is_published_where_they_run(net):
    """Two tasks on two hosts (one host port each): `api` answers both, h1:18081 and h2:18081 reach them."""
    inventory, hosts = net["inventory"], net["hosts"]
    ok(cli(inventory, "service", "create", "api", "--replicas", "2", "-n", "backend", "-p", "18081:80", "--",
           "sh", "-c", TCP_SERVER))

    def serving() -> list[dict]:
        endpoints = json.loads(ok(cli(inventory, "service", "ps", "api", "--json")))["endpoints"]
        return endpoints if len(endpoints) == 2 else []

    def answers(host: str) -> str:
        try:
            return tcp_get(host, 18081)
        except OSError as error:
            return str(error)

    try:
        endpoints = wait_for(serving, 60, what="two serving tasks")
        assert sorted(resolves(inventory, "web", "api")) == sorted(e["ip"] for e in endpoints)
        assert resolves(inventory, "o1", "api") == []  # another network never learns it
        for endpoint in endpoints:
            address = hosts[endpoint["host"]]
            assert wait_for(lambda a=address: answers(a).startswith("hello-from-api-"), 10, what=f"api on {address}")
    finally:
        ok(cli(inventory, "service", "rm", "api"))


# -- isolation --------------------------------------------------------------------------------------

def isolated(net) -> None:
    """Nothing of one network reaches another, on one host or across, by any address, its gateway
    included; nor a host (but published ports)."""
    inventory, ips, hosts = net["inventory"], net["ips"], net["hosts"]
    for source, target in (("o1", ips["web"]), ("o1", ips["db"]), ("o2", ips["db"]), ("o2", ips["web"]),
                           ("web", ips["o1"]), ("db", ips["o2"]), ("v1", ips["web"]), ("web", ips["v1"]),
                           ("o1", "10.40.0.1"), ("web", "10.41.0.1"), ("v1", "10.40.0.1"),
                           ("o1", hosts["h1"]), ("o2", hosts["h2"]), ("web", hosts["h2"]), ("web", "10.40.0.1")):
        assert not reaches(inventory, source, target), f"{source} reached {target}"
    # DNS of another network's gateway, and a host's own services (sshd), are out of reach too
    assert "Address" not in sh(inventory, "o1", "nslookup db 10.40.0.1 2>&1").stdout.split("Server:")[-1]
    assert "SSH" not in sh(inventory, "o1", f"echo | timeout 2 nc {hosts['h2']} 22 2>&1").stdout
    assert "SSH" not in sh(inventory, "web", f"echo | timeout 2 nc {hosts['h1']} 22 2>&1").stdout
    # within a network, everything still flows
    assert reaches(inventory, "o1", ips["o2"]) and reaches(inventory, "web", ips["db"])


def test_networks_are_isolated_on_one_host_and_across_hosts(net):
    isolated(net)


# -- all of it after every agent is SIGKILLed --------------------------------------------------------

def test_everything_holds_after_every_agent_is_killed_and_up_brings_them_back(lab, net, outside):
    inventory, ips, hosts = net["inventory"], net["ips"], net["hosts"]
    ok(cli(inventory, "run", "--host", "h1", "-n", "backend", "--name", "pinger", "-d", "--",
           "ping", "-n", "-i", "0.1", "-w", "900", "db"))  # -n: iputils would look up every reply's name
    wait_for(lambda: replies(cli(inventory, "logs", "pinger").stdout), 30, what="pinger's first reply")
    time.sleep(1)
    first = max(replies(ok(cli(inventory, "logs", "pinger"))))
    old = {host: kill_agent(lab, host) for host in ("h1", "h2", "h3")}
    result = cli(inventory, "up", str(inventory))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(agent_pid(lab, host) not in (None, pid) for host, pid in old.items())
    time.sleep(1)
    cli(inventory, "exec", "pinger", "--", "kill", "-INT", "1")
    wait_for(lambda: ps(inventory)["pinger"]["state"] != "running", 30, what="pinger to stop")
    seqs = replies(ok(cli(inventory, "logs", "pinger")), ips["db"])
    last = max(seqs)
    assert last > first + 10 and set(range(first, last + 1)) <= seqs, sorted(set(range(first, last + 1)) - seqs)
    ok(cli(inventory, "rm", "pinger"))
    # and everything else as before
    assert resolves(inventory, "web", "db.backend") == [ips["db"]]
    assert resolves(inventory, "web", OUTSIDE_NAME) == [OUTSIDE_ADDRESS]
    assert sh(inventory, "web", f"echo | timeout 3 nc {outside.address} {outside.port}").stdout.strip() == (
        f"seen-from {hosts['h1']}")
    assert wait_for(lambda: tcp_get(hosts["h2"], 8080) == "hello-from-db", 10, what="the published port")
    assert host_tcp_get(lab, "h2", "127.0.0.1", 8080) == "hello-from-db"
    isolated(net)
