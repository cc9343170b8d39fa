"""The DNS answer table from a state (pure): who answers what, and which names are never another network's."""
from __future__ import annotations

import pytest

from cantainer_agent.dns import records
from cantainer_agent.dns.records import NXDOMAIN, Answer, Entry, build, lookup

NETWORKS = {
    "10.50.0.0/24": {"name": "backend", "gateway": "10.50.0.1"},
    "10.60.0.0/24": {"name": "vault", "gateway": "10.60.0.1"},
}
CONTAINERS = {
    "web": {"name": "web", "network": "10.50.0.0/24", "ip": "10.50.0.2", "observed": {"state": "running"}},
    "db": {"name": "db", "network": "10.50.0.0/24", "ip": "10.50.0.3", "observed": {"state": "created"}},
    "gone": {"name": "gone", "network": "10.50.0.0/24", "ip": "10.50.0.4", "observed": {"state": "exited"}},
    "dead": {"name": "dead", "network": "10.50.0.0/24", "ip": "10.50.0.5", "observed": {"state": "dead"}},
    "secret": {"name": "secret", "network": "10.60.0.0/24", "ip": "10.60.0.2", "observed": {"state": "running"}},
    "lost": {"name": "lost", "network": "10.99.0.0/24", "ip": "10.99.0.2", "observed": {"state": "running"}},
}
BACKEND, VAULT = "10.50.0.0/24", "10.60.0.0/24"


@pytest.fixture
def table():
    return build(NETWORKS, CONTAINERS, revision=7)


@pytest.mark.parametrize("qname, addresses", [
    ("web", ("10.50.0.2",)), ("web.", ("10.50.0.2",)), ("WEB.Backend.", ("10.50.0.2",)),
    ("db.backend", ("10.50.0.3",)),  # created: starting, reachable the moment it runs
])
def test_names_of_the_own_network(table, qname, addresses):
    assert lookup(table, BACKEND, qname) == Answer(addresses)


@pytest.mark.parametrize("qname", ["gone", "dead", "gone.backend", "nobody", "nobody.backend", "x.web.backend",
                                   "secret", "secret.vault", "web.vault", "vault", "anything.vault"])
def test_not_here_is_nxdomain_never_forwarded(table, qname):
    """Exited containers, unknown single labels, deeper names, and every name of another network."""
    assert lookup(table, BACKEND, qname) == NXDOMAIN and not NXDOMAIN.exists


def test_the_other_network_sees_only_its_own(table):
    assert lookup(table, VAULT, "secret") == Answer(("10.60.0.2",))
    assert lookup(table, VAULT, "web") == NXDOMAIN
    assert lookup(table, VAULT, "web.backend") == NXDOMAIN


@pytest.mark.parametrize("qname", ["example.com", "outside.test.", "web.backend.example.com", "localhost.localdomain"])
def test_other_names_are_forwarded(table, qname):
    assert lookup(table, BACKEND, qname) is None


def test_reverse_names(table):
    assert lookup(table, BACKEND, "2.0.50.10.in-addr.arpa.") == Answer(ptr="web.backend")
    assert lookup(table, BACKEND, "9.0.50.10.in-addr.arpa") == NXDOMAIN  # our subnet, nobody there
    assert lookup(table, BACKEND, "2.0.60.10.in-addr.arpa") == NXDOMAIN  # another network's address
    assert lookup(table, BACKEND, "7.0.0.10.in-addr.arpa") is None  # not an overlay address
    assert lookup(table, BACKEND, "0.10.in-addr.arpa") is None


def test_a_network_this_table_does_not_know_answers_nothing(table):
    assert lookup(table, "10.70.0.0/24", "web") == NXDOMAIN


def test_sources_plug_in_and_a_name_may_have_many_addresses():
    """How a service (issue 16) answers all its healthy tasks: a source yielding one entry per task."""
    def services(networks, containers):
        yield Entry(BACKEND, "api", "10.50.0.9")
        yield Entry(BACKEND, "api", "10.50.0.10")
        yield Entry("10.1.0.0/24", "api", "10.1.0.2")  # a network the state lacks: ignored
    table = build(NETWORKS, CONTAINERS, sources=[*records.SOURCES, services])
    assert lookup(table, BACKEND, "api.backend") == Answer(("10.50.0.9", "10.50.0.10"))  # numeric order
    assert lookup(table, BACKEND, "web") == Answer(("10.50.0.2",))
    assert table.revision == -1 and build(NETWORKS, CONTAINERS, 7).revision == 7


def test_a_service_name_answers_the_tasks_that_serve():
    """Running and healthy (or unchecked) tasks; not one starting, unhealthy, retiring or exited."""
    def task(slot, ip, state="running", **extra):
        return {"name": f"api.{slot}", "service": "api", "host": "h1", "network": BACKEND, "ip": ip,
                "observed": {"state": state},
                **extra}
    tasks = {t["name"]: t for t in (
        task(1, "10.50.0.11"), task(2, "10.50.0.12", health={"cmd": ["true"]}),
        task(3, "10.50.0.13"), task(4, "10.50.0.14", state="exited"), task(5, "10.50.0.15", retire={"at": 1.0}),
        task(6, "10.50.0.16", state="created"))}
    tasks["api.2"]["observed"]["health"] = {"status": "healthy"}
    tasks["api.3"]["health"] = {"cmd": ["true"]}
    tasks["api.3"]["observed"]["health"] = {"status": "unhealthy"}
    table = build(NETWORKS, {**CONTAINERS, **tasks})
    both = Answer(("10.50.0.11", "10.50.0.12"))
    assert lookup(table, BACKEND, "api") == lookup(table, BACKEND, "api.backend") == both
    assert lookup(table, VAULT, "api") == NXDOMAIN  # another network never learns it
