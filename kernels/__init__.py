"""Fused Triton attention kernels, installed as ``perceiver.kernels``.

``attention(q, k, v, pad_mask=None, scale=None, *, causal=False)`` computes softmax(scale · q kᵀ) v with per-key
padding and optional causal masks (queries aligned with the last keys), forward and backward, without materialising
the (N × M) score matrix; ``unsupported_reason(q, k, v, pad_mask)`` says whether a call can run here (None) or why
not. They run on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was imported. See
``docs/kernels.md``.
"""

from .interface import attention, check_inputs, unsupported_reason
from .runtime import num_splits_heuristic

__all__ = ["attention", "check_inputs", "num_splits_heuristic", "unsupported_reason"]
