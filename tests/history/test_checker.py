"""The linearizability checker on hand-made histories: it must accept what is linearizable and catch
the anomalies it exists for — a stale read, a double apply, a lost acknowledgement."""
from __future__ import annotations

import ipaddress
import random

from .checker import Op, check
from .models import Containers, Networks

A, B = "10.200.0.0/24", "10.200.1.0/24"
WIDE = "10.200.0.0/23"  # overlaps A and B
FAMILIES = ["10.200.0.0/16"]


def op(client, kind, arg, call, ret, result):
    return Op(client, kind, arg if kind != "ls" else FAMILIES, call, ret, result)


def ls(client, call, ret, seen):
    return Op(client, "ls", FAMILIES, call, ret, frozenset(seen))


def test_a_sequential_history_is_linearizable():
    history = [op(1, "create", A, 0, 1, ("ok", True)), ls(1, 2, 3, {A}), op(1, "delete", A, 4, 5, ("ok", None)),
               ls(1, 6, 7, set())]
    assert check(Networks(), history) is None


def test_concurrent_ops_may_take_effect_in_either_order():
    # The read overlaps the create: it may see it or not; both histories are fine.
    for seen in ({A}, set()):
        assert check(Networks(), [op(1, "create", A, 0, 5, ("ok", True)), ls(2, 1, 2, seen)]) is None


def test_a_stale_read_is_caught():
    # Observed: a follower answered `ls` without a create acknowledged before the read began.
    history = [op(1, "create", A, 0, 1, ("ok", True)), ls(2, 2, 3, set())]
    violation = check(Networks(), history)
    assert violation is not None and "ls" in str(violation)


def test_a_stale_read_after_a_removal_is_caught():
    history = [op(1, "create", A, 0, 1, ("ok", True)), op(1, "delete", A, 2, 3, ("ok", None)), ls(2, 4, 5, {A})]
    assert check(Networks(), history) is not None


def test_a_double_apply_is_caught():
    # A retried create took effect twice: "created" twice with no removal between.
    history = [op(1, "create", A, 0, 1, ("ok", True)), op(2, "create", A, 2, 3, ("ok", True))]
    assert check(Networks(), history) is not None


def test_a_removal_answered_ok_for_a_network_already_gone_is_caught():
    # The anomaly seen in the field: client 2 removed WIDE and created an overlapping /24; client 1's
    # retried `network rm WIDE` was answered ok although there was nothing left to remove.
    history = [op(1, "create", WIDE, 0, 1, ("ok", True)), op(2, "delete", WIDE, 2, 3, ("ok", None)),
               op(2, "create", A, 4, 5, ("ok", True)), op(1, "delete", WIDE, 6, 7, ("ok", None))]
    assert check(Networks(), history) is not None
    honest = history[:-1] + [op(1, "delete", WIDE, 6, 7, ("error", "not_found"))]
    assert check(Networks(), honest) is None


def test_a_lost_acknowledgement_is_caught():
    # Acknowledged, then never seen by any later read, and nobody removed it.
    history = [op(1, "create", A, 0, 1, ("ok", True)), ls(2, 2, 3, set()), ls(3, 4, 5, set())]
    assert check(Networks(), history) is not None


def test_overlaps_are_judged_against_the_order_found():
    # WIDE and A overlap: exactly one create can win; who wins depends on the order — both are fine.
    history = [op(1, "create", WIDE, 0, 3, ("ok", True)), op(2, "create", A, 1, 2, ("error", "conflict"))]
    assert check(Networks(), history) is None
    both = [op(1, "create", WIDE, 0, 3, ("ok", True)), op(2, "create", A, 1, 2, ("ok", True))]
    assert check(Networks(), both) is not None


def test_a_pending_op_may_have_taken_effect_or_not():
    pending = Op(1, "create", A, 0, None)  # the client gave up waiting
    assert check(Networks(), [pending, ls(2, 5, 6, {A})]) is None
    assert check(Networks(), [Op(1, "create", A, 0, None), ls(2, 5, 6, set())]) is None
    # but not before it was called
    assert check(Networks(), [ls(2, 0, 1, {A}), Op(1, "create", A, 2, None)]) is not None


def test_container_addresses_must_be_unique_and_lowest_free():
    model = Containers("10.30.0.0/24", ["a", "b", "c"], gateway=False)
    good = [Op(1, "run", "a", 0, 1, ("ok", "10.30.0.1")), Op(2, "run", "b", 0.5, 2, ("ok", "10.30.0.2")),
            Op(1, "rm", "a", 3, 4, ("ok", None)), Op(3, "run", "c", 5, 6, ("ok", "10.30.0.1")),
            Op(2, "ps", None, 7, 8, frozenset({("b", "10.30.0.2"), ("c", "10.30.0.1")}))]
    assert check(model, good) is None
    duplicate = [Op(1, "run", "a", 0, 1, ("ok", "10.30.0.1")), Op(2, "run", "b", 0.5, 2, ("ok", "10.30.0.1"))]
    assert check(model, duplicate) is not None
    twice = [Op(1, "run", "a", 0, 1, ("ok", "10.30.0.1")), Op(2, "run", "a", 2, 3, ("ok", "10.30.0.2"))]
    assert check(model, twice) is not None
    # with a gateway the first address is never a container's
    gateway = Containers("10.30.0.0/24", ["a", "b"])
    assert check(gateway, [Op(1, "run", "a", 0, 1, ("ok", "10.30.0.2"))]) is None
    assert check(gateway, [Op(1, "run", "a", 0, 1, ("ok", "10.30.0.1"))]) is not None


def test_a_long_concurrent_linearizable_history_is_checked_quickly():
    # Simulate a real linearizable system (ops take effect at a random instant inside their interval)
    # with 6 clients and 400 ops: the search with memoisation must accept it.
    rng = random.Random(7)
    cidrs = [f"10.200.{i}.0/24" for i in range(6)] + ["10.200.0.0/23", "10.200.2.0/23"]
    state: set[str] = set()
    events = []
    t = 0.0
    for n in range(400):
        t += rng.random()
        call, effect = t, t + rng.random() * 0.5
        ret = effect + rng.random() * 0.5
        events.append((effect, n % 6, rng.choice(["create", "delete", "ls"]), rng.choice(cidrs), call, ret))
    history = []
    for _effect, client, kind, cidr, call, ret in sorted(events):
        if kind == "ls":
            history.append(ls(client, call, ret, state))
        elif kind == "create":
            net = cidr
            if cidr in state:
                result = ("ok", False)
            elif any(ipaddress.ip_network(net).overlaps(ipaddress.ip_network(o)) for o in state):
                result = ("error", "conflict")
            else:
                result = ("ok", True)
                state.add(cidr)
            history.append(op(client, "create", cidr, call, ret, result))
        else:
            result = ("ok", None) if cidr in state else ("error", "not_found")
            state.discard(cidr)
            history.append(op(client, "delete", cidr, call, ret, result))
    assert check(Networks(), history) is None
    # and one wrong answer in it is found
    flipped = list(history)
    i = next(i for i, o in enumerate(flipped) if o.kind == "delete" and o.result == ("ok", None))
    wrong = flipped[i]
    flipped[i] = op(wrong.client, "delete", wrong.arg, wrong.call, wrong.ret, ("error", "not_found"))
    assert check(Networks(), flipped) is not None


def test_the_volumes_model_knows_a_volume_lives_on_one_host():
    from .models import Volumes

    def vop(client, kind, arg, call, ret, result):
        return Op(client, kind, arg, call, ret, result)

    model = Volumes(["v"])
    good = [vop(1, "vcreate", ("v", "h1"), 0, 1, ("ok", True)),
            vop(2, "vcreate", ("v", "h2"), 2, 3, ("error", "already_exists")),
            vop(2, "vrm", ("v", "h2"), 4, 5, ("error", "conflict")),
            vop(3, "vls", None, 6, 7, frozenset({("v", "h1")})),
            vop(1, "vrm", ("v", "h1"), 8, 9, ("ok", None)),
            vop(3, "vls", None, 10, 11, frozenset())]
    assert check(model, good) is None
    # a removal by the wrong host that took effect (the race `remove_volume`'s host check closes)
    wrong = good[:2] + [vop(2, "vrm", ("v", "h2"), 4, 5, ("ok", None)), vop(3, "vls", None, 6, 7, frozenset())]
    assert check(model, wrong) is not None
    # a second host's create answered "created" for a name that exists: two volumes of one name
    assert check(model, good[:1] + [vop(2, "vcreate", ("v", "h2"), 2, 3, ("ok", True))]) is not None
