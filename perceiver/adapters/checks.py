"""Input checks shared by the adapters: each failure names the argument, what was expected and what came."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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


def model_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter; None if it has none (buffers such as position
    encodings may be kept in float64 and cast where used, so they do not count)."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_model_dtype(x: Tensor, name: str, module: nn.Module) -> None:
    """Raise unless floating-point input ``x`` has the dtype of ``module``'s parameters (autocast aside).

    Without it a float64 input to a float32 model fails deep in torch (``mat1 and mat2 must have the same dtype``).
    """
    expected = model_dtype(module)
    if expected is None or x.dtype == expected or torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(
        f"{name}: expected dtype {expected} (the dtype of the model's parameters), got {x.dtype}; convert the input "
        f"(x.to({expected})) or the model (model.to({x.dtype}))"
    )
