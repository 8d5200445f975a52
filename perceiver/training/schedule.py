"""Learning-rate schedule: linear warm-up, then a cosine decay to a floor."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """The factor by which the base learning rate is multiplied before optimizer step ``step`` (0-based).

    Steps ``0 .. warmup_steps - 1`` ramp linearly up to 1 (the first step already trains, at ``1 / warmup_steps``);
    then the factor follows half a cosine from 1 at ``warmup_steps`` down to ``min_lr_ratio`` at ``max_steps``.
    A plain object (not a lambda) so that ``LambdaLR.state_dict`` can save it with a checkpoint.
    """

    def __init__(self, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1):
        if max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps}")
        if not 0 <= warmup_steps <= max_steps:
            raise ValueError(f"warmup_steps: expected an int in [0, max_steps={max_steps}], got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: expected a float in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``WarmupCosine``; call ``scheduler.step()`` once after each ``optimizer.step()``."""
    factor = WarmupCosine(warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
