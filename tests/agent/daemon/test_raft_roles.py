"""dqlite-style roles with real agents (roles.py): 5 hosts, 3 voters, 2 standbys; a voter that
stays away is replaced by a standby, and comes back as a standby itself."""

from __future__ import annotations

import pytest

from .agentctl import wait_for
from .test_raft_durability import converged, create

pytestmark = pytest.mark.root


def roles(agent) -> dict[str, str]:
    return {n["name"]: n["role"] for n in agent.status()["nodes"]}


@pytest.mark.slow
def test_voters_are_capped_and_a_standby_replaces_a_lost_voter(netns, make_cluster):
    cluster = make_cluster(5, base=80, netns=netns).start()
    n = {a.name: a for a in cluster.agents}
    view = wait_for(lambda: (lambda r: r if sorted(r.values()).count("standby") == 2 else None)(roles(n["n1"])),
                    15, "two standbys")
    assert sorted(view.values()) == ["follower", "follower", "leader", "standby", "standby"]
    assert view["n4"] == view["n5"] == "standby"  # joined after the 3 voters
    for name in ("n4", "n5"):
        st = n[name].status()
        assert st["raft"]["role"] == "standby" and len(st["raft"]["members"]) == 3
    # a standby forwards writes and serves reads
    expected = {}
    net = create(n["n5"], 1)
    expected[net["cidr"]] = net["vni"]
    wait_for(lambda: converged(cluster, expected), 10, "the write everywhere, standbys included")

    # a voter (not the leader) disappears for longer than the promotion threshold (10 s)
    leader_name = next(name for name, role in roles(n["n1"]).items() if role == "leader")
    lost = next(a for a in cluster.agents if a.name in ("n1", "n2", "n3") and a.name != leader_name)
    lost.kill9()
    watcher = n[leader_name]
    new_roles = wait_for(lambda: (lambda r: r if sorted(r[x] for x in ("n4", "n5")) == ["follower", "standby"]
                                  or "leader" in (r["n4"], r["n5"]) else None)(roles(watcher)), 30, "a promotion")
    promoted = next(x for x in ("n4", "n5") if new_roles[x] != "standby")
    assert new_roles[lost.name] == "standby"  # no longer a voter (shown as down)
    wait_for(lambda: n[promoted].status()["raft"]["role"] in ("follower", "leader"), 10,
             "the promoted standby restarting as a voter")
    net = create(n[promoted], 2)
    expected[net["cidr"]] = net["vni"]

    # the lost voter comes back: it finds it was replaced and follows as a standby
    lost.start(cluster.env)
    wait_for(lambda: lost.status()["raft"]["role"] == "standby", 30, "the returning voter to become a standby")
    net = create(lost, 3)  # and it forwards writes like any standby
    expected[net["cidr"]] = net["vni"]
    wait_for(lambda: converged(cluster, expected), 15, "every member (voters and standbys) converged")
    final = wait_for(lambda: (lambda r: r if sorted(r.values()) == ["follower", "follower", "leader", "standby",
                                                                     "standby"] else None)(roles(watcher)),
                     15, "3 voters and 2 standbys again")
    assert final[lost.name] == "standby"
