"""The stack planner, from data: each fixture in fixtures/stacks/ is {about, stack (the TOML document),
facts (what the cluster has), changes and kept (what the plan must say), prune?, volumes?}.

A recorded spec written "$file" is the spec the file gives that object now (as apply would have
recorded it), {"$file": {KEY: VALUE}} the same with those keys as they were then — so a fixture
states only what differs, and the file's normalisation is tested on its own (test_stack_file.py).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cantainer.stacks.file import check_document
from cantainer.stacks.plan import PlanError, pending, plan

FIXTURES = Path(__file__).parent / "fixtures" / "stacks"
CASES = sorted(p for p in FIXTURES.glob("*.json") if p.stem != "refusals")
PROJECTED = ("symbol", "kind", "name", "target", "op")


def recorded_spec(stack: dict, key: str, value):
    kind, _, name = key.partition(":")
    table = {"network": "networks", "volume": "volumes", "service": "services", "container": "containers"}[kind]
    if value == "$file" or isinstance(value, dict) and "$file" in value:
        spec = copy.deepcopy(stack[table][name])
        if kind in ("service", "container"):
            spec["subnet"] = stack["networks"][spec["network"]]["subnet"]
        if isinstance(value, dict):
            spec.update(value["$file"])
        return spec
    return value


def facts_of(case: dict, stack: dict) -> dict:
    facts = copy.deepcopy(case["facts"])
    for objects in facts["stacks"].values():
        for key, entry in objects.items():
            entry["spec"] = recorded_spec(stack, key, entry["spec"])
    return facts


def projected(change) -> dict:
    data = change.to_dict()
    out = {key: data[key] for key in PROJECTED}
    for key, default in (("fields", []), ("owned", True), ("host", None)):  # (previous: the record's, tested below)
        if data[key] != default:
            out[key] = data[key]
    return out


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_from_fixture(path: Path):
    case = json.loads(path.read_text())
    stack = check_document(case["stack"])
    result = plan(stack, facts_of(case, stack), prune=case.get("prune", False), volumes=case.get("volumes", False))
    assert [projected(c) for c in result["changes"]] == case["changes"], case["about"]
    assert [projected(c) for c in result["kept"]] == case["kept"], case["about"]
    assert pending(result) == any(c["symbol"] != "=" for c in case["changes"])
    from cantainer.cli.stacks import rows

    shown = rows(result["changes"] + result["kept"])  # every op the planner makes has its words in the table
    assert [row[1:3] for row in shown] == [[c.kind, c.name] for c in result["changes"] + result["kept"]]


REFUSALS = json.loads((FIXTURES / "refusals.json").read_text())["cases"]


@pytest.mark.parametrize("case", REFUSALS, ids=[c["about"] for c in REFUSALS])
def test_plans_that_cannot_be_applied_are_one_error(case):
    stack = check_document(case["stack"])
    with pytest.raises(PlanError) as caught:
        plan(stack, facts_of(case, stack))
    assert case["error"] in str(caught.value)


def test_a_plan_is_pure_and_its_changes_record_what_the_file_asked():
    case = json.loads((FIXTURES / "fresh.json").read_text())
    stack = check_document(case["stack"])
    facts = facts_of(case, stack)
    before = copy.deepcopy(facts)
    first, second = plan(stack, facts), plan(stack, facts)
    assert facts == before and [c.to_dict() for c in first["changes"]] == [c.to_dict() for c in second["changes"]]
    web = next(c for c in first["changes"] if c.kind == "service")
    assert web.spec["replicas"] == 3 and web.spec["subnet"] == "10.20.0.0/24" and web.spec["network"] == "front"


def test_applying_the_plan_of_a_fresh_stack_makes_the_next_plan_empty():
    """The record apply writes (each change's target, spec and owner) is what the next plan compares
    with: simulate the cluster after a successful apply and plan again."""
    case = json.loads((FIXTURES / "fresh.json").read_text())
    stack = check_document(case["stack"])
    facts = facts_of(case, stack)
    for change in plan(stack, facts)["changes"]:
        facts["stacks"].setdefault("shop", {})[change.key] = {"kind": change.kind, "name": change.target,
                                                              "spec": change.spec, "owned": change.owned}
        if change.kind == "network":
            facts["networks"][change.target] = {"containers": 0}
        elif change.kind == "volume":
            facts["volumes"][change.target] = {"host": change.host, "containers": []}
        elif change.kind == "service":
            facts["services"][change.target] = {"replicas": change.spec["replicas"], "image": "alpine"}
        else:
            facts["containers"][change.target] = {"state": "running", "host": change.spec["host"], "id": "x"}
    again = plan(stack, facts)
    assert not pending(again) and {c.op for c in again["changes"]} == {"none"}
