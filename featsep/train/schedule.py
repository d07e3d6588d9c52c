"""Learning-rate schedule: linear warm-up, constant, linear decay to 0 over the final steps.

A picklable callable (not a closure) so `LambdaLR.state_dict()` records its parameters and a
resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import torch


class WarmupDecay:
    """Multiplier of the base LR for the 0-based step about to be taken.

    warm-up: (step + 1) / warmup_steps for the first `warmup_steps` steps;
    decay:   (total_steps - step) / decay_steps over the last `decay_steps` =
             round(decay_fraction * total_steps) steps, reaching 0 just after the final step.
    The smaller of the two applies where they overlap.
    """

    def __init__(self, warmup_steps: int = 0, total_steps: int | None = None, decay_fraction: float = 0.0):
        if warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps={warmup_steps} is negative; use 0 for no warm-up")
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"lr_decay_fraction={decay_fraction} is outside [0, 1]")
        if decay_fraction > 0 and not total_steps:
            raise ValueError("an LR decay needs the total number of steps; pass steps=... "
                             "or lr_decay_fraction=0")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay_steps = round(decay_fraction * total_steps) if total_steps else 0
        self.decay_fraction = decay_fraction

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        if self.decay_steps and step >= self.total_steps - self.decay_steps:
            factor = min(factor, max(self.total_steps - step, 0) / self.decay_steps)
        return factor


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupDecay) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
