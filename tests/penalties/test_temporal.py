"""The temporal penalty (sparse pair state) against its dense n x n reference, both modes."""

import pytest
import torch

from featsep.penalties import make_penalty
from featsep.codes import Codes
from featsep.penalties.pairs import split_keys
from featsep.penalties.reference import TemporalDense
from tests.penalties.helpers import B, DT, N, dense, grad_of, topk_batch


def sparse_avg_matrix(pen) -> torch.Tensor:
    """The sparse history as the dense reference's n x n matrix (diagonal: reference mode only)."""
    st = pen.backend
    out = torch.zeros(N, N, dtype=DT)
    i, j = split_keys(st.avg_keys, N)
    if st.reference:
        out[i, j], out[j, i] = st.avg_vals[:, 0], st.avg_vals[:, 1]
        out[torch.arange(N), torch.arange(N)] = st.avg_diag
    else:
        now = st._stored_avg_now()
        out[i, j], out[j, i] = now, now
    return out


def run_against_reference(mode, window_size, batch_sizes, form="topk", freq_divisor=10.0, make_batch=None, **params):
    pen = make_penalty("temporal", d_sae=N, mode=mode, window_size=window_size, freq_divisor=freq_divisor,
                       state="sparse", chunk_elements=11, **params)
    ref = TemporalDense(N, mode, window_size, 0.1, freq_divisor)
    off = 1 - torch.eye(N, dtype=DT)
    for step, b in enumerate(batch_sizes):
        values, indices = (make_batch or topk_batch)(step, b=b)
        sc = Codes.from_topk(values, indices, N)
        F, A = sc.dense(), (sc.with_selected_firing() if mode == "reference" else sc).active_dense()
        if form == "dense":  # dense codes: firing means non-zero, in both modes
            A = (F != 0).to(DT)
        ref_loss, ref_g = grad_of(lambda x: ref.step(x, A), F)
        if form == "topk":
            loss, g = grad_of(lambda v: pen(Codes.from_topk(v, indices, N))["temporal"], values)
            ref_g = ref_g.gather(1, indices)
            if mode == "specified":  # exact where codes fire (the reference counts every index)
                g, ref_g = g[values != 0], ref_g[values != 0]
        else:
            loss, g = grad_of(lambda x: pen(x)["temporal"], F)
            g, ref_g = g[F != 0], ref_g[F != 0]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-11, atol=1e-18)
        torch.testing.assert_close(g, ref_g, rtol=1e-9, atol=1e-16)
        keep = torch.ones_like(off) if mode == "reference" else off
        torch.testing.assert_close(sparse_avg_matrix(pen), ref.avg * keep, rtol=1e-11, atol=1e-16)
        assert pen.backend.count == ref.count and pen.backend.windows_closed == ref.windows_closed
    return pen, ref


@pytest.mark.parametrize("mode", ["reference", "specified"])
@pytest.mark.parametrize("window_size,batch_sizes", [
    (30, [B] * 7),  # boundaries inside steps, several windows
    (5, [B, 7, B]),  # batch > window: several windows close in one step
    (B, [B] * 3),  # window closes exactly at each step end
])
def test_sparse_equals_dense_reference(mode, window_size, batch_sizes):
    pen, ref = run_against_reference(mode, window_size, batch_sizes)
    assert ref.windows_closed >= 2 and pen.stats()["tracked_pairs"] > 0


@pytest.mark.parametrize("mode", ["reference", "specified"])
def test_windows_close_for_pairs_outside_the_batch(mode):
    """The state is rebuilt chunk by chunk over the batch's key ranges; tracked pairs whose first
    latent is below, between or after those ranges must still close their windows and decay."""
    def batch(step, b):
        values, indices = topk_batch(step, b=b)
        if step >= 3:  # only latents 9..12 fire: most tracked pairs lie outside the batch's chunks
            indices = 9 + torch.argsort(torch.rand(b, 4, generator=torch.Generator().manual_seed(step)), dim=1)
        return values, indices
    pen, _ = run_against_reference(mode, 10, [B] * 6, make_batch=batch)
    assert pen.backend.windows_closed >= 6


@pytest.mark.parametrize("mode", ["reference", "specified"])
def test_dense_codes_equal_topk_form_and_dense_backend(mode):
    run_against_reference(mode, 20, [B] * 4, form="dense")
    sparse = make_penalty("temporal", d_sae=N, mode=mode, window_size=20, state="sparse")
    dense_state = make_penalty("temporal", d_sae=N, mode=mode, window_size=20)  # auto: dense at small n
    assert dense_state.backend_name == "dense"
    for step in range(4):
        values, indices = topk_batch(step)
        codes = Codes.from_topk(values, indices, N)
        torch.testing.assert_close(sparse(codes), dense_state(codes),
                                   rtol=1e-12, atol=1e-18)


def test_reference_transcribed_from_methods_md():
    """Two steps of the reference, line by line from methods.md (batch >= window)."""
    window_size, alpha, div = 10, 0.1, 1000.0
    window, avg, count = torch.zeros(N, N, dtype=DT), torch.zeros(N, N, dtype=DT), 0
    pen = make_penalty("temporal", d_sae=N, mode="reference", window_size=window_size, state="sparse")
    for step in range(2):
        values, indices = topk_batch(step)
        masks = torch.zeros(B, N, dtype=DT).scatter(1, indices, 1.0)  # one-hot of the top-k indices
        window += masks.T @ masks
        count += B
        if count >= window_size:
            C = window / count
            freq = torch.diagonal(C)
            a = torch.minimum(torch.tensor(alpha, dtype=DT), freq / div)[:, None]
            avg = (1 - a) * avg + a * C
            window, count = torch.zeros_like(window), 0
        cur = window / count if count > 0 else avg
        stab = (cur - avg).abs() / (torch.maximum(cur, avg) + 1e-8)
        W = cur * (1 + stab)
        F = dense(values, indices)
        D = F.T @ F / B
        torch.testing.assert_close(pen(Codes.from_topk(values, indices, N))["temporal"], (W * D ** 2).mean(), rtol=1e-12, atol=0)
    assert pen.stats()["mean_abs_dev"] == 0.0  # the defect: cur == avg, no stability term


def test_specified_stability_is_active_where_reference_is_zero():
    """batch >= window: the reference's stability term vanishes; the specified one does not."""
    stats = {}
    for mode in ("reference", "specified"):
        pen = make_penalty("temporal", d_sae=N, mode=mode, window_size=B // 2, state="sparse")
        for step in range(4):
            pen(Codes.from_topk(*topk_batch(step), N))
        stats[mode] = pen.stats()
    assert stats["reference"]["mean_abs_dev"] == 0.0 and stats["reference"]["mean_stability"] == 0.0
    assert stats["specified"]["mean_abs_dev"] > 0.0 and stats["specified"]["mean_stability"] > 0.0
    assert stats["specified"]["windows_closed"] == 8


@pytest.mark.parametrize("mode", ["reference", "specified"])
@pytest.mark.parametrize("state", ["sparse", "dense"])
def test_state_dict_round_trip_continues_identically(mode, state):
    make = lambda: make_penalty("temporal", d_sae=N, mode=mode, window_size=17, state=state)  # noqa: E731
    a, b = make(), make()
    for step in range(3):
        a(Codes.from_topk(*topk_batch(step), N))
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    for step in range(3, 6):
        values, indices = topk_batch(step)
        codes = Codes.from_topk(values, indices, N)
        torch.testing.assert_close(a(codes), b(codes), rtol=0, atol=0)
    assert a.stats()["windows_closed"] == b.stats()["windows_closed"] > 0
    other = make_penalty("temporal", d_sae=N, state="dense" if state == "sparse" else "sparse")
    with pytest.raises(ValueError, match="state="):
        other.load_state_dict(a.state_dict())


def test_pruning_and_cap_bound_the_store():
    exact = make_penalty("temporal", d_sae=N, window_size=B, state="sparse", prune_below=0.0)
    capped = make_penalty("temporal", d_sae=N, window_size=B, state="sparse", max_pairs=20)
    values, indices = topk_batch(0)
    exact(Codes.from_topk(values, indices, N))
    capped(Codes.from_topk(values, indices, N))
    # after one window the cap keeps the 20 largest averages, at their exact values
    kept = capped.backend.avg_keys
    assert kept.numel() == 20 < exact.stats()["tracked_pairs"]
    full = sparse_avg_matrix(exact).flatten()
    i, j = split_keys(kept, N)
    torch.testing.assert_close(capped.backend._stored_avg_now(), full[i * N + j])
    assert full[i * N + j].min() >= torch.sort(full, descending=True).values[2 * 20 - 1]  # (i,j) and (j,i)
    for step in range(1, 6):
        values, indices = topk_batch(step)
        exact(Codes.from_topk(values, indices, N))
        capped(Codes.from_topk(values, indices, N))
        assert capped.stats()["tracked_pairs"] <= 20
    assert exact.stats()["state_bytes"] > capped.stats()["state_bytes"] > 0


def test_prune_below_drops_only_small_averages():
    pen = make_penalty("temporal", d_sae=N, window_size=B, state="sparse", prune_below=0.0)
    pruned = make_penalty("temporal", d_sae=N, window_size=B, state="sparse", prune_below=2e-4)
    for step in range(3):
        values, indices = topk_batch(step)
        pen(Codes.from_topk(values, indices, N))
        pruned(Codes.from_topk(values, indices, N))
    pruned.backend._keep(pruned.backend._stored_avg_now())
    full = sparse_avg_matrix(pen)
    assert pruned.stats()["tracked_pairs"] == int((full.triu(1) > 2e-4).sum()) < pen.stats()["tracked_pairs"]


def test_prune_inside_the_step_equals_a_separate_prune_pass(monkeypatch):
    """The specified mode prunes while the step's window closes rewrite the store; that must keep
    exactly what a whole-store pass at the end of the same step keeps."""
    fused = make_penalty("temporal", d_sae=N, window_size=5, freq_divisor=10.0, state="sparse",
                         prune_below=0.015, chunk_elements=11)
    separate = make_penalty("temporal", d_sae=N, window_size=5, freq_divisor=10.0, state="sparse",
                            prune_below=0.015, chunk_elements=11)
    monkeypatch.setattr(separate.backend, "_doubles_this_step", lambda codes: False)
    monkeypatch.setattr(fused.backend, "_doubles_this_step", lambda codes: fused.backend.avg_keys.numel() > 0)
    exact = make_penalty("temporal", d_sae=N, window_size=5, freq_divisor=10.0, state="sparse", prune_below=0.0)
    for step in range(6):
        values, indices = topk_batch(step)
        exact(Codes.from_topk(values, indices, N))
        a = fused(Codes.from_topk(values, indices, N))["temporal"]
        b = separate(Codes.from_topk(values, indices, N))["temporal"]
        separate.backend._keep(separate.backend._stored_avg_now())
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for name in ("avg_keys", "avg_vals", "avg_freq", "avg_stamp", "window_keys", "window_counts"):
            torch.testing.assert_close(getattr(fused.backend, name), getattr(separate.backend, name), rtol=0, atol=0)
    assert 0 < fused.backend.pairs_after_prune == fused.stats()["tracked_pairs"] < exact.stats()["tracked_pairs"]
