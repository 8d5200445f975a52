"""Initial weights of the Perceiver's attention layers and latent array.

The default, ``init_scale=None``, scales every linear map by its fan-in, as He et al. (2015) do for networks with
rectifying activations: weights ~ N(0, 2 / fan_in) truncated at two standard deviations, biases 0. Every layer reads
LayerNorm-ed (unit-variance) inputs, so its outputs start at the same scale whatever the width: the attention scores
q·k / sqrt(d) start with a spread of a few units, and from the first step each latent attends to its own choice of
tokens instead of the mean of all of them. The maps that write into a residual stream (attention output projections,
the last linear of each MLP) are further scaled by 1 / sqrt(number of residual branches the stream passes through),
as in GPT-2: without it, a deep stack (the papers' 8 blocks of 6 layers) starts with every latent pointing the same
way, because each layer's attention average outweighs the stream it adds to. The learned latent array starts at unit
scale, N(0, 1), the scale of the normalised tokens it is compared with, so the latents start distinct.

A float ``init_scale`` gives the fixed-std scheme of the Perceiver papers (std 0.02 for every weight and for the
latents), which suits their wide models but stalls small ones: every score starts near 0, attention is uniform, all
latents read the same mean of the input, and the gradient that would break that symmetry is the product of two tiny
matrices. Measured side by side on Fashion-MNIST and at depth in docs/exps.md ("Initialisation"); tests/test_init.py checks
the statistics at a small width and at the papers' width and depth.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from perceiver.attention import MultiHeadAttention
from perceiver.layers import MLP

# He et al.'s gain for rectifiers (GELU included): a layer's output variance matches its input's.
FAN_IN_GAIN = math.sqrt(2.0)


def check_init_scale(init_scale: float | None) -> None:
    if init_scale is not None and not (isinstance(init_scale, (int, float)) and init_scale > 0):
        raise ValueError(f"init_scale: expected None (fan-in scaled) or a positive float, got {init_scale!r}")


def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, std²) cut at ±2 std, in place."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def init_linear_layers(module: nn.Module, init_scale: float | None = None, *, num_residual_branches: int = 1) -> None:
    """Initialise every ``nn.Linear`` inside ``module``: std sqrt(2 / fan_in) (default) or the fixed ``init_scale``.

    By default the residual output maps (``MultiHeadAttention.o_proj``, an ``MLP``'s last linear) are scaled by
    1 / sqrt(``num_residual_branches``): pass the number of attention and MLP branches that the stream these layers
    write into goes through (2 per layer; count a shared layer once per time it is applied).
    """
    check_init_scale(init_scale)
    if not (isinstance(num_residual_branches, int) and num_residual_branches >= 1):
        raise ValueError(f"num_residual_branches: expected a positive int, got {num_residual_branches!r}")
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            std = FAN_IN_GAIN / math.sqrt(layer.in_features) if init_scale is None else init_scale
            truncated_normal_(layer.weight, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    if init_scale is None and num_residual_branches > 1:
        with torch.no_grad():
            for output_map in residual_output_maps(module):
                output_map.weight.div_(math.sqrt(num_residual_branches))


def residual_output_maps(module: nn.Module) -> list[nn.Linear]:
    """The linear maps inside ``module`` whose outputs are added to a residual stream."""
    maps = []
    for layer in module.modules():
        if isinstance(layer, MultiHeadAttention):
            maps.append(layer.o_proj)
        elif isinstance(layer, MLP):
            maps.append(layer.output)
    return maps


def init_latents(latents: torch.Tensor, init_scale: float | None = None) -> torch.Tensor:
    """A learned latent array: N(0, 1) by default (the scale of LayerNorm-ed tokens), else std ``init_scale``."""
    check_init_scale(init_scale)
    with torch.no_grad():
        return truncated_normal_(latents, 1.0 if init_scale is None else init_scale)
