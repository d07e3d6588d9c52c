"""featsep under torchrun (gloo, 2 CPU processes): `torchrun -m featsep cache|train|sweep`.

Each job runs through a small launcher that logs every file a rank writes atomically (so a
test sees which rank wrote what) and can SIGKILL its rank after its n-th checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from featsep.cli import app
from featsep.rundir import RunDir
from tests.helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

LAUNCHER = r'''
import contextlib, os, signal, sys
from pathlib import Path
import featsep.io as fio

log = Path(sys.argv[1]) / f"writes.rank{os.environ['RANK']}"
kill_after = int(os.environ.get("KILL_AFTER_CHECKPOINT", "0"))
target, checkpoints = fio.atomic_target, [0]

@contextlib.contextmanager
def logged(path):
    with target(path) as tmp:
        yield tmp
    with open(log, "a") as f:
        f.write(f"{path}\n")
    if Path(path).name.startswith("step_") and Path(path).suffix == ".pt":
        checkpoints[0] += 1
        if checkpoints[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

fio.atomic_target = logged
from featsep.cli import app
app(sys.argv[2:], standalone_mode=False)
'''


def torchrun(tmp: Path, *args: str, kill_after: int = 0, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m featsep ARGS` (through the launcher)."""
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AFTER_CHECKPOINT": str(kill_after), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(launcher), str(logs), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    if expect_ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def writes(tmp: Path, rank: int) -> list[str]:
    f = tmp / "logs" / f"writes.rank{rank}"
    return f.read_text().splitlines() if f.exists() else []


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "sae" / "sae_weights.safetensors")


def assert_close_runs(a: Path, b: Path) -> None:
    mine, theirs = weights(a), weights(b)
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")


def metric_rows(run: Path) -> list[dict]:
    keep = ("step", "tokens", "l0")
    return [{k: v for k, v in json.loads(line).items() if k in keep}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rank_cache(tmp_path_factory, tiny_llama_dir, checkpoint_corpus):
    """A cache built by 2 ranks (each its own shards) and the config that reads it."""
    tmp = tmp_path_factory.mktemp("cache2")
    cache = tmp / "cache"
    config = tiny_run_config(tmp, tiny_llama_dir, checkpoint_corpus, out_dir=tmp / "unused", cache=cache)
    done = torchrun(tmp, "cache", config, "--tokens", "600")
    return tmp, cache, config, done


def test_cache_under_two_ranks_has_one_manifest_of_disjoint_parts(two_rank_cache):
    from featsep.data.cache import ActivationCache

    tmp, cache, _, done = two_rank_cache
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["world_size"] == 2
    assert manifest["tokens"] == 600 == sum(s["rows"] for s in manifest["shards"])
    assert {s["file"][:10] for s in manifest["shards"]} == {"shard_r000", "shard_r001"}
    # each rank wrote its own shards and part manifest; only rank 0 wrote manifest.json
    assert any(p.endswith("manifest.json") for p in writes(tmp, 0))
    assert not any(p.endswith("/manifest.json") for p in writes(tmp, 1))
    assert any("shard_r001_" in p for p in writes(tmp, 1)) and not any("shard_r001_" in p for p in writes(tmp, 0))
    contexts = [set(np.load(cache / s["index_file"])[:, 0].tolist()) for s in manifest["shards"]]
    r0 = set().union(*(c for c, s in zip(contexts, manifest["shards"]) if "r000" in s["file"]))
    r1 = set().union(*(c for c, s in zip(contexts, manifest["shards"]) if "r001" in s["file"]))
    assert r0 and r1 and not r0 & r1  # disjoint contexts, LM batches of 4 alternating
    assert {c // 4 % 2 for c in r0} == {0} and {c // 4 % 2 for c in r1} == {1}
    # one factor for both parts: the activations of both ranks share its scale
    acts, _ = ActivationCache(cache).to_tensor()
    assert acts.pow(2).sum(1).mean().item() == pytest.approx(acts.shape[1], rel=0.2)
    assert "cached" in done.stdout and done.stdout.count("cached") == 1  # rank 0 prints, rank 1 does not


@pytest.fixture(scope="module")
def two_rank_run(two_rank_cache, tmp_path_factory):
    """The config's run trained by `torchrun --nproc_per_node 2 -m featsep train` (4 steps)."""
    _, _, config, _ = two_rank_cache
    tmp = tmp_path_factory.mktemp("run2")
    torchrun(tmp, "train", config, "--set", f"out_dir={json.dumps(str(tmp / 'run'))}")
    return tmp, tmp / "run"


def test_train_from_a_two_rank_cache_equals_one_process_and_only_rank_0_writes(two_rank_cache, two_rank_run, tmp_path):
    _, _, config, _ = two_rank_cache
    job, double = two_rank_run
    single = tmp_path / "single"
    result = CliRunner().invoke(app, ["train", config, "--set", f"out_dir={json.dumps(str(single))}"])
    assert result.exit_code == 0, result.output
    assert_close_runs(single, double)
    assert metric_rows(single) == metric_rows(double)
    assert writes(job, 0) and writes(job, 1) == []  # data parallel: every run-dir file comes from rank 0
    assert json.loads((double / "config.json").read_text())["train"]["world_size"] == 2


def test_kill_9_under_torchrun_then_resume_equals_the_uninterrupted_job(two_rank_cache, two_rank_run, tmp_path):
    _, _, config, _ = two_rank_cache
    _, whole = two_rank_run
    killed = tmp_path / "killed"
    died = torchrun(tmp_path, "train", config, "--set", f"out_dir={json.dumps(str(killed))}", kill_after=1,
                    expect_ok=False)
    assert died.returncode != 0 and not (killed / "sae").exists()
    assert sorted(RunDir(killed).checkpoint_steps()) == [2]  # rank 0 died right after its first checkpoint
    torchrun(tmp_path, "train", "--resume", str(killed))
    mine, theirs = weights(killed), weights(whole)
    for name in mine:
        assert mine[name].equal(theirs[name]), f"{name} differs after kill -9 and resume"
    assert metric_rows(killed) == metric_rows(whole)


def test_sweep_under_torchrun_is_sae_parallel_equals_one_process_and_rank_0_writes_sweep_json(
        two_rank_cache, checkpoint_corpus, tmp_path):
    tmp, cache, config, _ = two_rank_cache
    run = Path(config).read_text().split("[sae]")[0]  # out_dir, [model] and [data] (with the cache)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(run + "\n".join([
        "[train]", "tokens = 512", "batch_size = 128", "checkpoint_every = 2", "log_every = 1", "lr = 1e-3",
        "[[methods]]", 'name = "topk"', "sae = { architecture = \"topk\", d_sae = 64, k = 4 }",
        "[[methods]]", 'name = "topk+momentum"', "sae = { architecture = \"topk\", d_sae = 64, k = 4 }",
        'penalties = [{ name = "momentum" }]',
        "[eval]", 'evals = ["core"]', "[eval.settings]", f"cache_dir = {json.dumps(str(tmp_path / 'eval-cache'))}",
        "[eval.settings.core]", f"dataset = {json.dumps(str(checkpoint_corpus))}", "context_size = 16",
        "batch_size_prompts = 2", "n_eval_reconstruction_batches = 1", "n_eval_sparsity_variance_batches = 1",
    ]) + "\n")
    single, double = tmp_path / "single", tmp_path / "double"
    result = CliRunner().invoke(app, ["sweep", str(sweep), "--no-report", "--no-eval", "--set", f"out_dir={json.dumps(str(single))}"])
    assert result.exit_code == 0, result.output
    torchrun(tmp_path, "sweep", str(sweep), "--no-report", "--set", f"out_dir={json.dumps(str(double))}")
    for name in ("run_0", "run_1"):
        assert_close_runs(single / name, double / name)
        assert json.loads((double / name / "config.json").read_text())["train"]["parallel"] == "sae"
    rank0, rank1 = ([p for p in writes(tmp_path, r) if Path(p).is_relative_to(double)] for r in (0, 1))
    assert any(p.endswith("sweep.json") for p in rank0) and not any(p.endswith("sweep.json") for p in rank1)
    # one SAE per rank (placed by cost: the momentum run is the heavier): each run's training
    # files are written by the one rank that trained it
    trained = [{Path(p).relative_to(double).parts[0] for p in w
                if Path(p).parent != double and "eval_results" not in p and not p.endswith("final_info.json")}
               for w in (rank0, rank1)]
    assert trained == [{"run_1"}, {"run_0"}]
    # the evals: one SAE each, rank r evaluating run_r, results in both run dirs
    evaluated = [{Path(p).relative_to(double).parts[0] for p in w if "core_eval_results" in p} for w in (rank0, rank1)]
    assert evaluated == [{"run_0"}, {"run_1"}]


def test_live_harvest_under_torchrun_equals_one_process_on_the_ranks_joined_batches(
        tiny_llama_dir, checkpoint_corpus, tmp_path):
    """No cache: each rank runs the LM on its own LM batches (every second one) and the job
    trains on the global batches their rows make, with one normalisation factor from both
    ranks' statistics. One process fed those joined batches (the ranks' streams rebuilt here)
    trains the same SAE; rank 1 writes nothing."""
    from featsep.config import load_config
    from featsep.data import stream_from_config
    from featsep.lm import load_lm
    from featsep.pipeline import RunSpec, build_sae, sae_metadata
    from featsep.train import train

    config = tiny_run_config(tmp_path, tiny_llama_dir, checkpoint_corpus, out_dir=tmp_path / "live")
    torchrun(tmp_path, "train", config)
    live = tmp_path / "live"
    assert writes(tmp_path, 0) and writes(tmp_path, 1) == []
    assert json.loads((live / "config.json").read_text())["train"]["world_size"] == 2

    cfg = load_config(config)
    lm = load_lm(cfg.model.name, device="cpu", dtype=cfg.model.dtype)

    def streams(reduce_sum):
        return [stream_from_config(cfg.model, cfg.data, cfg.train.batch_size, lm=lm, rank=r, world_size=2,
                                   reduce_sum=reduce_sum) for r in (0, 1)]

    local = []  # each rank's own normalisation statistics, then their sum as the all-reduce gives it
    for s in streams(lambda t: local.append(t.clone()) or t):
        s.ensure_normalization_factor()
    joined = streams(lambda t: local[0] + local[1])
    for s in joined:
        s.ensure_normalization_factor()
    assert joined[0].normalization_factor == joined[1].normalization_factor
    steps = cfg.train.tokens // cfg.train.batch_size
    # which rows make each global batch is what counts (their order does not change a TopK step)
    batches = [torch.cat([next(joined[0]), next(joined[1])]) for _ in range(steps)]
    spec = RunSpec(name="one", label="topk", method="topk", sae=cfg.sae)
    sae = build_sae(spec, joined[0].d_in, sae_metadata(cfg.model, cfg.data, joined[0]), "cpu")
    assert sae.cfg.normalization_factor == pytest.approx(
        json.loads((live / "sae" / "cfg.json").read_text())["normalization_factor"], rel=1e-12)
    train([sae], batches, steps, config=cfg.train, lr=cfg.train.lr, progress=False, out_dir=tmp_path / "one")
    for name, mine in weights(live).items():
        torch.testing.assert_close(mine, sae.state_dict()[name].to(mine.dtype), rtol=1e-4, atol=1e-5, msg=f"{name} differs")
