"""Issue #17, training runs and outputs: each fault is refused in one line (exit code 2) before
work starts, or, for a full disk while training, leaves the last good checkpoint as it was.
Every case checks the exit code, the line, and that inputs and earlier outputs are unchanged."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featsep.cli import app
from featsep.rundir import RunDir
from tests.helpers import tiny_run_config

HOOK = "blocks.1.hook_resid_post"


def _config(tmp_path: Path, model_dir, corpus, out_dir=None, extra: tuple[str, ...] = ()) -> str:
    return tiny_run_config(tmp_path, model_dir, corpus, out_dir=out_dir, extra=extra)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _error_line(result) -> str:
    """The one line a user error prints (no traceback)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, checkpoint_corpus):
    """A finished 4-step run (checkpoints at steps 2 and 4), copied by each test that changes it."""
    root = tmp_path_factory.mktemp("trained")
    done = _invoke("train", _config(root, tiny_llama_dir, checkpoint_corpus))
    assert done.exit_code == 0, done.output
    return root / "run"


@pytest.fixture
def killed(trained, tmp_path):
    """The trained run as a kill after its last checkpoint leaves it: no sae/, no training section."""
    run = RunDir(shutil.copytree(trained, tmp_path / "run"))
    shutil.rmtree(run.sae_dir)
    run.final_info_file.unlink()
    return run.path


# --- resume refuses what the checkpoints fixed ------------------------------------------------------
@pytest.mark.parametrize("override, key, old, new", [
    ("sae.k=8", "sae.k", "4", "8"),
    ("sae.d_sae=32", "sae.d_sae", "64", "32"),
    ("sae.architecture=batchtopk", "sae.architecture", '"topk"', '"batchtopk"'),
    ("train.batch_size=64", "train.batch_size", "128", "64"),
    ("train.lr=0.01", "train.lr", "0.001", "0.01"),
    ("data.context_length=8", "data.context_length", "16", "8"),
    ("model.hook=blocks.0.hook_resid_post", "model.hook", f'"{HOOK}"', '"blocks.0.hook_resid_post"'),
    ("data.seed=1", "data.seed", "42", "1"),
])
def test_resume_refuses_a_change_the_checkpoint_fixed(killed, override, key, old, new):
    before = _snapshot(killed)
    result = _invoke("train", "--resume", str(killed), "--set", override)
    assert result.exit_code == 2
    assert _error_line(result) == (
        f"error: {killed} was trained with {key} = {old}, not {new}, and its checkpoints depend on it; "
        f"keep {key} = {old} to continue it, or train into another out_dir"
    )
    assert _snapshot(killed) == before


def test_resume_refuses_an_added_penalty_and_a_finished_run_too(killed, trained, tmp_path):
    before = _snapshot(killed)
    added = _invoke("train", "--resume", str(killed), "--set", "penalties=[{name='momentum'}]")
    assert added.exit_code == 2
    assert _error_line(added).startswith(f'error: {killed} was trained with penalties = [], not ["momentum"],')
    assert _snapshot(killed) == before
    done = RunDir(shutil.copytree(trained, tmp_path / "done"))
    before = _snapshot(done.path)
    finished = _invoke("train", "--resume", str(done.path), "--set", "sae.k=8")
    assert finished.exit_code == 2 and "was trained with sae.k = 4, not 8" in _error_line(finished)
    assert _snapshot(done.path) == before
    assert json.loads((done.sae_dir / "cfg.json").read_text())["k"] == 4


def test_resume_allows_and_records_safe_changes(killed):
    config_before = json.loads(RunDir(killed).config_file.read_text())
    ckpt = RunDir(killed).checkpoint_path(4).read_bytes()
    result = _invoke("train", "--resume", str(killed), "--set", "train.log_every=2", "--set", "train.tokens=640")
    assert result.exit_code == 0, result.output
    assert "resume: train.tokens 512 -> 640\nresume: train.log_every 1 -> 2\n" in result.output
    config_after = json.loads(RunDir(killed).config_file.read_text())
    assert config_after["run_config"]["train"]["log_every"] == 2 and config_after["run_config"]["train"]["tokens"] == 640
    assert {k: v for k, v in config_after.items() if k != "run_config"} == {
        k: v for k, v in config_before.items() if k != "run_config"}
    assert RunDir(killed).checkpoint_path(4).read_bytes() == ckpt  # continued from it (5 steps now)
    assert RunDir(killed).read_training().final_info.training_steps == 5


def test_rerunning_train_config_on_a_run_checks_it_like_resume(killed, tiny_llama_dir, checkpoint_corpus, tmp_path):
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus, out_dir=killed, extra=("seed = 7",))
    before = _snapshot(killed)
    result = _invoke("train", config)
    assert result.exit_code == 2
    assert _error_line(result) == (f"error: {killed} was trained with train.seed = 42, not 7, and its checkpoints "
                                   "depend on it; keep train.seed = 42 to continue it, or train into another out_dir")
    assert _snapshot(killed) == before


def test_a_sweep_rerun_checks_every_run(tiny_llama_dir, checkpoint_corpus, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("\n".join([
        f'out_dir = "{tmp_path / "out"}"',
        "[model]", f'name = "{tiny_llama_dir}"', f'hook = "{HOOK}"', "batch_size = 4",
        "[data]", f'dataset = "{checkpoint_corpus}"', "context_length = 16", "shuffle_buffer = 8",
        "norm_estimate_batches = 2",
        "[train]", "tokens = 256", "batch_size = 128", "checkpoint_every = 1", "log_every = 1", "lr = 1e-3",
        "[[methods]]", 'name = "topk"', 'sae = {architecture = "topk", d_sae = 32}', 'grid = {"sae.k" = [2, 4]}',
    ]) + "\n")
    first = _invoke("sweep", str(sweep), "--no-eval", "--no-report")
    assert first.exit_code == 0, first.output
    before = _snapshot(tmp_path / "out")
    changed = _invoke("sweep", str(sweep), "--no-eval", "--no-report", "--set", "data.normalize=false")
    assert changed.exit_code == 2
    assert _error_line(changed) == (
        f"error: {tmp_path / 'out' / 'run_0'} was trained with data.normalize = true, not false, and its checkpoints "
        "depend on it; keep data.normalize = true to continue it, or train into another out_dir")
    assert _snapshot(tmp_path / "out") == before
    safe = _invoke("sweep", str(sweep), "--no-eval", "--no-report", "--set", "train.log_every=2")
    assert safe.exit_code == 0 and safe.output.count("resume: train.log_every 1 -> 2\n") == 1, safe.output
    for run in ("run_0", "run_1"):
        assert RunDir(tmp_path / "out" / run).read_config().run_config["train"]["log_every"] == 2


# --- output locations, before the model loads ----------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Loading activations fails the test: every check below must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("featsep.data.stream_from_config", boom)
    monkeypatch.setattr("featsep.lm.load_lm", boom)


def test_out_dir_that_is_a_file(tmp_path, tiny_llama_dir, checkpoint_corpus, no_model):
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus, out_dir=target))
    assert result.exit_code == 2
    assert _error_line(result) == f"error: out_dir {target} is a file, not a directory; choose another out_dir (or move the file)"
    assert target.read_text() == "keep me"
    below = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus, out_dir=target / "run"))
    assert below.exit_code == 2
    assert _error_line(below) == f"error: out_dir {target / 'run'} cannot be created: a parent of it is a file; choose another out_dir"
    assert target.read_text() == "keep me"


def test_out_dir_not_writable(tmp_path, tiny_llama_dir, checkpoint_corpus, no_model, monkeypatch):
    """Simulated (the tests may run as root, which every permission lets through)."""
    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", denied)
        result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus))
    assert result.exit_code == 2
    assert _error_line(result) == (f"error: out_dir {tmp_path / 'run'} cannot be created (permission denied); "
                                   "choose a writable out_dir")
    assert not (tmp_path / "run").exists()
    (tmp_path / "ro").mkdir()
    import os
    import types

    monkeypatch.setattr("featsep.io.os", types.SimpleNamespace(**{**vars(os), "access": lambda path, mode: False}))
    result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus, out_dir=tmp_path / "ro"))
    assert result.exit_code == 2
    assert _error_line(result) == (f"error: out_dir {tmp_path / 'ro'} is not writable (permission denied); "
                                   "choose a writable out_dir or fix its permissions")
    assert list((tmp_path / "ro").iterdir()) == []


def test_out_dir_that_is_the_input_cache(tmp_path, tiny_llama_dir, checkpoint_corpus, no_model):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{}")
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus, out_dir=cache)
    Path(config).write_text(Path(config).read_text().replace("[data]\n", f'[data]\ncache = "{cache}"\n'))
    result = _invoke("train", config)
    assert result.exit_code == 2
    assert _error_line(result) == (f"error: out_dir {cache} is the run's input data.cache; choose another out_dir, "
                                   "so the run's files never mix with (or overwrite) what it reads")
    assert _snapshot(cache) == {"manifest.json": b"{}"}


def test_not_enough_space_for_the_first_checkpoint(tmp_path, tiny_llama_dir, checkpoint_corpus, no_model,
                                                   monkeypatch):
    """d_in = 32 from the model dir's config.json: (2 * 32 * 64 + 64 + 32) * 4 * 3 bytes = 49.1 KB."""
    monkeypatch.setattr("featsep.pipeline.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus))
    assert result.exit_code == 2
    assert _error_line(result) == (
        f"error: out_dir {tmp_path / 'run'} has 1000 B free but the first checkpoint of 1 SAE(s) needs about 49.1 KB "
        "(parameters x 4 bytes x 3 for Adam's moments); free space or choose another out_dir")
    assert list((tmp_path / "run").iterdir()) == []


# --- a full disk while training --------------------------------------------------------------------
def _full_after(monkeypatch, target: str, calls_ok: int):
    """Make `target` (a writer) fail with ENOSPC after `calls_ok` calls, leaving a temp file
    behind it the way a real full disk does midway through an atomic write."""
    import importlib

    from featsep.io import atomic_target

    module, name = target.rsplit(".", 1)
    real = getattr(importlib.import_module(module), name)
    calls = []

    def writer(path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= calls_ok:
            return real(path, *args, **kwargs)
        with atomic_target(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target, writer)


def test_disk_full_at_a_checkpoint_keeps_the_last_good_one(trained, tmp_path, tiny_llama_dir, checkpoint_corpus,
                                                          monkeypatch):
    """The step-2 checkpoint is byte for byte the uninterrupted run's, and a resume finishes."""
    run = RunDir(tmp_path / "run")
    config = _config(tmp_path, tiny_llama_dir, checkpoint_corpus)
    with monkeypatch.context() as m:
        _full_after(m, "featsep.train.checkpoint.write_bytes_atomic", calls_ok=1)
        result = _invoke("train", config)
        assert result.exit_code == 2
        assert _error_line(result) == (f"error: no space left on device while writing {run.checkpoint_path(4)}; "
                                       "free space or choose another out_dir")
    assert sorted(run.checkpoint_steps()) == [2]
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["step_000000002.pt", "step_000000002.pt.sha256"]  # no temp file
    assert run.checkpoint_path(2).read_bytes() == RunDir(trained).checkpoint_path(2).read_bytes()
    resumed = _invoke("train", "--resume", str(run.path))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming 1 run(s) from their last checkpoint" in resumed.output
    assert run.read_training().final_info.training_steps == 4


def test_disk_full_at_a_metrics_row(tmp_path, tiny_llama_dir, checkpoint_corpus, monkeypatch):
    run = RunDir(tmp_path / "run")

    def full(self, row):
        if row["step"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")

    monkeypatch.setattr(RunDir, "append_metrics", full)
    result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus))
    assert result.exit_code == 2
    assert _error_line(result) == (f"error: no space left on device while writing {run.metrics_file}; "
                                   "free space or choose another out_dir")
    assert sorted(run.checkpoint_steps()) == [2] and [r["step"] for r in run.read_metrics()] == [1, 2]


def test_disk_full_with_featsep_debug_is_a_traceback(tmp_path, tiny_llama_dir, checkpoint_corpus, monkeypatch):
    monkeypatch.setenv("FEATSEP_DEBUG", "1")
    _full_after(monkeypatch, "featsep.train.checkpoint.write_bytes_atomic", calls_ok=0)
    result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus))
    assert result.exit_code == 1 and isinstance(result.exception, OSError)
    assert result.exception.errno == errno.ENOSPC and result.exception.filename.endswith("step_000000002.pt")


# --- eval --out-dir, report, config messages --------------------------------------------------------
def test_eval_out_dir_checked_before_the_eval_runs(trained, tmp_path, no_model):
    before = _snapshot(trained)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    result = _invoke("eval", str(trained), "--evals", "core", "--out-dir", str(taken))
    assert result.exit_code == 2
    assert _error_line(result) == f"error: out_dir {taken} is a file, not a directory; choose another out_dir (or move the file)"
    below = _invoke("eval", str(trained), "--evals", "core", "--out-dir", str(taken / "results"))
    assert below.exit_code == 2 and "a parent of it is a file" in _error_line(below)
    into_sae = _invoke("eval", str(trained), "--evals", "core", "--out-dir", str(trained / "sae"))
    assert into_sae.exit_code == 2
    assert _error_line(into_sae) == (f"error: out_dir {trained / 'sae'} is the SAE dir being evaluated; choose another "
                                     "out_dir (the results would mix with the SAE's own files)")
    assert taken.read_text() == "keep me" and _snapshot(trained) == before


def test_report_on_a_dir_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _invoke("report", str(tmp_path / "empty"))
    assert result.exit_code == 2
    assert _error_line(result) == (
        f"error: {tmp_path / 'empty'} holds no run (no run dir with final_info.json or metrics.jsonl); pass a run dir "
        "or a sweep dir, or train one first (`featsep train CONFIG`, `featsep sweep CONFIG`)")
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("override, line", [
    ("train.lr=-1", "  train.lr: Input should be greater than 0"),
    ("sae.k=5000", "  sae: k=5000 exceeds d_sae=64; choose k <= d_sae"),
])
def test_bad_values_name_their_field(tmp_path, tiny_llama_dir, checkpoint_corpus, override, line, no_model):
    result = _invoke("train", _config(tmp_path, tiny_llama_dir, checkpoint_corpus), "--set", override)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines() == [f"error: invalid {tmp_path / 'run.toml'}:", line]
    assert not (tmp_path / "run").exists()
