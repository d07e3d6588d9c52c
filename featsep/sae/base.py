"""The contract every SAE architecture meets, the logic they share, and the registry.

An architecture is one file in featsep/sae/: a config class (subclass of `SAEConfigBase`)
and an implementation (subclass of `SAE`), registered with `@register("name")`.
The trainer knows nothing about architectures beyond this file.

Conventions shared by every architecture (one place, here):
- encode subtracts b_dec from the input first (SAELens `apply_b_dec_to_input=True`).
- "mse" is the squared reconstruction error summed over d_in and averaged over the batch,
  ||x - x_hat||^2 per token (SAELens / dictionary_learning convention; it is what the
  reference's l1 = 0.04 was tuned against). `metrics["fvu"]` gives the scale-free version.
- W_dec rows stay unit norm: `before_optimizer_step` removes the radial gradient component,
  `after_optimizer_step` renormalises.
- Dead latents: `tokens_since_fired` counts tokens seen since each latent last fired; a
  latent is dead once that reaches `dead_tokens_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from featsep.codes import Codes
from featsep.distributed import World
from featsep.registry import Registry


class SAEConfigBase(BaseModel):
    """Fields shared by every architecture; subclasses add their own hyperparameters.

    The metadata fields (hook_name, model_name, normalization_factor, ...) travel with the
    SAE into cfg.json so a saved SAE says where its activations came from.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0)
    dtype: str = "float32"
    device: str = "cpu"
    # metadata (SAELens-compatible names)
    hook_name: str = ""
    model_name: str = ""
    hook_layer: int = -1
    context_size: int = 128
    prepend_bos: bool = True
    # SAELens's key, always "none" here: featsep scales by one constant factor (below), which
    # none of SAELens's modes means ("constant_norm_rescale" rescales each token to norm sqrt(d_in)).
    # SAELens ignores normalization_factor: save with save_sae(fold=True) / `featsep export` for it.
    normalize_activations: Literal["none"] = "none"
    normalization_factor: Optional[float] = None  # x_normalised = x * factor
    dataset_path: str = ""
    seed: int = 42
    # shared training behaviour
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = Field(
        "geometric_median", description="where init_from_data puts b_dec"
    )
    dead_tokens_threshold: int = Field(
        1_000_000,
        gt=0,
        description="a latent silent for this many tokens is dead (Gao et al. use 10M; our "
        "runs are 1-10M tokens, so 1M keeps the notion meaningful); the TopK family, when "
        "not given: 128 d_sae / k (featsep.sae.topk)",
    )


@dataclass
class SAEOutput:
    """What one training forward returns to the trainer.

    terms: named, unweighted scalar loss terms (only loss terms); coefficients: the weight of
    each term at this step (a missing name means 1.0). The trainer minimises
    sum(coef * term) and logs each term. codes: the latent activations, in the form the SAE
    computed them (featsep.codes.Codes: TopK form, dense, or both), which the trainer hands to
    the penalties. metrics: detached diagnostics (l0, fvu, dead_fraction, ...) for logging only.
    """

    x_hat: Tensor
    terms: dict[str, Tensor]
    codes: Codes
    coefficients: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached scalars

    def __post_init__(self) -> None:
        if isinstance(self.codes, Tensor):  # dense codes from an SAE written against the old API
            self.codes = Codes.from_dense(self.codes)
        elif not isinstance(self.codes, Codes):
            raise TypeError(f"SAEOutput.codes must be a featsep.codes.Codes (or dense codes [B, d_sae]), "
                            f"got {type(self.codes).__name__}")


def mse_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over features, mean over tokens (at least float32, even under
    bf16 autocast)."""
    dtype = torch.promote_types(torch.promote_types(x_hat.dtype, x.dtype), torch.float32)
    return (x_hat.to(dtype) - x.to(dtype)).pow(2).sum(dim=-1).mean()


def linear_warmup(value: float, step: int, warmup_steps: int) -> float:
    """`value` ramped linearly over the first `warmup_steps` steps (SAELens convention:
    (step + 1) / warmup_steps, so step 0 already has a small non-zero weight)."""
    if warmup_steps <= 0:
        return value
    return value * min(1.0, (step + 1) / warmup_steps)


@torch.no_grad()
def lr_rule(optimizer: str, base: dict[str, float]) -> float:
    """base[optimizer]; an optimizer without a rule here gets one line naming those that have one."""
    if optimizer not in base:
        raise ValueError(f"no default learning rate for optimizer {optimizer!r}; give lr=... or use one of: "
                         f"{', '.join(sorted(base))}")
    return base[optimizer]


def geometric_median(points: Tensor, iters: int = 8, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance. A robust
    b_dec init (Bricken et al.; the TopK baseline) that outliers such as BOS cannot drag."""
    points = points.double()
    median = points.mean(dim=0)
    for _ in range(iters):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)
        median = (weights[:, None] * points).sum(dim=0) / weights.sum()
    return median


class SAE(nn.Module):
    """Base class. Parameters: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in]
    (unit-norm rows), b_dec [d_in]. Subclasses implement `encode` and `training_forward`.
    """

    architecture: ClassVar[str] = ""
    saelens_architecture: ClassVar[str] = "standard"  # the name SAELens loads it as
    config_class: ClassVar[type[SAEConfigBase]] = SAEConfigBase
    topk_like: ClassVar[bool] = False  # codes have at most k non-zeros per row
    # The ranks that train this SAE together, each on its slice of the global batch; batch
    # statistics (firing, BatchTopK's selection, resampling data) are taken over all of them.
    # The trainer sets it for a distributed run and removes it after; one process otherwise.
    world: World = World.single()

    def __init__(self, cfg: SAEConfigBase):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        d, n = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d, n, dtype=dtype, device=cfg.device))
        self.b_enc = nn.Parameter(torch.zeros(n, dtype=dtype, device=cfg.device))
        self.W_dec = nn.Parameter(torch.empty(n, d, dtype=dtype, device=cfg.device))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype, device=cfg.device))
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.long, device=cfg.device))
        # host-side upper bound on tokens_since_fired, valid while the buffer's version is this
        self._silence_bound = (0, self.tokens_since_fired._version)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-norm random decoder rows, encoder = decoder transpose (Conerly et al.; Gao
        et al.): training starts near a tied autoencoder."""
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed)
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # --- inference -------------------------------------------------------------------------
    def pre_activations(self, x: Tensor) -> Tensor:
        """(x - b_dec) W_enc + b_enc: [..., d_sae].

        b_dec enters a second time in an exactly-zero term, (b_dec - b_dec.detach()) W_enc, that
        carries its gradient as one vector-matrix product; the plain formula would make autograd
        compute the whole [B, d_in] input gradient, a matmul as large as the encoder, only to
        sum it over the batch. Without autograd (the sparse encoder's forward) one addmm adds
        b_enc inside the matmul instead of in a second pass over [B, d_sae]."""
        b_dec = self.b_dec
        if not torch.is_grad_enabled() and x.dim() == 2:
            return torch.addmm(self.b_enc, x - b_dec, self.W_enc)
        return (x - b_dec.detach()) @ self.W_enc + (self.b_enc - (b_dec - b_dec.detach()) @ self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """x [..., d_in] -> dense codes [..., d_sae] (nonnegative for all built-ins)."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # --- training --------------------------------------------------------------------------
    def training_forward(self, x: Tensor, step: int, total_steps: int) -> SAEOutput:
        """One training forward on a batch x [B, d_in]: reconstruction plus named loss terms
        ("mse" always; architecture terms such as "l1", "l0", "auxk"). May update bookkeeping
        buffers (e.g. tokens since each latent fired)."""
        raise NotImplementedError

    default_optimizer: ClassVar[str] = "adam"  # what train() uses when [train] optimizer is None

    def default_lr(self, optimizer: str = "adam") -> float:
        """The LR rule in d_sae and d_in for each optimizer (featsep.train.optim names; fitted in
        docs/lr-sweep.md): c / sqrt(d_sae / 16384) / sqrt(max(d_in, 256) / 256). c was fitted
        at d_in 256 (synthetic data); on gemma-3-270m (d_in 640), with AuxK at aux_k = k and
        weight 1/4, the d_in-free rule left 1.7% of the latents dead and 0.63x of it 0.4% (one
        run each). Synthetic data at d_in 640 does not need the term (it loses a little FVU
        there), so it is a rule for LM activations, from the one d_in testable offline. Adam's
        constant is 10x the reference runs' (dictionary_learning's TopKTrainer, 2e-4): at their
        rate a 1M-10M-token run is far from converged; recipes that reproduce them set lr
        themselves."""
        c = lr_rule(optimizer, {"adam": 2e-3, "signsgd_schedulefree": 5e-3})
        return c / (self.cfg.d_sae / 16384) ** 0.5 / (max(self.cfg.d_in, 256) / 256) ** 0.5

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Data-dependent init before training: b_dec at the geometric median or mean."""
        x = x.reshape(-1, self.cfg.d_in)
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x.double().mean(dim=0))

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the gradient component parallel to each decoder row, so Adam's step moves
        rows along the unit sphere rather than fighting the renormalisation."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec
        g.sub_((g * w).sum(dim=1, keepdim=True) * w)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, x: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Renormalise decoder rows (subclasses extend, e.g. dead-latent resampling)."""
        self.normalize_decoder()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # --- dead-latent bookkeeping -----------------------------------------------------------
    def dead_mask(self) -> Tensor:
        """Bool [d_sae]: latents silent for at least `dead_tokens_threshold` tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens_threshold

    def may_have_dead_latents(self) -> bool:
        """False only when no latent can be dead yet, known without a host sync: record_firing
        grows a host-side bound on tokens_since_fired by each batch's tokens. When the buffer
        was written elsewhere (a checkpoint load, resampling, a test) the bound is re-read once
        (one sync)."""
        bound, version = self._silence_bound
        if version != self.tokens_since_fired._version:
            bound = int(self.tokens_since_fired.max()) if self.tokens_since_fired.numel() else 0
            self._silence_bound = (bound, self.tokens_since_fired._version)
        return bound >= self.cfg.dead_tokens_threshold

    @torch.no_grad()
    def record_firing(self, fired: Tensor, n_tokens: int) -> None:
        bound, version = self._silence_bound
        known = version == self.tokens_since_fired._version
        self.tokens_since_fired.add_(n_tokens)
        self.tokens_since_fired.masked_fill_(fired, 0)
        if known:
            self._silence_bound = (bound + n_tokens, self.tokens_since_fired._version)

    @torch.no_grad()
    def resample_dead_latents(
        self, x: Tensor, optimizer: Optional[torch.optim.Optimizer] = None, seed: int = 0
    ) -> int:
        """Anthropic-style resampling (Bricken et al. 2023): each dead latent gets a decoder row
        pointing at an input the SAE reconstructs badly (sampled with probability ~ squared
        error), an encoder column along it at 0.2 x the mean alive encoder norm, b_enc = 0,
        and fresh Adam moments (schedule-free: z set to the new weights). Live latents are untouched. Returns how many were resampled."""
        dead = self.dead_mask().nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        x = x.reshape(-1, self.cfg.d_in).to(self.W_dec.dtype)
        errors = (x - self(x)).pow(2).sum(dim=-1).double().cpu()
        if not torch.isfinite(errors).all() or errors.sum() <= 0:
            errors = torch.ones_like(errors)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        rows = torch.multinomial(errors, dead.numel(), replacement=True, generator=gen).to(x.device)
        directions = x[rows] - self.b_dec
        directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~self.dead_mask()
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        self.W_dec[dead] = directions
        self.W_enc[:, dead] = directions.T * (0.2 * enc_norm)
        self.b_enc[dead] = 0
        self.tokens_since_fired[dead] = 0
        if optimizer is not None:
            for param, where in ((self.W_dec, (dead,)), (self.W_enc, (slice(None), dead)), (self.b_enc, (dead,))):
                state = optimizer.state.get(param, {})
                for moment in ("exp_avg", "exp_avg_sq"):
                    if moment in state:
                        state[moment][where] = 0
                if "z" in state:  # schedule-free's base iterate follows the new weights
                    state["z"][where] = param[where]
        return int(dead.numel())

    def finish_output(self, x: Tensor, out: SAEOutput, l0: Tensor) -> SAEOutput:
        """Shared tail of every training_forward: the "mse" term, firing bookkeeping and the
        diagnostics (`l0` is the mean number of active latents per token)."""
        out.terms = {"mse": mse_loss(x, out.x_hat), **out.terms}
        if self.training:  # the global batch's firing: every rank keeps the same counts
            self.record_firing(self.world.any(out.codes.fired()), x.shape[0] * self.world.size)
        with torch.no_grad():
            xf = x.float()
            total_var = (xf - xf.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
            # detached tensors, not floats: the trainer reads them only when it logs, so the
            # step itself never waits on the device
            out.metrics.update(
                l0=l0.detach(),
                fvu=out.terms["mse"].detach() / total_var,
                dead_fraction=self.dead_mask().float().mean(),
            )
        return out

    # --- saving ----------------------------------------------------------------------------
    def saved_tensors(self) -> dict[str, Tensor]:
        """Tensors written to sae_weights.safetensors under SAELens's names."""
        return {k: getattr(self, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}

    @torch.no_grad()
    def load_saved_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `saved_tensors`."""
        for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, k).copy_(tensors[k])

    # --- metadata --------------------------------------------------------------------------
    def to_cfg_dict(self) -> dict[str, Any]:
        """cfg.json contents: our full config plus the keys SAELens reads.

        `architecture` is SAELens's name (it loads BatchTopK-family SAEs as JumpReLU with
        their threshold); `featsep_architecture` is ours, which `load_sae` uses."""
        d = self.cfg.model_dump()
        d.update(
            architecture=self.saelens_architecture,
            featsep_architecture=self.architecture,
            apply_b_dec_to_input=True,
            finetuning_scaling_factor=False,
            sae_lens_training_version=None,
            normalize_activations=self.cfg.normalize_activations,
            dataset_trust_remote_code=False,
            model_from_pretrained_kwargs={},
            hook_head_index=None,
            neuronpedia_id=None,
            activation_fn_kwargs={},
        )
        return d


_REGISTRY: Registry[SAE] = Registry("SAE architecture", name_attribute="architecture", noun="SAE")
register = _REGISTRY.register


def architectures() -> list[str]:
    return _REGISTRY.names()


def get_architecture(name: str) -> type[SAE]:
    return _REGISTRY.get(name)


def make_sae(name: str, d_in: int, d_sae: int, **params: Any) -> SAE:
    """Build a registered architecture, e.g. make_sae("topk", d_in=640, d_sae=8192, k=32)."""
    return _REGISTRY.build(name, d_in=d_in, d_sae=d_sae, **params)
