"""Input checks shared by the adapters: each failure names the argument, what was expected and what came."""

from __future__ import annotations

import torch
from torch import Tensor

_KINDS = {
    "float": (Tensor.is_floating_point, "a floating-point dtype"),
    "integer": (
        lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        "an integer dtype",
    ),
    "bool": (lambda t: t.dtype == torch.bool, "torch.bool"),
}


def check_tensor(x, name: str, *, kind: str, rank: int, layout: str) -> None:
    """Raise unless ``x`` is a tensor of the given dtype kind and rank with a non-empty batch.

    ``layout`` describes the expected shape for the message, e.g. ``"(B, C, H, W)"``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {layout}, got {type(x).__name__}")
    accepts, described = _KINDS[kind]
    if not accepts(x):
        raise TypeError(f"{name}: expected {described} tensor of shape {layout}, got dtype {x.dtype}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor of shape {layout}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch of shape {layout}, got batch size 0")
