"""featsep.distributed: the single-process World is the identity, partition balances cost."""

from __future__ import annotations

import pytest
import torch

from featsep.codes import Codes
from featsep.distributed import World, gather_codes, partition


def test_single_world_collectives_are_the_identity():
    w = World.single()
    t = torch.arange(6.0).reshape(3, 2)
    assert not w.distributed and w.rank == 0 and w.size == 1
    for op in ("sum", "mean", "max", "min"):
        assert w.all_reduce(t, op) is t
    assert w.all_gather_rows(t) is t and w.gather_rows(t) is t and w.shard_rows(t) is not None
    assert torch.equal(w.shard_rows(t), t)
    assert w.all_gather_object({"a": 1}) == [{"a": 1}] and w.broadcast_object(3) == 3
    codes = Codes.from_dense(t)
    assert gather_codes(w, codes) is codes
    with pytest.raises(ValueError, match="unknown reduction"):
        w.all_reduce(t, "avg")


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
