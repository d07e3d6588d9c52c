"""No host synchronisation in the training step: every Tensor -> Python conversion (and the
ops whose output shape depends on the data) is counted while the trainer steps between two
log steps, on CPU, and must not happen. On CUDA each of these would stall the step."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter

import pytest
import torch

import featsep
import featsep.device
from featsep.train import trainer as trainer_module

D, N, K, B, STEPS = 8, 64, 4, 32, 6

# conversions to host values, and data-dependent shapes (a sync on CUDA)
SYNCING = ["item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
           "masked_select", "unique"]


@contextlib.contextmanager
def counting_syncs(monkeypatch):
    """Counts calls of the SYNCING methods (and boolean-mask indexing) while `on` is set.

    torch.optim's own reads are not counted: Adam keeps its step counters on the host (unless
    capturable), so reading them is no device sync."""
    calls: Counter = Counter()
    state = {"on": False}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            if state["on"] and "torch/optim/" not in sys._getframe(1).f_code.co_filename:
                calls[name] += 1
            return original(self, *args, **kwargs)
        return counted

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    getitem = torch.Tensor.__getitem__

    def indexed(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if state["on"] and any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts):
            calls["bool-mask indexing"] += 1
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)
    yield calls, state


def steps_syncs(monkeypatch, sae, penalties=()):
    """Host syncs counted in the trainer's loop, outside its log and checkpoint steps, the
    non-finite check that precedes them and the data-dependent init (all allowed to sync), on
    the paths an accelerator takes (the CPU's own read sizes on the host: featsep.device)."""
    monkeypatch.setattr(featsep.device, "SYNC_FREE_EVERYWHERE", True)
    with counting_syncs(monkeypatch) as (calls, state):
        def quiet(method):
            def run(*args, **kwargs):
                before, state["on"] = state["on"], False
                try:
                    return method(*args, **kwargs)
                finally:
                    state["on"] = before
            return run

        loop = trainer_module._Run.loop

        def counted_loop(self, *args, **kwargs):
            state["on"] = True
            try:
                return loop(self, *args, **kwargs)
            finally:
                state["on"] = False

        monkeypatch.setattr(trainer_module._Run, "loop", counted_loop)
        monkeypatch.setattr(trainer_module._Run, "log", quiet(trainer_module._Run.log))
        monkeypatch.setattr(trainer_module._Run, "save_checkpoints", quiet(trainer_module._Run.save_checkpoints))
        monkeypatch.setattr(trainer_module, "_raise_if_nonfinite", quiet(trainer_module._raise_if_nonfinite))
        monkeypatch.setattr(type(sae), "init_from_data", quiet(type(sae).init_from_data))
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(B, D, generator=gen) for _ in range(STEPS)]
        featsep.train([sae], batches, steps=STEPS, penalties=[list(penalties)] if penalties else None, progress=False, lr=1e-3,
                      log_every=STEPS, checkpoint_every=STEPS)
    return dict(calls)


ARCHS = {
    "relu_l1": {},
    "jumprelu": {},
    "topk": {"k": K, "aux_k": 8, "dead_tokens_threshold": 2 * B},  # latents die mid-run: AuxK both ways
    "batchtopk": {"k": K, "aux_k": 8, "dead_tokens_threshold": 2 * B},
    "matryoshka": {"k": K, "aux_k": 8, "dead_tokens_threshold": 2 * B},
}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("sparse", [True, False])
def test_no_host_sync_in_the_training_step(monkeypatch, arch, sparse):
    params = dict(ARCHS[arch])
    if "k" in params:
        params.update(sparse_encoder=sparse, sparse_decoder=sparse)
    elif not sparse:
        pytest.skip("the sparse paths are the TopK family's")
    sae = featsep.make_sae(arch, d_in=D, d_sae=N, **params)
    assert steps_syncs(monkeypatch, sae) == {}


@pytest.mark.parametrize("arch", ["relu_l1", "topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("sparse", [True, False])
def test_no_host_sync_with_the_momentum_penalty(monkeypatch, arch, sparse):
    if arch == "relu_l1" and not sparse:
        pytest.skip("the sparse paths are the TopK family's")
    params = {} if arch == "relu_l1" else {"k": K, "sparse_encoder": sparse, "sparse_decoder": sparse}
    sae = featsep.make_sae(arch, d_in=D, d_sae=N, **params)
    assert steps_syncs(monkeypatch, sae, [featsep.make_penalty("momentum", d_sae=N)]) == {}


@pytest.mark.parametrize("sparse", [True, False])
def test_no_host_sync_with_the_orthogonality_penalty_on_topk_codes(monkeypatch, sparse):
    """TopK codes' pairs fit a table whose size is known from shapes (pair_slots)."""
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K, sparse_encoder=sparse, sparse_decoder=sparse)
    assert steps_syncs(monkeypatch, sae, [featsep.make_penalty("orthogonality", d_sae=N)]) == {}


def test_batchtopk_adds_no_sync_to_the_streamed_orthogonality_penalty(monkeypatch):
    """The streamed pair machinery (BatchTopK's rows vary in width, and TopK codes too large for
    one table) reads data-dependent sizes on the host (its chunk cuts and pair counts: a few
    syncs a step, whatever the SAE); BatchTopK's codes add none (the pairs are found from the
    flat form, not from rows padded to a host-read width)."""
    from featsep.penalties import orthogonality

    monkeypatch.setattr(orthogonality, "fixed_width_entry_pairs", lambda codes: float("inf"))  # TopK streams too
    counts = {}
    for arch in ("topk", "batchtopk"):
        sae = featsep.make_sae(arch, d_in=D, d_sae=N, k=K)
        counts[arch] = steps_syncs(monkeypatch, sae, [featsep.make_penalty("orthogonality", d_sae=N)])
    assert counts["batchtopk"] == counts["topk"] != {}


def test_the_counter_sees_a_sync(monkeypatch):
    """The harness is real: a penalty that reads its loss on the host is caught."""
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, k=K)
    pen = featsep.make_penalty("momentum", d_sae=N)
    call = type(pen).__call__

    def syncing(self, codes):
        out = call(self, codes)
        float(out[self.name].detach())
        return out

    monkeypatch.setattr(type(pen), "__call__", syncing)
    assert steps_syncs(monkeypatch, sae, [pen]) == {"__float__": STEPS}



@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("mode", ["specified", "reference"])
def test_no_host_sync_with_the_dense_temporal_penalty(monkeypatch, mode, arch):
    """Windows close mid-run (48 samples each). The sparse pair tables (state="sparse", for
    large dictionaries) grow with the data and read their sizes on the host: not covered."""
    sae = featsep.make_sae(arch, d_in=D, d_sae=N, k=K)
    pen = featsep.make_penalty("temporal", d_sae=N, window_size=48, mode=mode, state="dense")
    assert steps_syncs(monkeypatch, sae, [pen]) == {}
    assert pen.stats()["windows_closed"] >= 3


def test_the_cpu_reads_sizes_on_the_host(monkeypatch):
    """Without the accelerator policy the CPU's AuxK lists its dead latents on the host (one
    read a step): the harness tells the two policies apart."""
    params = dict(ARCHS["topk"])
    sae = featsep.make_sae("topk", d_in=D, d_sae=N, **params)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    sae.tokens_since_fired.fill_(2 * B)
    sae.may_have_dead_latents()  # the host bound, re-read once outside the count
    pre = sae.pre_activations(x)
    with counting_syncs(monkeypatch) as (calls, state):
        state["on"] = True
        sae.auxk_loss(x, torch.zeros_like(x), pre)
    assert dict(calls) == {"nonzero": 1}
