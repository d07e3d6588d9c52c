"""Integrity faults at the command line: corrupted SAE files and checkpoints, and `featsep export`
pointed at the wrong place or at a full disk. Each case: the exit code, the one line, and that no
input or earlier output changed."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import featsep
from featsep.cli import app
from featsep.rundir import RunDir

D, N = 8, 24


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(done, alone: bool = True) -> str:
    """The one error line of a command that exited 2; `alone=False`: progress lines of a model
    load may surround it."""
    errors = [line for line in done.output.splitlines() if line.startswith("error: ")]
    assert done.exit_code == 2 and len(errors) == 1 and "Traceback" not in done.output, done.output
    if alone:
        assert done.output.strip() == errors[0], done.output
    return errors[0][len("error: "):]


@pytest.fixture
def sae_dir(tmp_path):
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=3, seed=1)
    sae.cfg.normalization_factor = 0.5
    return featsep.save_sae(sae, tmp_path / "sae")


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# --- featsep export ------------------------------------------------------------------------------
def test_export_writes_a_folded_copy_and_overwrites_only_an_earlier_export_with_force(tmp_path, sae_dir):
    done = run("export", sae_dir, tmp_path / "out")
    assert done.exit_code == 0 and "normalization factor 0.5 folded" in done.output
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["normalization_factor"] is None and cfg["featsep_extra"] == {"exported_from": str(sae_dir.resolve())}
    exported = snapshot(tmp_path / "out")
    assert one_error_line(run("export", sae_dir, tmp_path / "out")) == (
        f"'{tmp_path / 'out'}' holds an earlier export; pass --force to overwrite it")
    assert snapshot(tmp_path / "out") == exported
    (tmp_path / "out" / "sae_weights.safetensors").write_bytes(b"stale")
    assert run("export", sae_dir, tmp_path / "out", "--force").exit_code == 0
    assert snapshot(tmp_path / "out") == exported


@pytest.mark.parametrize("where", ["same", "dot-dot", "inside"])
def test_export_onto_the_sae_itself_is_refused(tmp_path, sae_dir, where):
    out = {"same": sae_dir, "dot-dot": sae_dir / ".." / "sae", "inside": sae_dir / "folded"}[where]
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        assert one_error_line(run("export", sae_dir, out, *extra)) == (
            f"'{out}' is the SAE being exported or inside it; the export is a different (folded) SAE and would "
            "overwrite it: choose another OUT")
    assert snapshot(tmp_path) == before and not (sae_dir / "folded").exists()


def test_export_into_a_dir_of_other_files_or_a_trained_sae_is_refused(tmp_path, sae_dir):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    trained = featsep.save_sae(featsep.make_sae("relu_l1", d_in=D, d_sae=N), tmp_path / "trained")
    before = snapshot(tmp_path)
    for out in (other, trained):
        for extra in ([], ["--force"]):
            assert one_error_line(run("export", sae_dir, out, *extra)) == (
                f"'{out}' already holds files and is not an earlier export; choose a new or empty directory as OUT")
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    assert one_error_line(run("export", sae_dir, tmp_path / "file")) == (
        f"'{tmp_path / 'file'}' is a file; choose a new directory as OUT")
    assert snapshot(tmp_path) == before


def test_export_on_a_full_disk_leaves_nothing_half_written(tmp_path, sae_dir, monkeypatch):
    import featsep.sae.io as sae_io

    assert run("export", sae_dir, tmp_path / "old").exit_code == 0
    before = snapshot(tmp_path)

    def save_file(tensors, filename):
        with open(filename, "wb") as f:
            f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(sae_io, "save_file", save_file)
    for out, extra in ((tmp_path / "new", []), (tmp_path / "old", ["--force"])):
        assert one_error_line(run("export", sae_dir, out, *extra)) == (
            f"no space left on device while writing {out}; free space or save the SAE elsewhere")
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


# --- corrupted SAE files -------------------------------------------------------------------------
def test_export_of_a_corrupted_sae_names_the_file(tmp_path, sae_dir):
    weights = sae_dir / "sae_weights.safetensors"
    flip_last_byte(weights)
    before = snapshot(tmp_path)
    assert one_error_line(run("export", sae_dir, tmp_path / "out")) == (
        f"'{weights}' is corrupted: its sha256 differs from the one cfg.json records; re-save or re-export the "
        "SAE (or retrain it)")
    assert snapshot(tmp_path) == before


def test_export_of_an_sae_whose_cfg_disagrees_with_its_weights(tmp_path, sae_dir):
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    cfg["d_sae"] = 16
    (sae_dir / "cfg.json").write_text(json.dumps(cfg))
    before = snapshot(tmp_path)
    assert one_error_line(run("export", sae_dir, tmp_path / "out")) == (
        f"'{sae_dir / 'cfg.json'}' says d_in={D}, d_sae=16, so W_enc should have shape ({D}, 16), but "
        f"sae_weights.safetensors holds W_enc of shape ({D}, {N}); the two files do not belong together: "
        "re-save the SAE")
    assert snapshot(tmp_path) == before


# --- corrupted checkpoints -----------------------------------------------------------------------
def write_config(folder, model_dir, corpus) -> Path:
    """A run config that trains 4 steps on the tiny model, checkpointing every 2."""
    path = folder / "run.toml"
    path.write_text("\n".join([
        f'out_dir = "{folder / "run"}"',
        "[model]", f'name = "{model_dir}"', 'hook = "blocks.1.hook_resid_post"', "batch_size = 4",
        "[data]", f'dataset = "{corpus}"', "context_length = 16", "shuffle_buffer = 8", "norm_estimate_batches = 2",
        "[sae]", 'architecture = "topk"', "d_sae = 64", "k = 4",
        "[train]", "tokens = 512", "batch_size = 128", "checkpoint_every = 2", "log_every = 1", "lr = 1e-3",
    ]) + "\n")
    return path


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory, tiny_llama_dir, checkpoint_corpus):
    """A CLI-trained run (4 steps, checkpoints 2 and 4) made to look killed before its end."""
    tmp = tmp_path_factory.mktemp("cli-run")
    done = run("train", write_config(tmp, tiny_llama_dir, checkpoint_corpus))
    assert done.exit_code == 0, done.output
    shutil.rmtree(tmp / "run" / "sae")
    return tmp / "run"


def test_resume_passes_over_a_corrupted_checkpoint(tmp_path, unfinished_run):
    run_dir = shutil.copytree(unfinished_run, tmp_path / "run")
    flip_last_byte(RunDir(run_dir).checkpoint_path(4))
    done = run("train", "--resume", run_dir)
    assert done.exit_code == 0, done.output
    assert (f"checkpoint {RunDir(run_dir).checkpoint_path(4)} is corrupted (its sha256 differs from "
            "step_000000004.pt.sha256); resuming from the previous good checkpoint, step 2") in done.output
    assert "UserWarning" not in done.output  # a line of its own, not a Python warning
    assert (run_dir / "sae" / "cfg.json").is_file() and sorted(RunDir(run_dir).checkpoint_steps()) == [2, 4]
    featsep.load_sae(run_dir / "sae")


def test_resume_with_every_checkpoint_corrupted_is_one_line(tmp_path, unfinished_run):
    run_dir = shutil.copytree(unfinished_run, tmp_path / "run")
    for step in (2, 4):
        flip_last_byte(RunDir(run_dir).checkpoint_path(step))
    before = snapshot(run_dir)
    folder = RunDir(run_dir).checkpoint_dir
    assert one_error_line(run("train", "--resume", run_dir), alone=False) == (
        f"checkpoint {folder / 'step_000000004.pt'} is corrupted (its sha256 differs from step_000000004.pt.sha256) "
        f"and no earlier intact checkpoint is left; delete {folder} to restart from step 0")
    assert snapshot(run_dir) == before


def test_resume_weights_still_match(tmp_path, unfinished_run):
    """The run resumed from step 2 ends where the uninterrupted run ended (CPU is deterministic)."""
    run_dir = shutil.copytree(unfinished_run, tmp_path / "run")
    state = torch.load(RunDir(run_dir).checkpoint_path(4), weights_only=True)["sae"]
    flip_last_byte(RunDir(run_dir).checkpoint_path(4))
    done = run("train", "--resume", run_dir)
    assert done.exit_code == 0 and "resuming from the previous good checkpoint, step 2" in done.output
    resumed = torch.load(RunDir(run_dir).checkpoint_path(4), weights_only=True)["sae"]
    assert all(torch.equal(state[k], resumed[k]) for k in state)
