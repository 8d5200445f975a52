"""The public entry point: input checks before any launch, and the autograd function over the kernels."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from perceiver.masks import check_pad_mask

from .backward import attention_backward
from .forward import attention_forward
from .runtime import INTERPRET

MAX_HEAD_DIM = 128
MAX_BATCH_TIMES_HEADS = 65535  # the CUDA grid's second axis
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The interpreter cannot run bf16 tl.dot.
INTERPRETER_DTYPES = (torch.float16, torch.float32)


def unsupported_reason(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None = None) -> str | None:
    """None if ``attention`` can run this call, otherwise a short reason why not (shapes are assumed valid)."""
    devices = {t.device for t in (q, k, v)} | ({pad_mask.device} if pad_mask is not None else set())
    if len(devices) > 1:
        return f"q, k, v and pad_mask must be on one device, got {sorted(str(d) for d in devices)}"
    if q.is_cuda:
        if INTERPRET:
            return "CUDA tensors cannot run while TRITON_INTERPRET=1 is set"
        supported = CUDA_DTYPES
    elif q.device.type == "cpu":
        if not INTERPRET:
            return "CPU tensors need TRITON_INTERPRET=1 (set before triton is imported)"
        supported = INTERPRETER_DTYPES
    else:
        return f"device {q.device.type} is not supported (CUDA, or CPU under TRITON_INTERPRET=1)"
    if q.dtype not in supported:
        return f"dtype {q.dtype} is not supported on {q.device.type} (supported: {', '.join(map(str, supported))})"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return f"the kernels need equal qk and v head dims, got {q.shape[-1]} and {v.shape[-1]}"
    if q.shape[0] * q.shape[1] > MAX_BATCH_TIMES_HEADS:
        return f"batch x heads = {q.shape[0] * q.shape[1]} > {MAX_BATCH_TIMES_HEADS}"
    return None


def check_inputs(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None) -> None:
    """Raise a clear error (naming the argument, what was expected and what was received) before any launch."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor (B, H, length, head_dim), got shape {tuple(t.shape)}")
    b, h, _, d = q.shape
    m = k.shape[2]
    if tuple(k.shape) != (b, h, m, d):
        raise ValueError(f"k: expected shape ({b}, {h}, M, {d}) to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(v.shape) != (b, h, m, d):
        raise ValueError(f"v: expected shape ({b}, {h}, {m}, {d}) to match k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_pad_mask(pad_mask, b, m)
    reason = unsupported_reason(q, k, v, pad_mask)
    if reason is not None:
        raise ValueError(f"perceiver.kernels.attention cannot run this call: {reason}")


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pad_mask, scale, causal, num_splits):
        out, lse = attention_forward(q, k, v, pad_mask, scale, num_splits, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pad_mask = pad_mask  # not differentiable; kept off save_for_backward (bool)
        ctx.scale = scale
        ctx.causal = causal
        ctx.num_splits = num_splits
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(
            q, k, v, ctx.pad_mask, out, lse, d_out, ctx.scale, ctx.num_splits, ctx.causal
        )
        return dq, dk, dv, None, None, None, None


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pad_mask: Tensor | None = None,
    scale: float | None = None,
    *,
    causal: bool = False,
    num_splits: int | None = None,
) -> Tensor:
    """softmax(scale · q kᵀ, ignoring padded keys) v, fused: no (N × M) score matrix is stored.

    q (B, H, N, Dh), k and v (B, H, M, Dh) with Dh ≤ 128, one dtype (fp16, bf16 or fp32 on CUDA; fp16 or fp32 on CPU
    under ``TRITON_INTERPRET=1``), contiguous or strided. ``pad_mask`` (B, M) bool, True = ignore that key.
    ``scale`` defaults to 1/sqrt(Dh). Returns (B, H, N, Dh) in q's dtype, differentiable in q, k and v; a query whose
    keys are all padding gets 0 and zero gradients.

    ``causal=True`` aligns the queries with the last N keys: query i (0-based) sees key j iff j ≤ i + M − N, on top
    of the padding. A query that sees no unpadded key (with N > M, the first N − M queries see none) gets 0 and zero
    gradients. Key blocks wholly after a block of queries are skipped, not only masked.

    ``num_splits`` forces the number of key chunks of the split-KV forward (and of the dQ pass); by default the
    heuristic of ``perceiver.kernels.runtime.num_splits_heuristic`` picks it on CUDA, and 1 on the CPU.
    """
    check_inputs(q, k, v, pad_mask)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits: expected a positive int or None, got {num_splits!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    b, h, n, d = q.shape
    m = k.shape[2]
    if b * h * n == 0 or m == 0:
        # Nothing to launch: no query, or no key (then every query is "fully masked" and gets 0).
        return _EmptyAttention.apply(q, k, v)
    return _FusedAttention.apply(q, k, v, pad_mask, scale, causal, num_splits)


class _EmptyAttention(torch.autograd.Function):
    """Zero output and zero gradients when there is no query or no key."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.like = [(t.shape, t.dtype, t.device) for t in (q, k, v)]
        return q.new_zeros(q.shape)

    @staticmethod
    def backward(ctx, d_out):
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.like)
