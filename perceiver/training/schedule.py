"""Learning-rate schedule: linear warm-up, then a cosine decay to a floor."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """The factor by which the base learning rate is multiplied before optimizer step ``step`` (0-based).

    Steps ``0 .. warmup_steps - 1`` ramp linearly up to 1 (the first step already trains, at ``1 / warmup_steps``);
    then the factor follows half a cosine from 1 at ``warmup_steps`` down to ``min_lr_ratio`` at ``max_steps``.
    With a time budget (``max_seconds``) the cosine runs over the training time as well: its progress is the larger
    of the step fraction and ``elapsed_seconds / max_seconds``, where the training loop keeps ``elapsed_seconds`` up to date, so a run that
    trains until a wall-clock budget ends its schedule when the budget ends, whatever its speed.
    A plain object (not a lambda) so that ``LambdaLR.state_dict`` can save it with a checkpoint.
    """

    def __init__(self, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1,
                 max_seconds: float | None = None):
        if max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps}")
        if not 0 <= warmup_steps <= max_steps:
            raise ValueError(f"warmup_steps: expected an int in [0, max_steps={max_steps}], got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: expected a float in [0, 1], got {min_lr_ratio}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds: expected a positive float or None, got {max_seconds}")
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio
        self.max_seconds = max_seconds
        self.elapsed_seconds = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.max_seconds is not None:
            # Whichever budget is nearer its end leads: a time budget with a generous step cap follows the clock,
            # a short step count under a long time budget still decays over its steps.
            progress = max(progress, self.elapsed_seconds / self.max_seconds)
        progress = min(1.0, progress)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1,
    max_seconds: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``WarmupCosine``; call ``scheduler.step()`` once after each ``optimizer.step()`` (with
    ``max_seconds``, after setting ``scheduler.lr_lambdas[0].elapsed_seconds``)."""
    factor = WarmupCosine(warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio,
                          max_seconds=max_seconds)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
