"""featsep.codes.Codes: both forms against naive loops, masks, padding, ids, and ids reaching a
penalty through the trainer."""

import pytest
import torch

import featsep
from featsep.codes import Codes
from featsep.data.stream import ActivationStream
from featsep.penalties.base import Penalty, PenaltyConfigBase

DT = torch.float64
N = 10


def padded_batch():
    """A BatchTopK-like batch: row 0 has latent 0 real (2.0) and two padded (0, 0.0) entries,
    row 1 a selected zero value, row 2 only padding."""
    values = torch.tensor([[2.0, 1.5, 0.0, 0.0], [0.5, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=DT)
    indices = torch.tensor([[0, 7, 0, 0], [3, 5, 0, 9], [0, 0, 0, 0]])
    selected = torch.tensor([[True, True, False, False], [True, True, True, True], [False] * 4])
    return values, indices, selected


def naive_dense(values, indices, selected, n=N):
    out = torch.zeros(values.shape[0], n, dtype=values.dtype)
    for b in range(values.shape[0]):
        for j in range(values.shape[1]):
            if selected[b, j]:
                out[b, indices[b, j]] += values[b, j]
    return out


def test_dense_equals_a_naive_loop_and_padding_never_clobbers():
    values, indices, selected = padded_batch()
    v = values.clone().requires_grad_()
    codes = Codes.from_topk(v, indices, N, selected)
    dense = codes.dense()
    torch.testing.assert_close(dense, naive_dense(values, indices, selected), rtol=0, atol=0)
    assert dense[0, 0] == 2.0  # a plain scatter would let the later (0, 0.0) entries overwrite it
    assert codes.dense() is dense and codes.has_dense  # built once
    w = torch.arange(3 * N, dtype=DT).view(3, N)
    (grad,) = torch.autograd.grad((dense * w).sum(), v)
    torch.testing.assert_close(grad, w.gather(1, indices))  # d dense[b, i] / d value = 1 at its latent


def test_masks_fired_l0_and_active_dense():
    values, indices, selected = padded_batch()
    codes = Codes.from_topk(values, indices, N, selected)
    assert torch.equal(codes.active, selected & (values != 0))
    assert torch.equal(codes.with_selected_firing().active, selected)  # the selected zero at (1, 1) fires
    assert torch.equal(codes.active, selected & (values != 0))  # ...in the copy only
    A = torch.zeros(3, N, dtype=DT)
    for b, j in codes.active.nonzero().tolist():
        A[b, indices[b, j]] = 1.0
    torch.testing.assert_close(codes.active_dense(), A, rtol=0, atol=0)
    assert A[0, 0] == 1.0 and A[2].sum() == 0  # padding neither clobbers nor fires
    fired = torch.zeros(N, dtype=torch.bool)
    fired[[0, 7, 3, 9]] = True
    assert torch.equal(codes.fired(), fired)
    assert float(codes.l0()) == pytest.approx(5 / 3)
    assert codes.batch_size == 3 and codes.dtype == DT and codes.device == torch.device("cpu")
    assert not codes.has_dense and codes.has_topk
    every = Codes.from_topk(values, indices, N)  # no selected mask: TopK, every entry a selection
    assert every.selected.all() and torch.equal(every.active, values != 0)


def test_dense_codes_list_their_nonzeros_only_when_asked():
    values, indices, selected = padded_batch()
    F = naive_dense(values, indices, selected).requires_grad_()
    codes = Codes.from_dense(F)
    assert codes.dense() is F and not codes.has_topk
    assert torch.equal(codes.fired(), (F != 0).any(0)) and not codes.has_topk  # no listing for these
    assert float(codes.l0()) == pytest.approx(5 / 3) and not codes.has_topk
    torch.testing.assert_close(codes.active_dense(), (F != 0).to(DT))
    assert not codes.width_from_data
    assert codes.values.shape == (3, 3) and codes.has_topk  # k = the busiest row's non-zeros
    assert codes.width_from_data  # so ranks agree on it before gathering
    assert torch.equal(codes.selected, codes.active) and int(codes.active.sum()) == 5
    assert codes.with_selected_firing() is codes
    torch.testing.assert_close(naive_dense(codes.values, codes.indices, codes.active), F.detach(), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(codes.values.sum(), F)  # the listed values are F's own entries
    torch.testing.assert_close(grad, torch.zeros_like(F).scatter(1, codes.indices, 1.0))
    empty = Codes.from_dense(torch.zeros(2, N))
    assert empty.values.shape == (2, 0) and not empty.fired().any()


def test_positions_move_and_errors():
    values, indices, selected = padded_batch()
    codes = Codes.from_topk(values, indices, N, selected)
    with_ids = codes.with_positions(torch.tensor([4, 4, 5], dtype=torch.int32), torch.tensor([0, 1, 0]))
    assert codes.context_ids is None  # a copy
    assert with_ids.context_ids.dtype == torch.long and with_ids.context_ids.tolist() == [4, 4, 5]
    assert with_ids.position_ids.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"context_ids must have shape \[3\]"):
        codes.with_positions(torch.arange(4), None)
    moved = with_ids.to("meta")
    assert moved.device.type == "meta" and moved.indices.device.type == "meta"
    assert moved.selected.device.type == "meta" and moved.context_ids.device.type == "meta"
    with pytest.raises(ValueError, match="same shape"):
        Codes.from_topk(values, indices[:, :2], N)
    with pytest.raises(TypeError, match="integer"):
        Codes.from_topk(values, indices.double(), N)
    with pytest.raises(ValueError, match="selected must be a bool tensor"):
        Codes.from_topk(values, indices, N, selected.long())
    with pytest.raises(TypeError, match="floating-point"):
        Codes.from_dense(torch.zeros(2, N, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D"):
        Codes.from_dense(torch.zeros(2, 3, N))


def test_batchtopk_padding_is_unselected():
    sae = featsep.make_sae("batchtopk", d_in=N, d_sae=N, k=2, dtype="float64")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(N, dtype=DT))
    x = torch.full((3, N), -1.0, dtype=DT)
    x[0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.5])  # row 0 takes 5 of the 6 selections
    x[1, 0] = 1.0
    codes = sae.training_forward(x, 0, 1).codes
    assert codes.selected.sum(1).tolist() == [5, 1, 0]
    assert torch.equal(codes.values[~codes.selected], torch.zeros(9, dtype=DT))
    torch.testing.assert_close(codes.dense(), x.relu(), rtol=0, atol=0)  # latent 0 of row 1 kept


def flat_batch():
    """padded_batch's selections in the flat form: row 0 has 2 entries, row 1 four (one a
    selected zero) plus an unselected candidate (value zeroed), row 2 none."""
    values = torch.tensor([2.0, 1.5, 0.5, 0.0, 3.0, 1.0, 7.0], dtype=DT)
    rows = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    cols = torch.tensor([0, 7, 3, 5, 0, 9, 4])
    selected = torch.tensor([True, True, True, True, True, True, False])
    return values, rows, cols, selected


def test_flat_form_equals_the_padded_one_without_building_it():
    values, rows, cols, selected = flat_batch()
    v = values.clone().requires_grad_()
    codes = Codes.from_flat(v, rows, cols, 3, N, selected, nonnegative=True)
    pv, pi, ps = padded_batch()
    padded = Codes.from_topk(pv, pi, N, ps)
    assert codes.has_flat and not codes.has_topk and codes.batch_size == 3
    assert torch.equal(codes.flat().offsets, torch.tensor([0, 2, 7]))
    assert codes.flat().values[6] == 0  # the unselected candidate's value is zeroed
    torch.testing.assert_close(codes.dense(), naive_dense(pv, pi, ps), rtol=0, atol=0)
    torch.testing.assert_close(codes.active_dense(), padded.active_dense(), rtol=0, atol=0)
    assert torch.equal(codes.fired(), padded.fired()) and float(codes.l0()) == pytest.approx(5 / 3)
    assert not codes.has_topk  # none of those packed the rows
    w = torch.arange(3 * N, dtype=DT).view(3, N)
    (grad,) = torch.autograd.grad((codes.dense() * w).sum(), v)
    torch.testing.assert_close(grad, torch.where(selected, w[rows, cols], 0))
    fires = codes.with_selected_firing()
    assert torch.equal(fires.flat().active, selected) and fires.l0() == 2.0 and codes.l0() == 5 / 3
    # the padded form, on demand (a host sync): same rows, padded to the busiest row's 4 + 1
    assert not codes.width_from_data
    assert codes.values.shape == (3, 5) and torch.equal(codes.selected.sum(1), torch.tensor([2, 4, 0]))
    assert codes.width_from_data and not padded.width_from_data  # from_topk's width is the producer's
    torch.testing.assert_close(naive_dense(codes.values, codes.indices, codes.selected), naive_dense(pv, pi, ps))
    assert torch.equal(codes.indices[~codes.selected], torch.zeros(9, dtype=torch.long))  # padding: latent 0
    moved = codes.to("meta")
    assert moved.flat().rows.device.type == "meta" and moved.batch_size == 3
    # the TopK form's flat view is a reshape, rows in order
    e = padded.flat()
    assert torch.equal(e.rows, torch.arange(3).repeat_interleave(4)) and torch.equal(e.offsets, torch.tensor([0, 4, 8]))
    assert torch.equal(e.cols, pi.flatten()) and torch.equal(e.active, padded.active.flatten())


def test_flat_form_errors():
    values, rows, cols, selected = flat_batch()
    with pytest.raises(TypeError, match="1-D floating-point"):
        Codes.from_flat(values.view(1, -1), rows, cols, 3, N)
    with pytest.raises(ValueError, match="flat cols must be an integer tensor of shape"):
        Codes.from_flat(values, rows, cols[:3], 3, N)
    with pytest.raises(ValueError, match="selected must be a bool tensor"):
        Codes.from_flat(values, rows, cols, 3, N, selected.long())


def test_batchtopk_selects_in_the_flat_form():
    sae = featsep.make_sae("batchtopk", d_in=N, d_sae=N, k=2, dtype="float64")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(N, dtype=DT))
    x = torch.randn(5, N, dtype=DT, generator=torch.Generator().manual_seed(0))
    codes = sae.training_forward(x, 0, 1).codes
    e = codes.flat()
    assert codes.has_flat and not codes.has_topk and e.values.shape == (10,)  # k B entries, always
    assert torch.equal(e.rows, e.rows.sort().values)  # grouped by row
    ref = x.relu().flatten().topk(10)
    torch.testing.assert_close(codes.dense().flatten()[ref.indices], ref.values, rtol=0, atol=0)
    assert int((codes.dense() != 0).sum()) == int((ref.values != 0).sum())


# --- context ids through the trainer -------------------------------------------------------------
class RecordingPenalty(Penalty):
    """Records the ids each call sees; a zero loss."""

    name = "recording"
    config_class = PenaltyConfigBase

    def __init__(self, cfg):
        super().__init__(cfg)
        self.seen = []

    def __call__(self, codes):
        self.seen.append((codes.context_ids, codes.position_ids))
        return {self.name: codes.dense().sum() * 0}


class IdsIterator:
    """An ActivationStream-like iterator: `last_index` describes the batch just returned."""

    def __init__(self, batches, indices):
        self.batches, self.indices, self.last_index = batches, indices, None

    def __iter__(self):
        self.it = iter(zip(self.batches, self.indices))
        return self

    def __next__(self):
        x, self.last_index = next(self.it)
        return x


def test_stream_ids_reach_the_penalty_through_the_trainer():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 4, generator=gen) for _ in range(3)]
    indices = [torch.stack([torch.full((6,), s), torch.arange(6) + 10 * s, torch.full((6,), -1)], 1) for s in range(3)]
    pen = RecordingPenalty(PenaltyConfigBase(d_sae=N))
    featsep.train(featsep.make_sae("topk", d_in=4, d_sae=N, k=2), IdsIterator(batches, indices), steps=3,
                  penalties=[pen], progress=False, lr_decay_fraction=0)
    assert len(pen.seen) == 3
    for (ctx, pos), index in zip(pen.seen, indices):
        assert torch.equal(ctx, index[:, 0]) and torch.equal(pos, index[:, 1])
    plain = RecordingPenalty(PenaltyConfigBase(d_sae=N))  # a list of tensors has no ids
    featsep.train(featsep.make_sae("relu_l1", d_in=4, d_sae=N), batches, penalties=[plain], progress=False)
    assert plain.seen == [(None, None)] * 3


def test_sequence_mode_stream_ids_reach_the_penalty():
    acts = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(1))  # 3 contexts of 8 tokens
    stream = ActivationStream.from_tensor(acts, batch_size=4, sequence_mode=True, repeat=False)
    pen = RecordingPenalty(PenaltyConfigBase(d_sae=N))
    featsep.train(featsep.make_sae("relu_l1", d_in=4, d_sae=N), stream, steps=6, penalties=[pen], progress=False,
                  lr_decay_fraction=0)
    ctx = torch.cat([c for c, _ in pen.seen])
    pos = torch.cat([p for _, p in pen.seen])
    assert torch.equal(ctx, torch.arange(3).repeat_interleave(8))  # text order, context by context
    assert torch.equal(pos, torch.arange(8).repeat(3))
