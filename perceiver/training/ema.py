"""An exponential moving average of a model's weights, evaluated in its place.

The weights at the end of a run carry the noise of its last few hundred updates; their running average does not, and
often scores a little better for the same training (the "Polyak average"; timm's ``ModelEma``), though not in this
project's measured runs (docs/exps.md: no gain on Fashion-MNIST or, over two paired runs, on spoken digits), so
every experiment has it off by default (``--ema-decay``). This is PyTorch's
``torch.optim.swa_utils.AveragedModel`` with one change: the decay ramps up as ``(1 + n) / (10 + n)`` after ``n``
updates until it reaches ``decay``, so that a short run is not averaged with its random initialisation (with a fixed
0.999, the initial weights would still weigh 0.999^300 = 74% after 300 steps).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the update after ``updates`` earlier ones: ``min(decay, (1 + updates) / (10 + updates))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``model`` whose ``update_parameters(model)`` moves each weight and float buffer towards the model's:
    ``average = d * average + (1 - d) * current`` with ``d = ema_decay_at(decay, updates)`` (the first update copies).
    Its state dict (weights and update count) goes into checkpoints, so a resumed run continues the same average."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay: expected a float in (0, 1), got {decay}")

    @torch.no_grad()
    def update(averages: list[torch.Tensor], currents: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # num_averaged counts the updates so far, the first (a copy) included.
        weight = 1.0 - ema_decay_at(decay, int(num_averaged) - 1)
        if torch.is_floating_point(averages[0]):
            torch._foreach_lerp_(averages, currents, weight)
        else:  # integer buffers (e.g. a batch norm's step count): follow the model
            for average, current in zip(averages, currents):
                average.copy_(current)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
