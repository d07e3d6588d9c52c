"""The training loop: one stream of activation batches feeds one or many SAEs.

Each SAE has its own optimizer (featsep.train.optim), LR schedule and penalties; every batch trains all of
them (one language-model pass serves a whole sweep). Losses are dicts of named terms, summed
as coefficient * term and each logged by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
from pydantic import ValidationError
from torch import Tensor

from featsep.distributed import World, gather_codes, partition
from featsep.io import remove_stale_temp_files
from featsep.penalties.base import Penalty
from featsep.sae.base import SAE, SAEOutput
from featsep.settings import one_line
from featsep.train import checkpoint as ckpt
from featsep import rundir as rd
from featsep.train.artifacts import write_config, write_final
from featsep.train.config import MemberTraining, TrainConfig
from featsep.train.optim import make_optimizer, use_averaged_parameters
from featsep.train.logger import ExternalLoggers, MetricsSink, scalar_stats
from featsep.train.schedule import WarmupDecay, make_scheduler

PenaltySpec = Union[None, Penalty, Sequence[Penalty]]
PenaltiesArg = Union[None, Sequence[PenaltySpec], Mapping[Union[int, str], PenaltySpec]]

UNKNOWN_TOTAL_STEPS = 0  # what training_forward sees as total_steps when it cannot be known


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf; the last good checkpoint is left untouched."""

    def __init__(self, sae_name: str, step: int, term: str, run_dir: Optional[Path]):
        self.sae_name, self.step, self.term, self.run_dir = sae_name, step, term, run_dir
        where = f"; the last good checkpoint is in {rd.RunDir(run_dir).checkpoint_dir}" if run_dir else ""
        super().__init__(
            f"SAE {sae_name!r}: loss term {term!r} is not finite at step {step}{where}. "
            "Lower the learning rate or the term's coefficient, check the activations for "
            "NaN/Inf or a missing scale normalisation, then resume or restart."
        )


@dataclass
class _Member:
    """One SAE of the run with everything that trains it."""

    index: int
    name: str
    sae: SAE
    penalties: list[Penalty]
    run_dir: Optional[Path]
    lr: float
    optimizer_name: str
    decay_fraction: float
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    fired: Tensor  # bool [d_sae]: latents that fired since the last log (fallback dead fraction)
    last: dict[str, Any] = field(default_factory=dict)  # detached results of the latest step
    busy_s: float = 0.0  # CPU: time spent in this SAE's steps since the last log (its own cost)
    busy_events: list = field(default_factory=list)  # CUDA: (start, end) timing events, read at log
    writer: bool = True  # this rank writes the run dir (its SAE group's first rank); others only read it
    nonfinite: dict = field(default_factory=dict)  # device-side record of the first non-finite step
    compiled: Optional[Any] = None  # torch.compile of sae.training_forward ([train] compile); the SAE stays plain

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype


@contextlib.contextmanager
def _naming_disk_full(target: Optional[Path]) -> Iterator[None]:
    """A full disk names what was being written (a failed write() carries no file name, or a
    temp file's), which the CLI's one line ("no space left on device while writing X") needs."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC and target is not None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from None
        raise


# --- argument checking ---------------------------------------------------------------------------
def _as_sae_list(saes: Union[SAE, Sequence[SAE]]) -> list[SAE]:
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise ValueError("train() got no SAE; pass a list such as [featsep.make_sae('topk', ...)]")
    for i, sae in enumerate(saes):
        if not isinstance(sae, SAE):
            raise TypeError(f"saes[{i}] is a {type(sae).__name__}, not a featsep SAE; build it with featsep.make_sae")
    if len({id(s) for s in saes}) != len(saes):
        raise ValueError("the same SAE object appears twice in saes; build one SAE per entry")
    return saes


def _names(names: Optional[Sequence[str]], n: int) -> list[str]:
    names = [f"sae_{i}" for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"got {len(names)} names for {n} SAEs; give one name per SAE")
    if len(set(names)) != n:
        raise ValueError(f"SAE names must be distinct, got {names}")
    return names


def _penalty_list(spec: PenaltySpec, where: str) -> list[Penalty]:
    items = [] if spec is None else [spec] if isinstance(spec, Penalty) else list(spec)
    for p in items:
        if not isinstance(p, Penalty):
            raise TypeError(f"{where} holds a {type(p).__name__}, not a Penalty; build it with featsep.make_penalty")
    return items


def _assign_penalties(penalties: PenaltiesArg, names: list[str]) -> list[list[Penalty]]:
    """Normalise every accepted form to one list of penalties per SAE."""
    n = len(names)
    if penalties is None:
        out = [[] for _ in range(n)]
    elif isinstance(penalties, Penalty):
        if n != 1:
            raise ValueError("a single penalty is ambiguous with several SAEs; pass a list aligned "
                             "with saes or a dict {sae index or name: penalty}")
        out = [[penalties]]
    elif isinstance(penalties, Mapping):
        out = [[] for _ in range(n)]
        for key, spec in penalties.items():
            if isinstance(key, int) and 0 <= key < n:
                index = key
            elif key in names:
                index = names.index(key)
            else:
                raise ValueError(f"penalties key {key!r} names no SAE; use an index in 0..{n - 1} or one of {names}")
            out[index] = _penalty_list(spec, f"penalties[{key!r}]")
    else:
        specs = list(penalties)
        if len(specs) != n:
            raise ValueError(f"penalties has {len(specs)} entries for {n} SAEs; align it with saes "
                             "(None for an SAE without penalty) or use a dict {sae index: penalty}")
        out = [_penalty_list(spec, f"penalties[{i}]") for i, spec in enumerate(specs)]
    seen: set[int] = set()
    for plist in out:
        for p in plist:
            if id(p) in seen:
                raise ValueError(f"the same {p.name!r} penalty object is given to two SAEs; penalties keep "
                                 "per-SAE state, so make one per SAE")
            seen.add(id(p))
    return out


def _total_steps(batches: Iterable, steps: Optional[int], lr_decay_fraction: float) -> Optional[int]:
    if steps is not None:
        if steps <= 0:
            raise ValueError(f"steps={steps}; give a positive number of steps (or None to use every batch)")
        try:
            if len(batches) < steps:  # type: ignore[arg-type]
                warnings.warn(f"steps={steps} but the batches hold only {len(batches)}; training stops early")  # type: ignore[arg-type]
        except TypeError:
            pass
        return steps
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        if lr_decay_fraction > 0:
            raise ValueError("the batches have no len(), so the LR decay cannot know when training ends; "
                             "pass steps=... or lr_decay_fraction=0") from None
        return None


def _lrs(lr: Union[None, float, Sequence[Optional[float]]], saes: list[SAE], optimizers: list[str]) -> list[float]:
    per_sae = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(saes)
    if len(per_sae) != len(saes):
        raise ValueError(f"got {len(per_sae)} learning rates for {len(saes)} SAEs")
    out = [float(sae.default_lr(opt) if value is None else value) for value, sae, opt in zip(per_sae, saes, optimizers)]
    for value in out:
        if not value > 0:
            raise ValueError(f"learning rate {value} must be positive")
    return out


def _check_batch(x: Any, d_in: int, index: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"batch {index} is a {type(x).__name__}; the batches must yield torch tensors [B, d_in]")
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"batch {index} has shape {tuple(x.shape)}; the SAEs expect [B, {d_in}] "
                         "(flatten [batch, seq, d] activations to [batch*seq, d])")
    return x


# --- one step ------------------------------------------------------------------------------------
def _fallback_metrics(x: Tensor, out: SAEOutput) -> dict[str, Tensor]:
    """l0 and fvu computed here when the SAE does not report them (no host sync)."""
    found: dict[str, Tensor] = {}
    with torch.no_grad():
        if "l0" not in out.metrics:
            found["l0"] = out.codes.l0()
        if "fvu" not in out.metrics:
            xf = x.float()
            residual = (xf - out.x_hat.float()).pow(2).sum()
            found["fvu"] = residual / (xf - xf.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
    return found


def _fvu_sums(x: Tensor, x_hat: Tensor) -> Tensor:
    """[squared residual, sum |x|^2, rows, sum x (d_in)] of this rank's rows (float64): summed
    over ranks they give the global batch's FVU, which is no mean of the ranks' FVUs."""
    with torch.no_grad():
        xd = x.double()
        return torch.cat([torch.stack([(xd - x_hat.detach().double()).pow(2).sum(), xd.pow(2).sum(),
                                       xd.new_tensor(float(x.shape[0]))]), xd.sum(0)])


def _average_gradients(m: _Member, world: World, loss: Tensor, terms: dict[str, Tensor], step: int) -> None:
    """One flattened all-reduce per SAE and step: the gradients' mean over the ranks, and the
    ranks' summed loss riding along, so that a non-finite loss on any rank stops every rank."""
    grads = [p.grad for p in m.sae.parameters() if p.grad is not None]  # the same set on every rank
    dtype = grads[0].dtype if grads else torch.float32
    flat = world.all_reduce(torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(dtype)]), "sum")
    _note_nonfinite(m, step, flat[-1], terms, unnamed="total loss (on another rank)")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g) / world.size)
        offset += g.numel()


def _train_step(m: _Member, x: Tensor, step: int, total: Optional[int], autocast: contextlib.AbstractContextManager,
                positions: Optional[tuple[Tensor, Tensor]] = None, world: World = World.single()) -> None:
    """Forward, loss, checks, backward and update of one SAE on batch x (0-based step).
    positions: (context ids, positions) [B] of the rows when the data says where each row came
    from; the penalties see them on the codes.
    world: the ranks training this SAE, x being this rank's slice of their batch: penalties get
    the codes of the whole batch, gradients are averaged (World.gather_rows says why that is
    the single-process gradient)."""
    sae, opt = m.sae, m.optimizer
    x = x.to(dtype=m.dtype)
    with autocast:
        out = (m.compiled or sae.training_forward)(x, step, total or UNKNOWN_TOTAL_STEPS)
        if positions is not None and m.penalties:
            out.codes = out.codes.with_positions(*positions)
        terms = dict(out.terms)
        coefficients = dict(out.coefficients)
        codes = gather_codes(world, out.codes) if m.penalties else out.codes
        for pen in m.penalties:
            pen_terms = pen(codes)
            clash = set(pen_terms) & set(terms)
            if clash:
                raise ValueError(f"SAE {m.name!r}: penalty {pen.name!r} returns term(s) {sorted(clash)} that "
                                 "another term already uses; give each penalty a distinct name")
            terms.update(pen_terms)
            coefficients.update(pen.coefficients())
    loss = sum(coefficients.get(name, 1.0) * term.float() for name, term in terms.items())
    if not world.distributed:  # distributed: the ranks' summed loss, from the gradients' all-reduce
        _note_nonfinite(m, step, loss, terms)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if world.distributed:
        _average_gradients(m, world, loss, terms, step)
    sae.before_optimizer_step()
    m.last = {
        "lr": m.scheduler.get_last_lr()[0],
        "loss": loss.detach(),
        "terms": {n: t.detach() for n, t in terms.items()},
        "coefficients": {n: float(c) for n, c in coefficients.items() if n in terms},
        "metrics": {**out.metrics, **_fallback_metrics(x, out)},
    }
    if world.distributed:
        m.last["fvu_sums"] = _fvu_sums(x, out.x_hat)
    if "dead_fraction" not in out.metrics:
        m.fired |= out.codes.fired()
    opt.step()
    sae.after_optimizer_step(step, x, opt)
    m.scheduler.step()


def _note_nonfinite(m: _Member, step: int, loss: Tensor, terms: dict[str, Tensor], unnamed: str = "total loss") -> None:
    """Record on the device the first step whose loss is not finite, and which of its terms
    were: no host sync per step. `_raise_if_nonfinite` reads it before every metrics row and
    checkpoint (and at the end), so a bad step still stops the run, named, before anything is
    written from it; the steps between it and that check run on (on NaN weights) and are lost."""
    rec = m.nonfinite
    if not rec:
        rec.update(step=torch.full((), -1, dtype=torch.long, device=loss.device), finite={}, unnamed=unnamed)
    first = ~torch.isfinite(loss.detach()) & (rec["step"] < 0)
    rec["step"] = torch.where(first, step, rec["step"])
    for name, term in terms.items():
        ok = torch.isfinite(term.detach()).all()
        rec["finite"][name] = torch.where(first, ok, rec["finite"].get(name, torch.ones_like(ok)))


def _raise_if_nonfinite(m: _Member) -> None:
    """NonFiniteLossError naming the first non-finite step and term, if there was one (syncs)."""
    if m.nonfinite and int(m.nonfinite["step"]) >= 0:
        bad = next((n for n, ok in m.nonfinite["finite"].items() if not bool(ok)), m.nonfinite["unnamed"])
        raise NonFiniteLossError(m.name, int(m.nonfinite["step"]), bad, m.run_dir)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _state_bytes(m: _Member) -> int:
    """Memory this SAE keeps between steps: parameters and buffers, optimizer state, penalty state."""
    return (
        _tensor_bytes(m.sae.state_dict())
        + _tensor_bytes(m.optimizer.state_dict()["state"])
        + sum(_tensor_bytes(p.state_dict()) for p in m.penalties)
    )


@contextlib.contextmanager
def _busy_timer(m: _Member, device: torch.device):
    """Time one SAE's step: wall clock on CPU; on CUDA a pair of events read at log time, so
    the step never waits for the device."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        m.busy_events.append((start, end))
    else:
        started = time.perf_counter()
        yield
        m.busy_s += time.perf_counter() - started


def _take_busy_seconds(m: _Member) -> float:
    """This SAE's step time since the last log (syncs once for CUDA events), then reset."""
    if m.busy_events:
        m.busy_events[-1][1].synchronize()
        m.busy_s += sum(start.elapsed_time(end) for start, end in m.busy_events) / 1e3
    busy, m.busy_s, m.busy_events = m.busy_s, 0.0, []
    return busy


def _globalise_last(m: _Member, world: World) -> None:
    """The latest step's logged values over the whole batch of `world` (one all-reduce at log
    time, none per step): loss terms and metrics are means over equal slices, so their mean
    over ranks; FVU from the summed residual and variance; the fallback fired mask or-ed."""
    last = m.last
    terms, metrics = list(last["terms"]), [k for k in last["metrics"] if k != "fvu"]
    scalars = torch.stack([last["loss"].float()] + [last["terms"][k].float() for k in terms]
                          + [last["metrics"][k].float() for k in metrics]).double()
    packed = world.all_reduce(torch.cat([scalars / world.size, last["fvu_sums"]]), "sum")
    values = iter(packed[:len(scalars)])
    last["loss"] = next(values)
    last["terms"] = {k: next(values) for k in terms}
    fvu = last["metrics"].get("fvu")
    last["metrics"] = {k: next(values) for k in metrics}
    if fvu is not None:
        residual, squares, rows, total = packed[len(scalars):len(scalars) + 3].tolist() + [packed[len(scalars) + 3:]]
        last["metrics"]["fvu"] = residual / max(squares - float(total.pow(2).sum()) / rows, 1e-12)
    if "dead_fraction" not in last["metrics"]:
        m.fired = world.any(m.fired)


def _log_row(m: _Member, step: int, tokens: int, window_tokens: int, window_s: float) -> dict[str, Any]:
    """The metrics.jsonl row of the latest step; resets the fired-latents window."""
    last = m.last
    row: dict[str, Any] = {"step": step, "tokens": tokens, "lr": last["lr"], "loss": float(last["loss"])}
    row.update({f"loss/{n}": float(t) for n, t in last["terms"].items()})
    row.update({f"coef/{n}": c for n, c in last["coefficients"].items()})
    metrics = {k: float(v) for k, v in last["metrics"].items()}
    metrics.setdefault("dead_fraction", float(1.0 - m.fired.float().mean()))
    row.update(metrics)
    row["tokens_per_s"] = window_tokens / max(window_s, 1e-9)  # the whole step (data + every SAE)
    row["state_memory_bytes"] = _state_bytes(m)
    busy = _take_busy_seconds(m)
    if busy > 0:  # this SAE alone: what its architecture and penalties cost
        row["sae_tokens_per_s"] = window_tokens / busy
    for pen in m.penalties:
        row.update(scalar_stats(pen.name, pen.stats()))
    m.fired.zero_()
    return row


# --- the run -------------------------------------------------------------------------------------
class _Run:
    """State of a training run between steps: the members, the data position, the clock.

    In a torchrun job `members` are this rank's SAE group's; `world` is the whole job,
    `sae_world` the ranks of this rank's SAE group, `data_world` the ranks whose batch slices
    this rank trains on (World.split)."""

    def __init__(self, members: list[_Member], batches: Iterable, total: Optional[int], cfg: TrainConfig,
                 device: torch.device, all_dirs: list[Optional[Path]], world: World = World.single(),
                 groups: int = 1, any_penalty: bool = True):
        self.members = members
        self.batches = batches
        self.total = total
        self.cfg = cfg
        self.stateful_data = hasattr(batches, "state_dict") and hasattr(batches, "load_state_dict")
        self.step = 0
        self.tokens = 0
        self.checkpointed_step = -1
        self.device = device
        self.all_dirs = all_dirs
        self.world, self.groups, self.any_penalty = world, groups, any_penalty
        self.rows: dict[int, dict[str, Any]] = {}  # the latest logged row of every SAE this rank heard of
        self.sae_world, self.data_world, _ = world.split(groups) if world.distributed else (world, world, 0)
        use_bf16 = cfg.autocast_bf16 and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    @property
    def run_dirs(self) -> list[Path]:
        """The run dirs this rank writes."""
        return [m.run_dir for m in self.members if m.run_dir is not None and m.writer]

    # checkpoints
    def save_checkpoints(self) -> None:
        for m in self.members:
            _raise_if_nonfinite(m)
        if all(d is None for d in self.all_dirs):
            return
        mine = {
            "batches_consumed": self.step,
            "data_state": self.batches.state_dict() if self.stateful_data else None,
            "rng": ckpt.capture_rng(),
        }
        shared = {"tokens": self.tokens, **mine, "total_steps": self.total}
        if self.world.distributed:  # every rank's data position and RNG, in every run dir
            shared.update(world_size=self.world.size, sae_groups=self.groups,
                          ranks=self.world.all_gather_object(mine))
        for m in self.members:
            if not m.writer:
                continue
            with _naming_disk_full(rd.RunDir(m.run_dir).checkpoint_path(self.step)):
                ckpt.save_checkpoint(m.run_dir, self.step, {
                    **shared,
                    "name": m.name,
                    "sae": m.sae.state_dict(),
                    "optimizer": m.optimizer.state_dict(),
                    "scheduler": m.scheduler.state_dict(),
                    "penalties": [p.state_dict() for p in m.penalties],
                })
        self.checkpointed_step = self.step

    def check_world(self, state: dict[str, Any], where: Path) -> None:
        """A checkpoint holds one data position and RNG per rank: it resumes only on the world
        size and SAE groups that wrote it."""
        size, groups = state.get("world_size", 1), state.get("sae_groups", 1)
        if (size, groups) != (self.world.size, self.groups):
            raise ValueError(f"{where}: the checkpoint was written by {size} rank(s) in {groups} SAE group(s) but "
                             f"this job has {self.world.size} in {self.groups}; resume it with the same number of "
                             "ranks and parallel settings (each rank's data position is in it), or start a new run")

    def restore(self, step: int) -> dict[str, Any]:
        """Load every member's checkpoint at `step`; returns the shared part (this rank's)."""
        shared: dict[str, Any] = {}
        for m in self.members:
            state = ckpt.load_checkpoint(m.run_dir, step)
            self.check_world(state, m.run_dir)
            m.sae.load_state_dict(state["sae"])
            m.optimizer.load_state_dict(state["optimizer"])
            m.scheduler.load_state_dict(state["scheduler"])
            if len(state["penalties"]) != len(m.penalties):
                raise ValueError(f"{m.run_dir}: the checkpoint holds {len(state['penalties'])} penalties but "
                                 f"{len(m.penalties)} were given; resume with the run's original penalties")
            for pen, pen_state in zip(m.penalties, state["penalties"]):
                pen.load_state_dict(pen_state)
                pen.to(self.device)
            if m.writer:
                rd.RunDir(m.run_dir).truncate_metrics(step)
            shared = state
        if not self.members:  # a rank whose SAE group got no SAE: its data position is in any run dir
            shared = ckpt.load_checkpoint(self.all_dirs[0], step)
            self.check_world(shared, self.all_dirs[0])
        if self.world.distributed:
            shared = {**shared, **shared["ranks"][self.world.rank]}
        self.step = self.checkpointed_step = step
        self.tokens = shared["tokens"]
        return shared

    def data_iterator(self, shared: Optional[dict[str, Any]]) -> Iterator:
        """Iterator positioned after the batches already consumed (all of them on a fresh run)."""
        if shared is None:
            return iter(self.batches)
        if self.stateful_data and shared["data_state"] is not None:
            self.batches.load_state_dict(shared["data_state"])
            return iter(self.batches)
        it = iter(self.batches)
        for i in range(shared["batches_consumed"]):
            try:
                next(it)
            except StopIteration:
                raise ValueError(f"the batches ran out after {i} while skipping the "
                                 f"{shared['batches_consumed']} a resumed run had already used; "
                                 "resume with the same data") from None
        return it

    # the loop
    def loop(self, it: Iterator, sink: MetricsSink, fresh: bool, d_in: int) -> None:
        window_start, window_tokens = time.perf_counter(), 0
        logged = self.step
        while self.total is None or self.step < self.total:
            try:
                x = next(it)
            except StopIteration:
                if self.total is not None:
                    warnings.warn(f"the batches ran out after {self.step} of {self.total} steps")
                break
            x = _check_batch(x, d_in, self.step).to(self.device, non_blocking=True)
            positions = self.row_positions(it)
            x = self.data_world.all_gather_rows(x)  # this rank's part of its SAE group's batch
            if fresh and self.step == 0 and self.members:
                whole = self.sae_world.all_gather_rows(x)  # the global batch
                for m in self.members:
                    m.sae.init_from_data(whole.to(dtype=m.dtype))
            for m in self.members:
                with _busy_timer(m, self.device):
                    _train_step(m, x, self.step, self.total, self.autocast(), positions, self.sae_world)
            self.step += 1
            self.tokens += x.shape[0] * self.sae_world.size
            window_tokens += x.shape[0] * self.sae_world.size
            sink.advance()
            if self.step % self.cfg.log_every == 0 or self.step == self.total:
                now = time.perf_counter()
                self.log(sink, window_tokens, now - window_start)
                logged = self.step
                window_start, window_tokens = now, 0
            if self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoints()
        if logged != self.step:
            self.log(sink, window_tokens, time.perf_counter() - window_start)
        for m in self.members:
            _raise_if_nonfinite(m)

    def row_positions(self, it: Iterator) -> Optional[tuple[Tensor, Tensor]]:
        """(context ids, positions) of the batch's rows on the device, once per step, when the
        data provides them (an ActivationStream's last_index) and some SAE has a penalty to read
        them; None otherwise (no copy at all). Gathered like the rows."""
        index = getattr(it, "last_index", None)
        if index is None or not self.any_penalty:
            return None
        index = self.data_world.all_gather_rows(index[:, :2].to(self.device, dtype=torch.long, non_blocking=True))
        return index[:, 0], index[:, 1]

    def log(self, sink: MetricsSink, window_tokens: int, window_s: float) -> None:
        rows = {}
        for m in self.members:
            _raise_if_nonfinite(m)
        for m in self.members:
            if self.sae_world.distributed:
                _globalise_last(m, self.sae_world)
            row = _log_row(m, self.step, self.tokens, window_tokens, window_s)
            m.last["row"] = row
            if m.writer:
                rows[m.index] = row
        if self.groups > 1:  # every SAE's row on every rank (the progress bar shows SAE 0's)
            rows = {i: row for part in self.world.all_gather_object(rows) for i, row in part.items()}
        self.rows.update(rows)
        for index in sorted(rows):
            where = sink.run_dirs[index]
            with _naming_disk_full(None if where is None else rd.RunDir(where).metrics_file):
                sink.log(index, rows[index])


def train(
    saes: Union[SAE, Sequence[SAE]],
    batches: Iterable[Tensor],
    steps: Optional[int] = None,
    *,
    penalties: PenaltiesArg = None,
    config: Optional[TrainConfig] = None,
    lr: Union[None, float, Sequence[Optional[float]]] = None,
    out_dir: Union[None, str, Path] = None,
    names: Optional[Sequence[str]] = None,
    resume: bool = False,
    progress: bool = True,
    run_config: Optional[dict] = None,
    world: Optional[World] = None,
    **settings: Any,
) -> list[SAE]:
    """Train SAEs on a stream of activation batches; returns the trained SAEs (same objects).

    saes: one SAE or a list; every batch trains all of them.
    batches: any iterable of [B, d_in] tensors. With state_dict()/load_state_dict() its state
        goes into checkpoints; otherwise a resumed run skips the batches already used.
    steps: number of steps; None trains until the batches end (an LR decay then needs len()).
    penalties: None; a list aligned with saes (each a Penalty, a list of them, or None); or a
        dict {sae index or name: Penalty or list}. Each SAE needs its own penalty objects.
    config: a TrainConfig (the [train] section); `settings` are its fields as keywords
        (optimizer=, checkpoint_every=, log_every=, lr_warmup_steps=, lr_decay_fraction=,
        adam_betas=, schedule_free_beta=, seed=, device=, autocast_bf16=, compile=, wandb=,
        tensorboard=),
        applied on top of it. optimizer: "adam" or "signsgd_schedulefree" (sign-SGD whose
        averaged weights are the ones saved and returned; checkpoints keep the training iterate);
        None: each SAE's default_optimizer (TopK family: signsgd_schedulefree; others: adam).
        lr_warmup_steps, lr_decay_fraction: linear warm-up; linear decay to 0 over that final
        fraction of the steps (None: the optimizer's default). device "auto": where the first SAE is; bf16 autocast only on CUDA.
    lr: None (config.lr, else each SAE's default_lr(optimizer)), a float, or one value per SAE.
    out_dir: None writes nothing. One SAE: out_dir is its run dir; several: out_dir/<name>.
        A run dir gets config.json, checkpoints/ (the last 2), metrics.jsonl, sae/ and
        final_info.json.
    resume: continue from the latest checkpoint in out_dir; a run killed before its first
        checkpoint starts again from step 0 (saying so). On CPU the result equals an
        uninterrupted run exactly. Either way, temp files of killed writes are removed.
    run_config: the caller's whole run description, stored in config.json for resume.
    world: the torchrun job (None: featsep.distributed.World.from_env(), one process outside
        torchrun). Each rank passes its own batches: its slice of every global batch (rank r
        holds rows [r B/N, (r+1) B/N), equal slices), and the result equals one process on
        the global batches (to float tolerance; docs/architecture.md, "Distributed training").
        parallel="data" trains every SAE on every rank; parallel="sae" spreads the SAEs over
        sae_groups groups of ranks (balanced by cost), data parallel within each group. Rank 0
        writes shared files, each SAE's run dir is written by its group's first rank, and
        every rank returns the trained SAEs.
    Raises NonFiniteLossError on a NaN/Inf loss, and OSError ENOSPC naming the file on a full
    disk (either way the last checkpoint stays as it was).
    """
    cfg = _train_config(config, settings)
    saes = _as_sae_list(saes)
    names = _names(names, len(saes))
    penalty_lists = _assign_penalties(penalties, names)
    optimizers = [cfg.optimizer or sae.default_optimizer for sae in saes]
    decays = [cfg.decay_fraction(opt) for opt in optimizers]
    total = _total_steps(batches, steps, max(decays))
    lrs = _lrs(cfg.lr if lr is None else lr, saes, optimizers)
    dirs = rd.run_dirs(out_dir, names)
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    world = World.from_env() if world is None else world
    if not resume:  # decided by rank 0 before any rank writes (another rank could see its first files)
        taken = next((d for d in dirs if d is not None and rd.RunDir(d).holds_training()), None) \
            if world.rank == 0 else None
        taken = world.broadcast_object(taken)
        if taken is not None:
            raise FileExistsError(f"{taken} already holds a training run; pass resume=True to continue it, "
                                  "or choose another out_dir")
    dev = saes[0].W_dec.device if cfg.device == "auto" else torch.device(cfg.device)
    groups = _sae_groups(cfg, world)
    owners = _owners(saes, penalty_lists, groups)
    group = world.rank % groups
    members = [
        _build_member(i, name, sae, plist, d, lr_i, cfg, opt, WarmupDecay(cfg.lr_warmup_steps, total, decay), dev,
                      writer=world.rank == owners[i])
        for i, (name, sae, plist, d, lr_i, opt, decay) in enumerate(
            zip(names, saes, penalty_lists, dirs, lrs, optimizers, decays))
        if owners[i] == group
    ]
    # what config.json and final_info record for each SAE: the settings as resolved for this run
    resolved = {**cfg.model_dump(exclude={"tokens", "batch_size", "lr"}), "steps": total, "device": str(dev),
                "names": names, "out_dir": None if out_dir is None else str(out_dir), "world_size": world.size}
    run = _Run(members, batches, total, cfg, dev, dirs, world, groups, any(penalty_lists))
    for m in members:
        if run.sae_world.distributed:
            m.sae.world = run.sae_world
    for d in run.run_dirs:
        _remove_stale_temp_files(d)
    start, notes = _resume_step(world, dirs) if resume else (None, [])
    written = [d if world.rank == owners[i] else None for i, d in enumerate(dirs)]
    tensorboard = cfg.tensorboard and (out_dir is None or any(d is not None for d in written))
    external = ExternalLoggers(cfg.wandb and world.rank == 0, tensorboard, names, written, run_config,
                               resume=start is not None)
    sink = MetricsSink(names, written, external, total, start or 0, progress and world.rank == 0)
    try:
        for note in notes if world.rank == 0 else []:  # e.g. a corrupted checkpoint passed over: one line
            sink.write(note) if progress else warnings.warn(note, stacklevel=2)
        if resume and start is None:  # killed before its first checkpoint: nothing to continue from
            some = any(rd.RunDir(d).has_checkpoints() for d in dirs)
            sink.write(f"no checkpoint {'common to every run ' if some else ''}in {out_dir} yet: starting from step 0")
        if start is None:
            ckpt.seed_everything(cfg.seed)
            for m in members:
                if m.run_dir is not None and m.writer:
                    _start_run_dir(m, resolved, run_config)
            shared = None
        else:
            shared = run.restore(start)
        it = run.data_iterator(shared)
        if shared is not None:
            ckpt.restore_rng(shared["rng"])
        run.loop(it, sink, fresh=shared is None, d_in=saes[0].cfg.d_in)
        if run.step == 0:
            raise ValueError("the batches yielded nothing; check the data source (empty corpus or cache?)")
        if run.checkpointed_step != run.step:
            run.save_checkpoints()
        for m in members:
            if m.writer:
                _finish(m, resolved, run, sink)
        if groups > 1:
            for i in range(len(saes)):  # rank 0's lines (the progress bar's) for the other groups' SAEs too
                if owners[i] != world.rank:
                    sink.write(_summary(names[i], run, run.rows.get(i, {}), dirs[i]))
            _share_trained(saes, penalty_lists, owners, world, dev)
    finally:
        for m in members:  # the SAEs handed back compute their statistics over their own batch again
            vars(m.sae).pop("world", None)
        sink.close()
        for m in members:
            m.sae.__dict__.pop("world", None)  # back to the class's single-process World
    return saes


def sae_owners(saes: Union[SAE, Sequence[SAE]], penalties: PenaltiesArg = None, *, config: Optional[TrainConfig] = None,
               names: Optional[Sequence[str]] = None, world: Optional[World] = None, **settings: Any) -> list[int]:
    """The rank that writes each SAE's run dir in train() with the same arguments (the first
    rank of the SAE's group: 0 for every SAE in data parallel); e.g. to let that rank evaluate it."""
    cfg = _train_config(config, settings)
    saes = _as_sae_list(saes)
    penalty_lists = _assign_penalties(penalties, _names(names, len(saes)))
    world = World.from_env() if world is None else world
    return _owners(saes, penalty_lists, _sae_groups(cfg, world))


def _owners(saes: list[SAE], penalty_lists: list[list[Penalty]], groups: int) -> list[int]:
    """Group of each SAE, which is also the global rank of the group's first rank (r % groups)."""
    return partition([_cost(sae, plist) for sae, plist in zip(saes, penalty_lists)], groups)


def _sae_groups(cfg: TrainConfig, world: World) -> int:
    """How many SAE groups the world is cut into: 1 for data parallel (and one process)."""
    if cfg.parallel == "data" or not world.distributed:
        return 1
    groups = cfg.sae_groups or world.size
    if world.size % groups:
        raise ValueError(f"sae_groups={groups} does not divide the {world.size} ranks of this job; "
                         f"choose a divisor of {world.size} (or leave it unset: one group per rank)")
    return groups


def _cost(sae: SAE, penalties: list[Penalty]) -> float:
    """Work per token, to balance SAE groups: the encoder (d_in d_sae), the decoder (d_in k
    for TopK-like codes, else d_in d_sae) and each penalty (d_sae k; d_sae for dense codes)."""
    d_in, n = sae.cfg.d_in, sae.cfg.d_sae
    k = getattr(sae.cfg, "k", n) if sae.topk_like else None
    return d_in * n + d_in * (k or n) + len(penalties) * n * (k or 1)


def _resume_step(world: World, dirs: list[Optional[Path]]) -> tuple[Optional[int], list[str]]:
    """The step to resume from and the notes to show, decided by rank 0 for every rank."""
    found: tuple = (None, [])
    if world.rank == 0:
        notes: list[str] = []
        try:
            found = (ckpt.latest_common_step([d for d in dirs if d is not None], notify=notes.append), notes)
        except ValueError as e:
            found = ("error", str(e))
    found = world.broadcast_object(found)
    if found[0] == "error":
        raise ValueError(found[1])
    return found


def _share_trained(saes: list[SAE], penalty_lists: list[list[Penalty]], owners: list[int], world: World,
                   device: torch.device) -> None:
    """Every SAE (and its penalties' state) from its group's first rank (global rank = group
    index) to every rank, so that train() returns the same SAEs everywhere."""
    for sae, plist, owner in zip(saes, penalty_lists, owners):
        sae.to(device)
        with torch.no_grad():
            for t in sae.state_dict().values():
                world.broadcast_(t, src=owner)
        for pen in plist:
            state = world.broadcast_object(pen.state_dict() if world.rank == owner else None, src=owner)
            if world.rank != owner:
                pen.load_state_dict(state)
                pen.to(device)


def _train_config(config: Optional[TrainConfig], settings: dict[str, Any]) -> TrainConfig:
    """`config` with keyword `settings` on top; a misspelt keyword names the valid ones."""
    unknown = sorted(set(settings) - set(TrainConfig.model_fields))
    if unknown:
        raise TypeError(f"train() got unknown setting(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(TrainConfig.model_fields))}")
    base = (config or TrainConfig()).model_dump()
    try:
        return TrainConfig.model_validate({**base, **settings})
    except ValidationError as e:
        raise ValueError("bad training settings: " + one_line(e, TrainConfig)) from None


def _build_member(index: int, name: str, sae: SAE, penalties: list[Penalty], run_dir: Optional[Path], lr: float,
                  cfg: TrainConfig, optimizer_name: str, schedule: WarmupDecay, device: torch.device,
                  writer: bool = True) -> _Member:
    sae.to(device).train()
    for pen in penalties:  # moved in place: the caller's objects are the ones that train
        pen.to(device)
    optimizer = make_optimizer(optimizer_name, sae.parameters(), lr, cfg)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    compiled = torch.compile(sae.training_forward) if cfg.compile else None
    return _Member(index, name, sae, penalties, run_dir, lr, optimizer_name, schedule.decay_fraction, optimizer,
                   make_scheduler(optimizer, schedule), fired, writer=writer, compiled=compiled)


def _member_training(m: _Member, resolved: dict[str, Any]) -> MemberTraining:
    return MemberTraining(**{**resolved, "optimizer": m.optimizer_name, "lr_decay_fraction": m.decay_fraction},
                          name=m.name, index=m.index, lr=m.lr)


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of atomic writes a kill interrupted (the run dir's own, checkpoints/, sae/)."""
    run = rd.RunDir(run_dir)
    for folder in (run.path, run.checkpoint_dir, run.sae_dir):
        remove_stale_temp_files(folder)


def _start_run_dir(m: _Member, resolved: dict[str, Any], run_config: Optional[dict]) -> None:
    """A fresh start: clear what a run killed before its first common checkpoint left, write config.json."""
    ckpt.clear_checkpoints(m.run_dir)
    with _naming_disk_full(rd.RunDir(m.run_dir).metrics_file):
        rd.RunDir(m.run_dir).truncate_metrics(0)
    with _naming_disk_full(rd.RunDir(m.run_dir).config_file):
        write_config(m.run_dir, m.sae, m.penalties, _member_training(m, resolved), run_config)


def _finish(m: _Member, resolved: dict[str, Any], run: _Run, sink: MetricsSink) -> None:
    """Final artifacts and the one-line summary of one SAE. An optimizer that averages
    (schedule-free) leaves its averaged weights in the SAE: those are saved and returned."""
    use_averaged_parameters(m.optimizer)
    row = m.last.get("row")
    if row is None and m.run_dir is not None:  # a resumed run that had already finished
        logged = rd.RunDir(m.run_dir).read_metrics()
        row = logged[-1] if logged else None
    row = row or {}
    if m.run_dir is not None:
        with _naming_disk_full(m.run_dir):
            write_final(m.run_dir, m.sae, m.penalties, _member_training(m, resolved), run.step, run.tokens, row)
    sink.write(_summary(m.name, run, row, m.run_dir))


def _summary(name: str, run: _Run, row: dict[str, Any], run_dir: Optional[Path]) -> str:
    where = f" -> {run_dir}" if run_dir is not None else ""
    return (f"{name}: {run.step} steps, {run.tokens:,} tokens, loss {row.get('loss', float('nan')):.4g}, "
            f"L0 {row.get('l0', float('nan')):.1f}, FVU {row.get('fvu', float('nan')):.3f}, "
            f"dead {100 * row.get('dead_fraction', float('nan')):.1f}%{where}")
