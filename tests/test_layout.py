"""tests/ mirrors featsep/: every module with logic has a test file where a reader looks for it,
and test files share code only through conftest.py and helper modules, never through each other."""

from __future__ import annotations

import ast
from pathlib import Path

import featsep

PACKAGE = Path(featsep.__file__).parent
TESTS = Path(__file__).parent

# module -> the test file that covers it, where one file tests several modules together
COVERED_BY = {
    "featsep/sae/base.py": "sae/test_architectures.py",  # the base SAE is tested through every architecture
    "featsep/sae/topk.py": "sae/test_architectures.py",
    "featsep/sae/batchtopk.py": "sae/test_architectures.py",
    "featsep/sae/jumprelu.py": "sae/test_architectures.py",
    "featsep/sae/matryoshka.py": "sae/test_architectures.py",
    "featsep/sae/relu_l1.py": "sae/test_architectures.py",
    "featsep/penalties/reference.py": "penalties/test_momentum.py",  # references are what the fast code is checked against
    "featsep/lm/hooks.py": "lm/test_model.py",  # hook names are parsed and range-checked on the tiny models
    "featsep/data/buffer.py": "data/test_stream.py",  # the shuffle buffer is the stream's
    "featsep/data/sources.py": "data/test_stream.py",  # ArraySource feeds ActivationStream.from_tensor
    "featsep/data/hub.py": "data/test_probing.py",  # the probing sets are what the hub helpers load
    "featsep/data/offline.py": "evals/test_scr_tpp.py",  # offline byline and trivia sets, checked by the evals using them
    "featsep/evals/autointerp/__init__.py": "evals/test_autointerp.py",  # the eval package, tested as one
    "featsep/evals/autointerp/judges.py": "evals/test_autointerp.py",  # judges exist for autointerp
    "featsep/evals/scr_tpp/common.py": "evals/test_scr_tpp.py",  # SCR and TPP share one test file, as one eval family
    "featsep/evals/scr_tpp/scr.py": "evals/test_scr_tpp.py",
    "featsep/evals/scr_tpp/tpp.py": "evals/test_scr_tpp.py",
    "featsep/data/scr.py": "evals/test_scr_tpp.py",  # SCR frames, checked by the eval that reads them
    "featsep/data/questions.py": "evals/test_unlearning.py",  # question sets, checked by the eval that asks them
    "featsep/evals/registry.py": "evals/test_layering.py",
    "featsep/evals/schema.py": "evals/test_runner.py",  # the SAEBench JSON the runner writes
    "featsep/evals/settings.py": "test_config.py",  # eval settings are checked when the config is read
    "featsep/evals/common/context.py": "evals/test_core.py",
    "featsep/evals/common/pooling.py": "evals/test_common.py",
    "featsep/evals/common/probes.py": "evals/test_common.py",
    "featsep/evals/common/tokens.py": "evals/test_common.py",
    "featsep/evals/unlearning/__init__.py": "evals/test_unlearning.py",
    "featsep/evals/unlearning/latents.py": "evals/test_unlearning.py",
    "featsep/evals/unlearning/questions.py": "evals/test_unlearning.py",
    "featsep/train/__init__.py": "train/test_trainer.py",
    "featsep/train/artifacts.py": "train/test_trainer.py",  # the trainer is the only writer of these
    "featsep/train/logger.py": "train/test_trainer.py",
    "featsep/train/schedule.py": "train/test_trainer.py",
    "featsep/report/figures.py": "report/test_build.py",  # figures, tables and pages are checked on one built report
    "featsep/report/findings.py": "report/test_build.py",
    "featsep/report/frontier.py": "report/test_build.py",
    "featsep/report/html.py": "report/test_build.py",
    "featsep/report/markdown.py": "report/test_build.py",
    "featsep/report/metrics.py": "report/test_collect.py",
    "featsep/report/tables.py": "report/test_build.py",
    "featsep/pipeline.py": "test_sweep.py",  # sweeps run through the pipeline
    "featsep/settings.py": "test_config.py",  # typed settings sections are checked where the config is read
    "featsep/data/config.py": "test_config.py",
    "featsep/lm/config.py": "test_config.py",
    "featsep/train/config.py": "test_config.py",
    "featsep/evals/unlearning/settings.py": "evals/test_unlearning.py",
    "featsep/data/errors.py": "data/test_tables.py",  # error types only; raised and matched by the data tests
    "featsep/hooknames.py": "test_layering.py",  # exists so train need not import lm; parsing is tested in lm
    "featsep/registry.py": "penalties/test_base.py",  # the generic registry, tested through the penalty registry
    "featsep/__init__.py": "train/test_trainer.py",  # the public featsep.train / make_sae names
}


def _has_logic(path: Path) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in ast.parse(path.read_text()).body)


def _mirror(path: Path) -> Path:
    rel = path.relative_to(PACKAGE)
    return TESTS / rel.parent / f"test_{rel.stem}.py"


def test_every_module_with_logic_has_a_mirrored_test_file():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if not _has_logic(path):
            continue
        key = path.relative_to(PACKAGE.parent).as_posix()
        target = TESTS / COVERED_BY[key] if key in COVERED_BY else _mirror(path)
        if not target.is_file():
            missing.append(f"{key} -> tests/{target.relative_to(TESTS).as_posix()}")
    assert not missing, "modules without their test file:\n" + "\n".join(missing)


def test_the_covered_by_list_names_real_modules_without_their_own_file():
    for module, test in COVERED_BY.items():
        path = PACKAGE.parent / module
        assert path.is_file(), module
        assert not _mirror(path).is_file(), f"{module} has its own test file; drop it from COVERED_BY"
        assert (TESTS / test).is_file(), test


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_no_test_file_imports_another_test_file():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for module in _imported_modules(path):
            if module.startswith("tests") and module.rsplit(".", 1)[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(TESTS).as_posix()} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_import_check_sees_both_import_forms(tmp_path):
    path = tmp_path / "test_x.py"
    path.write_text("from tests.evals import test_core\nimport tests.data.test_stream\nfrom tests.helpers import tiny_llama\n")
    found = [m for m in _imported_modules(path) if m.rsplit(".", 1)[-1].startswith("test_")]
    assert found == ["tests.evals.test_core", "tests.data.test_stream"]
