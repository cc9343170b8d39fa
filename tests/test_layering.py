"""The layering rules, checked on the import graph of both packages (as written in the source).

* no import cycles between modules (lazy imports inside functions count too);
* the agent (what `up` pushes to hosts) imports nothing from the workstation package;
* PySyncObj is imported only inside consensus/pysyncobj/ (one version check, one adapter).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cantainer": ROOT / "cantainer", "cantainer_agent": ROOT / "agent" / "cantainer_agent"}


def module_name(package: str, path: Path) -> str:
    parts = list(path.relative_to(PACKAGES[package]).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def modules() -> dict[str, Path]:
    return {module_name(pkg, p): p for pkg, root in PACKAGES.items() for p in root.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that *name* imports (``from . import x`` counts x when it is a module)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph, ignoring edges to a module's own package ``__init__`` chain."""
    def relevant(src: str, dst: str) -> bool:
        return not src.startswith(dst + ".")  # importing a parent package runs its __init__ first anyway

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if not relevant(node, nxt):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if state.get(start) is None:
            found = visit(start)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_agent_imports_nothing_from_the_workstation():
    offenders = {src: dst for src, dsts in graph().items() if src.startswith("cantainer_agent")
                 for dst in dsts if dst == "cantainer" or dst.startswith("cantainer.")}
    assert offenders == {}


def test_pysyncobj_is_touched_only_by_its_adapter():
    adapter = PACKAGES["cantainer_agent"] / "consensus" / "pysyncobj"
    users = []
    for path in PACKAGES["cantainer_agent"].rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        if any(n == "pysyncobj" or n.startswith("pysyncobj.") for n in names) and adapter not in path.parents:
            users.append(str(path.relative_to(ROOT)))
    assert users == []
