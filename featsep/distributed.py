"""The process world of a torchrun job, and the few collectives training needs.

A `World` is a rank, a size and a process group. `World.single()` is one process: every
collective is the identity (no torch.distributed call at all), so single-process training runs
exactly the code it ran before distributed training existed. `World.from_env()` joins
torchrun's rendezvous when WORLD_SIZE > 1. `World.split(groups)` cuts the world into SAE groups
(each trains its share of the SAEs, data parallel inside the group) and data groups (the ranks
whose batch slices one group member trains on); see docs/architecture.md, "Distributed training".

Row layout: a global batch of B rows is held as N equal slices; rank r holds rows
[r B/N, (r+1) B/N). Gathers concatenate slices in rank order, so a gathered batch is the
global batch in its original row order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from featsep.codes import Codes

REDUCE_OPS = ("sum", "mean", "max", "min")
# process groups by their global ranks, made once per default group: train() splits the world on
# every call, and each torch.distributed.new_group is a collective and a communicator that
# lives until the process ends
_GROUPS: dict[str, Any] = {"default": None, "by_ranks": {}}


def _group_of(ranks: tuple[int, ...]) -> Any:
    default = dist.group.WORLD
    if _GROUPS["default"] is not default:  # a new (or re-initialised) job: old groups are gone
        _GROUPS.update(default=default, by_ranks={})
    if ranks not in _GROUPS["by_ranks"]:
        _GROUPS["by_ranks"][ranks] = dist.new_group(list(ranks))
    return _GROUPS["by_ranks"][ranks]


@dataclass(frozen=True)
class World:
    """rank / size within `group` (None: the default group); ranks: the global rank of each
    member, in group order (a broadcast names its source by group rank)."""

    rank: int = 0
    size: int = 1
    group: Any = None
    ranks: tuple[int, ...] = (0,)
    backend: str = "none"
    local_rank: int = 0

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def single(cls) -> "World":
        return cls()

    @classmethod
    def from_env(cls, backend: Optional[str] = None, timeout_s: float = 1800) -> "World":
        """The torchrun world: WORLD_SIZE > 1 joins the rendezvous (nccl when CUDA is available,
        gloo otherwise; set once per process, later calls reuse it); else a single World.
        One RuntimeError naming the cause and the fix when the rendezvous fails."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1 and not dist.is_initialized():
            return cls.single()
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
            if missing:
                raise RuntimeError(f"WORLD_SIZE={size} but {', '.join(missing)} is not set; launch the job "
                                   "with torchrun (torchrun --nproc_per_node N ...), which sets them")
            try:
                dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
            except Exception as e:  # noqa: BLE001 - one line for every rendezvous failure
                cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RuntimeError(
                    f"could not join the torchrun rendezvous ({backend}, MASTER_ADDR="
                    f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, WORLD_SIZE={size}): "
                    f"{cause}; check that every rank was started with the same torchrun arguments and can "
                    "reach the master") from None
        n = dist.get_world_size()
        return cls(dist.get_rank(), n, None, tuple(range(n)), dist.get_backend(), local_rank)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def subgroup(self, members: Sequence[int]) -> "World":
        """The World of `members` (group ranks of this world) for a rank among them; a single
        World for a rank outside it or a one-member list. Every rank of this world must call it
        with the same list, in the same order (torch.distributed.new_group is collective, and
        the first call for a set of ranks makes the group every later call reuses)."""
        members = list(members)
        group = _group_of(tuple(self.ranks[m] for m in members)) if len(members) > 1 else None
        if group is None or self.rank not in members:
            return World(ranks=(self.ranks[self.rank],), backend=self.backend, local_rank=self.local_rank)
        return World(members.index(self.rank), len(members), group, tuple(self.ranks[m] for m in members),
                     self.backend, self.local_rank)

    def split(self, groups: int) -> tuple["World", "World", int]:
        """(sae world, data world, group index) for `groups` SAE groups of size / groups ranks.

        Group g holds ranks {r : r % groups == g}; its member j (= r // groups) trains rows
        [j B/S, (j+1) B/S) of the global batch (S = size / groups), which the data world
        {j*groups, ..., j*groups + groups - 1} holds as its slices and all-gathers in order.
        One data group is pure data parallel; `size` groups is pure SAE parallel."""
        if groups < 1 or self.size % groups:
            raise ValueError(f"{groups} SAE groups do not divide a world of {self.size} ranks; "
                             f"choose a divisor of {self.size}")
        per_group = self.size // groups
        sae_worlds = [self.subgroup([g + j * groups for j in range(per_group)]) for g in range(groups)]
        data_worlds = [self.subgroup([j * groups + g for g in range(groups)]) for j in range(per_group)]
        g, j = self.rank % groups, self.rank // groups
        return sae_worlds[g], data_worlds[j], g

    # --- rows ------------------------------------------------------------------------------
    def shard_rows(self, batch: Tensor) -> Tensor:
        """This rank's slice of a global batch (rows [r B/N, (r+1) B/N))."""
        if batch.shape[0] % self.size:
            raise ValueError(f"a batch of {batch.shape[0]} rows does not split over {self.size} ranks; "
                             f"use a batch size divisible by {self.size}")
        per = batch.shape[0] // self.size
        return batch[self.rank * per:(self.rank + 1) * per]

    def all_gather_rows(self, t: Tensor) -> Tensor:
        """Concatenate every rank's `t` (same shape everywhere) along dim 0, in rank order; no
        gradient (see `gather_rows` for the differentiable one)."""
        if not self.distributed:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts)

    def gather_rows(self, t: Tensor) -> Tensor:
        """Differentiable all-gather along dim 0 (same shape on every rank).

        Forward: X = concat_r x_r. Backward: each rank's loss L_s(X) sends grad G_s = dL_s/dX;
        the all-reduce forms sum_s G_s and rank r keeps its rows, d(sum_s L_s)/dx_r. When every
        rank computes the same loss L from the same gathered X (L_s = L), that is N dL/dx_r;
        the parameter gradient of rank r is then N J_r^T dL/dx_r, and averaging parameter
        gradients over ranks gives (1/N) sum_r N J_r^T dL/dx_r = sum_r J_r^T dL/dx_r = dL/dtheta,
        the single-process gradient of L on the global batch (while per-rank mean losses, whose
        gradients are local, average to the global mean)."""
        if not self.distributed:
            return t
        return _GatherRows.apply(t, self)

    # --- reductions ------------------------------------------------------------------------
    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """A reduced copy of `t` over the world: "sum", "mean", "max" or "min"."""
        if op not in REDUCE_OPS:
            raise ValueError(f"unknown reduction {op!r}; use one of {', '.join(REDUCE_OPS)}")
        if not self.distributed:
            return t
        out = t.detach().clone()
        torch_op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                    "min": dist.ReduceOp.MIN}[op]
        dist.all_reduce(out, op=torch_op, group=self.group)
        return out / self.size if op == "mean" else out

    def any(self, mask: Tensor) -> Tensor:
        """Elementwise logical or of a bool tensor over the world."""
        if not self.distributed:
            return mask
        return self.all_reduce(mask.to(torch.uint8), "max").bool()

    # --- small objects and broadcast -------------------------------------------------------
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable; between the job's own processes only), in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Group rank `src`'s `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=self.ranks[src], group=self.group)
        return box[0]

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        """`t` overwritten in place with group rank `src`'s values."""
        if self.distributed:
            dist.broadcast(t, src=self.ranks[src], group=self.group)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)


class _GatherRows(torch.autograd.Function):
    """all_gather forward, all_reduce + own rows backward (derivation: World.gather_rows)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, world: World) -> Tensor:
        ctx.world, ctx.rows = world, t.shape[0]
        return world.all_gather_rows(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        world = ctx.world
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=world.group)
        return total[world.rank * ctx.rows:(world.rank + 1) * ctx.rows], None


def gather_codes(world: World, codes: Codes) -> Codes:
    """The codes of the world's global batch on every rank, differentiable w.r.t. this rank's
    values: the flat form when held (BatchTopK: every rank's fixed-size entries, rows shifted to
    the global batch's, so no host value is read), else the TopK form (at its width when that is
    the producer's setting, a TopK SAE's k; a width read from the data is padded to the largest
    of any rank with unselected (latent 0, 0.0) entries, as featsep.codes pads, a host read),
    else the dense form; context and position ids gathered too. Penalties called on them see
    the global batch and keep identical state."""
    if not world.distributed:
        return codes
    if codes.has_flat:
        e, batch = codes.flat(), codes.batch_size
        packed = world.all_gather_rows(torch.where(e.selected, e.cols, -1 - e.cols))  # sign carries `selected`
        out = Codes.from_flat(world.gather_rows(e.values), world.all_gather_rows(e.rows + world.rank * batch),
                              torch.where(packed >= 0, packed, -1 - packed), batch * world.size, codes.d_sae,
                              packed >= 0, nonnegative=codes.nonnegative)
    elif codes.has_topk:
        values, indices, selected = codes.values, codes.indices, codes.selected
        k = values.shape[1]
        if codes.width_from_data:
            k = int(world.all_reduce(torch.tensor([k], device=values.device), "max")[0])
        pad = k - values.shape[1]
        if pad:
            values = torch.nn.functional.pad(values, (0, pad))
            indices = torch.nn.functional.pad(indices, (0, pad))
            selected = torch.nn.functional.pad(selected, (0, pad))
        packed = world.all_gather_rows(torch.where(selected, indices, -1 - indices))  # sign carries `selected`
        out = Codes.from_topk(world.gather_rows(values), torch.where(packed >= 0, packed, -1 - packed),
                              codes.d_sae, packed >= 0)
    else:
        out = Codes.from_dense(world.gather_rows(codes.dense()))
    ids = [None if t is None else world.all_gather_rows(t) for t in (codes.context_ids, codes.position_ids)]
    return out.with_positions(*ids) if any(t is not None for t in ids) else out


def partition(costs: Sequence[float], groups: int) -> list[int]:
    """Group of each item, balancing summed cost: largest first onto the least loaded group
    (ties: lower item index first, then lower group). Deterministic, so every rank agrees."""
    load = [0.0] * groups
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        g = min(range(groups), key=lambda g: (load[g], g))
        owner[i] = g
        load[g] += costs[i]
    return owner

