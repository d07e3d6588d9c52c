"""featsep.evals' import rules: no eval imports another eval's module, no private names across
modules (shared helpers live in featsep.evals.common)."""

from __future__ import annotations

import ast
from pathlib import Path

import featsep.evals
from featsep.evals.registry import BUILTIN_EVAL_MODULES

EVALS_DIR = Path(featsep.evals.__file__).parent
EVAL_MODULES = {m.rsplit(".", 1)[1] for m in BUILTIN_EVAL_MODULES} | {"synthetic"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(EVALS_DIR.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(imported module, imported names) of every import in the file, relative ones resolved."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield base, [alias.name for alias in node.names]


def _eval_of(module: str):
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["featsep", "evals"] and parts[2] in EVAL_MODULES else None


def test_the_evals_are_known_and_present():
    assert EVAL_MODULES == {"core", "sparse_probing", "absorption", "scr_tpp", "unlearning", "autointerp",
                            "competition", "synthetic"}
    for name in EVAL_MODULES:
        assert (EVALS_DIR / f"{name}.py").is_file() or (EVALS_DIR / name / "__init__.py").is_file()


def test_no_eval_imports_another_eval():
    bad = []
    for path in sorted(EVALS_DIR.rglob("*.py")):
        own = _eval_of(_module_name(path))
        for module, names in _imports(path):
            targets = [module] + [f"{module}.{n}" for n in names]
            for target in targets:
                other = _eval_of(target)
                if other is not None and other != own:
                    bad.append(f"{path.relative_to(EVALS_DIR)} imports {target}")
    assert not bad, "\n".join(bad)

