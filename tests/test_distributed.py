"""featsep.distributed and the trainer under torchrun: one 2-process gloo job (spawned once per
session) runs every scenario and saves what it got; the tests compare it with one process.

Scenarios (5 steps, global batch 16, each rank holding its 8 rows):
- data parallel: five SAEs (relu_l1 with resampling, topk, batchtopk, jumprelu, matryoshka;
  AuxK active) with momentum (both modes), temporal (both modes) and orthogonality;
- SAE parallel (2 groups of 1 rank) on three SAEs;
- a data-parallel run stopped at step 3 and resumed;
- the differentiable row gather on a small float64 function.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

import featsep
from featsep.codes import Codes
from featsep.distributed import World, gather_codes, partition
from featsep.train import NonFiniteLossError, sae_owners
from featsep.train import checkpoint as ckpt

RANKS, GLOBAL_BATCH, D_IN, D_SAE, STEPS = 2, 16, 8, 32, 5


# --- single process ----------------------------------------------------------------------------
def test_single_world_collectives_are_the_identity():
    w = World.single()
    t = torch.arange(6.0).reshape(3, 2)
    assert not w.distributed and w.rank == 0 and w.size == 1
    for op in ("sum", "mean", "max", "min"):
        assert w.all_reduce(t, op) is t
    assert w.all_gather_rows(t) is t and w.gather_rows(t) is t
    assert torch.equal(w.shard_rows(t), t)
    assert w.all_gather_object({"a": 1}) == [{"a": 1}] and w.broadcast_object(3) == 3
    codes = Codes.from_dense(t)
    assert gather_codes(w, codes) is codes
    with pytest.raises(ValueError, match="unknown reduction"):
        w.all_reduce(t, "avg")
    with pytest.raises(ValueError, match="divisible by 2"):
        World(rank=0, size=2).shard_rows(t)


def test_from_env_without_torchrun_is_single(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert World.from_env() == World.single()


def test_from_env_names_missing_rendezvous_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK, MASTER_ADDR.*torchrun"):
        World.from_env(backend="gloo")


def test_partition_is_balanced_and_deterministic():
    assert partition([5, 4, 3, 3, 2, 1], 2) == [0, 1, 1, 0, 1, 0]  # loads 9 / 9
    assert partition([1, 1, 1], 3) == [0, 1, 2]
    assert partition([2.0], 4) == [0]


def test_split_refuses_a_group_count_that_does_not_divide():
    with pytest.raises(ValueError, match="do not divide"):
        World(rank=0, size=1).split(2)
    sae, data, g = World.single().split(1)
    assert (sae.size, data.size, g) == (1, 1, 0)


# --- the scenarios, shared by the job and the single-process reference --------------------------
class _Rows:
    """Batches with an ActivationStream-like `last_index` (context id, position) per row."""

    def __init__(self, batches, indices, limit=None):
        self.batches, self.indices, self.limit = batches, indices, limit

    def __len__(self):
        return len(self.batches) if self.limit is None else self.limit

    def __iter__(self):
        return _RowsIter(self.batches[:len(self)], self.indices[:len(self)])


class _RowsIter:
    def __init__(self, batches, indices):
        self.it, self.last_index = iter(zip(batches, indices)), None

    def __iter__(self):
        return self

    def __next__(self):
        x, self.last_index = next(self.it)
        return x


def _data(world: World, limit=None) -> _Rows:
    gen = torch.Generator().manual_seed(7)
    scale = torch.linspace(0.5, 2.0, D_IN)
    batches = [torch.randn(GLOBAL_BATCH, D_IN, generator=gen) * scale + 0.3 for _ in range(STEPS)]
    rows = torch.arange(STEPS * GLOBAL_BATCH)
    indices = [torch.stack([r // 6, r % 6, r], 1) for r in rows.split(GLOBAL_BATCH)]  # contexts of 6 tokens
    return _Rows([world.shard_rows(b) for b in batches], [world.shard_rows(i) for i in indices], limit)


def _dp_saes():
    common = dict(d_in=D_IN, d_sae=D_SAE, dead_tokens_threshold=16)
    saes = [
        featsep.make_sae("relu_l1", **common, l1_warmup_steps=2, resample_every=2, seed=1),
        featsep.make_sae("topk", **common, k=4, aux_k=8, seed=2),
        featsep.make_sae("batchtopk", **common, k=4, aux_k=8, seed=3),
        featsep.make_sae("jumprelu", **common, init_threshold=0.05, bandwidth=0.1, seed=4),
        featsep.make_sae("matryoshka", **common, k=4, aux_k=8, prefix_sizes=[8], seed=5),
    ]
    with torch.no_grad():
        saes[0].b_enc[:8] = -50.0  # silent, hence dead after one batch and resampled at step 1
    pens = [
        featsep.make_penalty("momentum", d_sae=D_SAE, mode="specified"),
        featsep.make_penalty("momentum", d_sae=D_SAE, mode="reference"),
        featsep.make_penalty("temporal", d_sae=D_SAE, mode="specified", window_size=24),
        featsep.make_penalty("temporal", d_sae=D_SAE, mode="reference", window_size=24),
        featsep.make_penalty("orthogonality", d_sae=D_SAE),
    ]
    return saes, pens


def _sae_parallel_saes():
    common = dict(d_in=D_IN, d_sae=D_SAE, dead_tokens_threshold=16)
    saes = [featsep.make_sae("topk", **common, k=4, aux_k=8, seed=2),
            featsep.make_sae("batchtopk", **common, k=4, aux_k=8, seed=3),
            featsep.make_sae("relu_l1", **common, l1_warmup_steps=2, seed=1)]
    pens = [featsep.make_penalty("momentum", d_sae=D_SAE), featsep.make_penalty("temporal", d_sae=D_SAE, window_size=24),
            None]
    return saes, pens


def _run(kind: str, world: World, out: Path, **kw):
    saes, pens = _dp_saes() if kind == "dp" else _sae_parallel_saes()
    # Adam for every SAE: sign-SGD (the TopK family's default) steps by sign(gradient), so a
    # gradient component at rounding level flips between one and N ranks and moves its weight by
    # a whole lr; equality to 1e-5 is a statement about the gradients, which Adam preserves.
    settings = dict(lr=3e-3, progress=False, log_every=2, checkpoint_every=2, lr_decay_fraction=0.4, optimizer="adam")
    if kind == "sae":
        settings["parallel"] = "sae"
    settings.update(kw)
    limit = settings.pop("limit", None)
    featsep.train(saes, _data(world, limit), STEPS, penalties=pens, out_dir=out, world=world, **settings)
    return saes, pens


# --- the job -----------------------------------------------------------------------------------
def _worker(rank: int, tmp: str, port: int, ranks: int = RANKS) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(ranks))
    torch.set_num_threads(1)
    root = Path(tmp)
    written: list[str] = []

    def audit(event, args):  # every file this rank writes under tmp
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                written.append(os.fsdecode(args[0]))
        elif event == "os.rename":
            written.append(os.fsdecode(args[1]))

    sys.addaudithook(audit)
    world = World.from_env(backend="gloo")
    result: dict = {}
    import warnings
    warnings.simplefilter("ignore")
    if ranks == 4:  # the hybrid: 2 SAE groups of 2 ranks, data parallel inside each
        saes, _ = _run("sae", world, root / "hybrid", sae_groups=2)
        torch.save({"hybrid": [s.state_dict() for s in saes]}, root / f"rank{rank}.pt")
        return
    saes, pens = _run("dp", world, root / "dp")
    result["dp"] = [s.state_dict() for s in saes]
    saes, pens = _run("sae", world, root / "sae")
    result["sae"] = [s.state_dict() for s in saes]
    result["sae_pen"] = [p.state_dict() if p else {} for p in pens]
    # a loss that is infinite on rank 1 only stops both ranks with the same error
    x = torch.ones(GLOBAL_BATCH, D_IN)
    x[-1] = float("inf")
    try:
        featsep.train(featsep.make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=4, b_dec_init="zeros"),
                      [world.shard_rows(x)], 1, progress=False, world=world)
        result["nan"] = None
    except NonFiniteLossError as e:
        result["nan"] = (e.step, e.term)
    # train() splits the world on every call: the process groups are made once
    made = []
    new_group = torch.distributed.new_group
    torch.distributed.new_group = lambda *a, **k: made.append(a) or new_group(*a, **k)
    try:
        splits = [world.split(1), world.split(1), world.split(2), world.split(2)]
    finally:
        torch.distributed.new_group = new_group
    result["split"] = {"made": len(made), "same": splits[0][0].group is splits[1][0].group is splits[2][1].group,
                       "sizes": [(s.size, d.size, g) for s, d, g in splits]}
    _run("dp", world, root / "stopped", limit=3)
    _run("dp", world, root / "stopped", resume=True)
    # TopK codes gather at the producer's width with no collective but the gathers themselves;
    # a width read from the data (rank r's busiest row holds r + 2 codes) is agreed by all-reduce
    rows = GLOBAL_BATCH // ranks
    given = Codes.from_topk(torch.rand(rows, 3, generator=torch.Generator().manual_seed(rank)),
                            torch.arange(3).repeat(rows, 1) + rank, D_SAE)
    dense = torch.zeros(rows, D_SAE)
    dense[:, :rank + 2] = torch.rand(rows, rank + 2, generator=torch.Generator().manual_seed(rank)) + 0.5
    packed = Codes.from_dense(dense)
    assert packed.values.shape[1] == rank + 2  # the TopK form, listed from the dense one
    reduce, reductions = World.all_reduce, []
    World.all_reduce = lambda *a, **k: reductions.append(a) or reduce(*a, **k)
    try:
        out = {}
        for name, codes in (("given", given), ("packed", packed)):
            before = len(reductions)
            gathered = gather_codes(world, codes)
            out[name] = {"reductions": len(reductions) - before, "width": gathered.values.shape[1],
                         "dense": gathered.dense().detach(), "rows": world.all_gather_rows(codes.dense().detach())}
    finally:
        World.all_reduce = reduce
    result["gather_width"] = out
    # the differentiable gather: a loss mixing rows, every rank computing it identically
    X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    W = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    local = world.shard_rows(X).clone().requires_grad_()
    _gather_loss(world.gather_rows(local @ W)).backward()
    result["gather"] = {"local_grad": local.grad, "W_grad": world.all_reduce(W.grad, "mean")}
    result["written"] = sorted({str(Path(p).resolve()) for p in written if str(Path(p).resolve()).startswith(str(root.resolve()))})
    torch.save(result, root / f"rank{rank}.pt")


def _gather_loss(G: torch.Tensor) -> torch.Tensor:
    return (G.tanh() ** 2 * torch.arange(1.0, 6.0, dtype=G.dtype)).sum() + G.sum(0).pow(2).sum()


def _launch(tmp: Path, ranks: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_worker, args=(str(tmp), port, ranks), nprocs=ranks, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(ranks)]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, _launch(tmp, RANKS)


def _close(a, b, where: str, tol: float = 1e-5) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", tol)
    elif torch.is_tensor(a):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if not a.is_floating_point():
            assert torch.equal(a, b), where
        else:
            err = (a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-6)
            assert err < tol, f"{where}: relative error {err:.2e}"
    else:
        assert a == b, where


def _final_checkpoint(run_dir: Path) -> dict:
    state = ckpt.load_checkpoint(run_dir, STEPS)
    return {k: state[k] for k in ("sae", "optimizer", "penalties")}


def _single(kind: str, out: Path):
    return _run(kind, World.single(), out)


def test_data_parallel_equals_one_process(job, tmp_path):
    tmp, results = job
    saes, _ = _single("dp", tmp_path / "one")
    names = [f"sae_{i}" for i in range(len(saes))]
    for i, name in enumerate(names):  # weights, optimizer state and penalty state
        _close(_final_checkpoint(tmp / "dp" / name), _final_checkpoint(tmp_path / "one" / name), name)
        for r in range(RANKS):  # every rank returns the trained SAEs
            _close(results[r]["dp"][i], saes[i].state_dict(), f"rank {r} {name}")
    assert float(_final_checkpoint(tmp / "dp" / "sae_0")["sae"]["b_enc"][:8].abs().max()) < 1  # resampled
    for name in ("sae_1", "sae_2", "sae_4"):  # dead latents, so AuxK was active
        assert int(_final_checkpoint(tmp / "dp" / name)["sae"]["tokens_since_fired"].max()) >= 16, name
    one = featsep.rundir.RunDir(tmp_path / "one" / "sae_2").read_metrics()
    two = featsep.rundir.RunDir(tmp / "dp" / "sae_2").read_metrics()
    for key in ("loss", "loss/mse", "loss/temporal", "l0", "fvu", "dead_fraction", "tokens"):
        assert two[-1][key] == pytest.approx(one[-1][key], rel=1e-5), key  # logged over the global batch


def test_sae_parallel_equals_one_process(job, tmp_path):
    tmp, results = job
    saes, pens = _single("sae", tmp_path / "one")
    for i, sae in enumerate(saes):
        name = f"sae_{i}"
        _close(_final_checkpoint(tmp / "sae" / name), _final_checkpoint(tmp_path / "one" / name), name)
        for r in range(RANKS):
            _close(results[r]["sae"][i], sae.state_dict(), f"rank {r} {name}")
            _close(results[r]["sae_pen"][i], pens[i].state_dict() if pens[i] else {}, f"rank {r} penalty {i}")


def test_sae_owners_follow_the_cost_partition():
    saes, pens = _sae_parallel_saes()
    two = World(rank=1, size=2, ranks=(0, 1))
    assert sae_owners(saes, pens, world=World.single(), parallel="sae") == [0, 0, 0]
    assert sae_owners(saes, pens, world=two) == [0, 0, 0]  # data parallel: rank 0 writes all
    # costs: topk/batchtopk + a penalty 8*32 + 8*4 + 32*4 = 416 each, relu_l1 2*8*32 = 512 (largest first)
    assert sae_owners(saes, pens, world=two, parallel="sae") == [1, 1, 0]
    with pytest.raises(ValueError, match="sae_groups=3 does not divide the 2 ranks"):
        sae_owners(saes, pens, world=two, parallel="sae", sae_groups=3)


def test_only_rank_0_and_owners_write(job):
    tmp, results = job
    root = str(tmp.resolve())
    dp_files = [[p for p in results[r]["written"] if p.startswith(f"{root}/dp/")] for r in range(RANKS)]
    assert dp_files[0] and not dp_files[1]
    owners = sae_owners(*_sae_parallel_saes(), world=World(rank=0, size=RANKS, ranks=(0, 1)), parallel="sae")
    for i, owner in enumerate(owners):
        where = f"{root}/sae/sae_{i}/"
        for r in range(RANKS):
            mine = [p for p in results[r]["written"] if p.startswith(where)]
            assert bool(mine) == (r == owner), (i, r, mine)


def test_resume_equals_an_uninterrupted_run(job):
    tmp, _ = job
    for i in range(5):
        _close(_final_checkpoint(tmp / "stopped" / f"sae_{i}"), _final_checkpoint(tmp / "dp" / f"sae_{i}"),
               f"sae_{i}", tol=1e-12)


def test_resume_on_another_world_size_is_refused(job, tmp_path):
    tmp, _ = job
    import shutil
    shutil.copytree(tmp / "stopped", tmp_path / "copy")
    with pytest.raises(ValueError, match="written by 2 rank.*same number of ranks"):
        _run("dp", World.single(), tmp_path / "copy", resume=True)


def test_a_non_finite_loss_on_one_rank_stops_every_rank(job):
    _, results = job
    assert results[0]["nan"] == (0, "total loss (on another rank)")
    assert results[1]["nan"] == (0, "mse")


def test_split_makes_each_process_group_once(job):
    """The dp and sae runs before already made the group of ranks (0, 1): none is made again."""
    _, results = job
    for rank, r in enumerate(results):
        assert r["split"]["made"] == 0
        assert r["split"]["same"]
        assert r["split"]["sizes"] == [(2, 1, 0), (2, 1, 0), (1, 2, rank), (1, 2, rank)]


def test_topk_codes_gather_at_their_width_and_a_width_read_from_data_is_agreed(job):
    """A TopK SAE's codes (from_topk: k is a setting) gather without an all-reduce of the width
    (a host sync per step); codes packed to their busiest row agree on the widest rank's width.
    Either way every rank holds the global batch's codes."""
    for got in (r["gather_width"] for r in job[1]):
        assert (got["given"]["reductions"], got["given"]["width"]) == (0, 3)
        assert (got["packed"]["reductions"], got["packed"]["width"]) == (1, RANKS + 1)
        for form in got.values():
            assert torch.equal(form["dense"], form["rows"]) and form["dense"].shape == (GLOBAL_BATCH, D_SAE)


def test_gather_gradient_equals_autograd_on_the_whole_batch(job):
    _, results = job
    X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    W = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    _gather_loss(X @ W).backward()
    for r in range(RANKS):
        got = results[r]["gather"]
        rows = X.grad[r * 2:(r + 1) * 2]
        assert torch.allclose(got["local_grad"], RANKS * rows, rtol=1e-12, atol=1e-12)  # sum over ranks' losses
        assert torch.allclose(got["W_grad"], W.grad, rtol=1e-12, atol=1e-12)  # averaged: the exact gradient


@pytest.mark.slow
def test_hybrid_groups_equal_one_process(tmp_path):
    """4 ranks in 2 SAE groups of 2: rows gathered within data groups, data parallel within SAE groups."""
    results = _launch(tmp_path, 4)
    saes, _ = _single("sae", tmp_path / "one")
    for i, sae in enumerate(saes):
        _close(_final_checkpoint(tmp_path / "hybrid" / f"sae_{i}"), _final_checkpoint(tmp_path / "one" / f"sae_{i}"),
               f"sae_{i}")
        for r in range(4):
            _close(results[r]["hybrid"][i], sae.state_dict(), f"rank {r} sae_{i}")
