"""featsep.penalties: the registry's defaults and errors; dense codes reach a penalty as their nonzeros."""

import pytest
import torch

from featsep.penalties import Penalty, make_penalty, penalties
from featsep.codes import Codes
from tests.penalties.helpers import K, N, dense, topk_batch


def test_registry_defaults_and_errors():
    assert penalties() == ["momentum", "orthogonality", "temporal"]
    for name in penalties():
        pen = make_penalty(name, d_sae=N)
        assert isinstance(pen, Penalty) and pen.name == name
        assert set(pen.coefficients()) == {name}
    assert make_penalty("momentum", d_sae=N).cfg.model_dump(include={"beta", "tau", "weight"}) == \
        {"beta": 0.95, "tau": 0.4, "weight": 0.3}
    t = make_penalty("temporal", d_sae=N).cfg
    assert (t.window_size, t.alpha_base, t.freq_divisor, t.weight) == (1000, 0.1, 1000.0, 0.1)
    with pytest.raises(ValueError, match="unknown penalty 'nope'"):
        make_penalty("nope", d_sae=N)
    with pytest.raises(ValueError, match="bad parameters for penalty 'momentum'.*beta"):
        make_penalty("momentum", d_sae=N, beta=2.0)
    with pytest.raises(ValueError, match="normalize only applies"):
        make_penalty("momentum", d_sae=N, mode="reference", normalize="pair")
    with pytest.raises(ValueError, match="d_sae=24"):
        make_penalty("momentum", d_sae=N)(torch.rand(3, N + 1))
    with pytest.raises(ValueError, match="d_sae=24"):
        make_penalty("temporal", d_sae=N)(Codes.from_topk(torch.rand(3, 4), torch.zeros(3, 4, dtype=torch.long), N + 1))
    with pytest.raises(TypeError, match="temporal penalty: codes must be a floating-point tensor"):
        make_penalty("temporal", d_sae=N)(torch.zeros(3, N, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        Codes.from_topk(torch.rand(3, 4), torch.zeros(3, 5, dtype=torch.long), N)


def test_dense_codes_become_their_nonzeros():
    values, indices = topk_batch(0)
    sc = Codes.from_dense(dense(values, indices))
    torch.testing.assert_close(sc.dense(), dense(values, indices))
    assert sc.indices.shape[1] == K and int(sc.active.sum()) == int((values != 0).sum())
