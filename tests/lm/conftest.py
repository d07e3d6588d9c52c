"""A padded batch of token ids the featsep.lm tests feed to every tiny model."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import BOS, PAD
from tests.lm.helpers import VOCAB


@pytest.fixture(scope="module")
def batch():
    """Three right-padded rows of lengths 10, 7 and 4, each led by BOS."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 10), generator=g)
    ids[:, 0] = BOS
    mask = torch.zeros_like(ids)
    for row, length in enumerate((10, 7, 4)):
        mask[row, :length] = 1
        ids[row, length:] = PAD
    return ids, mask
