"""The import order of docs/architecture.md, enforced: every featsep module imports only from
its own unit or the units its layer may use, no import cycles, no private names across modules.

Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import featsep

ROOT = Path(featsep.__file__).parent

FOUNDATION = {"io", "registry", "settings", "codes", "rundir", "version", "hub", "hooknames", "distributed",
              "device"}
ORCHESTRATION = {"config", "pipeline", "sweep", "cli", "__init__", "__main__"}
# unit -> the units it may import (its own unit always); docs/architecture.md's table
ALLOWED = {
    **{unit: FOUNDATION for unit in FOUNDATION},
    "lm": FOUNDATION,
    "data": FOUNDATION | {"lm"},
    "sae": FOUNDATION,
    "penalties": FOUNDATION,
    "train": FOUNDATION | {"sae", "penalties"},
    "evals": FOUNDATION | {"lm", "data", "sae", "penalties"},
    "report": FOUNDATION,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("featsep",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _unit(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported featsep module, names taken from it, line) for every import in the file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "featsep"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "featsep":
                continue
            names = [a.name for a in node.names]
            for name in names:  # `from featsep.sae import topk` imports the module featsep.sae.topk
                if f"{target}.{name}" in MODULES:
                    found.append((f"{target}.{name}", [], node.lineno))
            plain = [n for n in names if f"{target}.{n}" not in MODULES]
            if plain:
                found.append((target, plain, node.lineno))
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_import_follows_the_layer_order():
    bad = []
    for module, imports in GRAPH.items():
        unit = _unit(module)
        if unit in ORCHESTRATION:
            continue
        assert unit in ALLOWED, f"{module}: unit {unit!r} has no place in the layer table; add it (and to docs/architecture.md)"
        for target, _, line in imports:
            other = _unit(target)
            if other != unit and other not in ALLOWED[unit]:
                bad.append(f"{module}:{line} imports {target} ({unit} may import: {', '.join(sorted(ALLOWED[unit]))})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    edges = {m: {t for t, _, _ in imps if t in MODULES and t != m} for m, imps in GRAPH.items()}
    # a package's __init__ importing its own submodules is how Python packages work, not a cycle
    edges = {m: {t for t in ts if not (t.startswith(m + ".") and MODULES[m].name == "__init__.py")}
             for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_private_names_cross_modules():
    bad = [f"{module}:{line} takes {', '.join(n for n in names if n.startswith('_'))} from {target}"
           for module, imports in GRAPH.items() for target, names, line in imports
           if target != module and any(n.startswith("_") and not n.startswith("__") for n in names)]
    # a private module (featsep.x._y) is private too, whatever is taken from it
    bad += [f"{module}:{line} imports the private module {target}" for module, imports in GRAPH.items()
            for target, _, line in imports
            if any(p.startswith("_") and not p.startswith("__") for p in target.split("."))]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_checks_see_real_violations(tmp_path):
    """The walker resolves relative and lazy imports (a checker that sees nothing passes everything)."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from featsep.evals import evaluate\n    from .base import _hidden\n")
    found = _imports("featsep.sae.mod", src)
    assert ("featsep.evals", ["evaluate"], 2) in found and ("featsep.sae.base", ["_hidden"], 3) in found


def test_docs_place_every_unit():
    """docs/architecture.md is the map: every unit in the table above appears in it."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text()
    for unit in FOUNDATION | set(ALLOWED):
        assert f"`{unit}`" in text, f"docs/architecture.md does not place unit {unit!r}"
