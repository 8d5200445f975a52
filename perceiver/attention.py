"""Multi-head attention with key padding masks, and the one place that picks how attention is computed.

Backends (``attend(..., backend=...)`` or ``with attention_backend(name):``):

- ``"auto"`` (default): the fused Triton kernels of ``perceiver.kernels`` for fp16 and bf16 CUDA tensors whenever
  they support the call, PyTorch's ``scaled_dot_product_attention`` (SDPA) otherwise (fp32 included, see
  ``AUTO_KERNEL_DTYPES``);
- ``"sdpa"``: always SDPA (which itself picks flash, memory-efficient, cuDNN or math kernels);
- ``"triton"``: always the Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``); raises if they cannot run;
- ``"math"``: an explicit softmax(q kᵀ) v in the inputs' own dtype, float64 included; the reference for tests.

Every backend follows the package's mask convention (``pad_mask`` (B, M) bool, True = padding, see
``perceiver.masks``) and gives a query whose keys are all padding a zero output and zero gradients, never NaN.

``causal=True`` aligns the N queries with the **last** N of the M keys: query i (0-based) sees key j iff
j <= i + M - N, combined with the key padding (Perceiver AR's latents are the last N positions of their input, and
self-attention is the case N = M). A query that sees no unpadded key (e.g. i < N - M when N > M) gets a zero output
and zero gradients, as a fully padded one does.
Inspection: ``with record_attention(model) as calls:`` makes every ``MultiHeadAttention`` inside ``model`` compute
through the math path and record its softmax weights, so a user sees where each query looks without reaching into the
layers' projections.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from perceiver.config import Pretrained, capture_config
from perceiver.masks import check_pad_mask

Backend = Literal["auto", "sdpa", "triton", "math"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "triton", "math")

_default_backend: str = "auto"

# The dtypes that "auto" sends to the kernels. Their fp32 path (IEEE dots on the CUDA cores, no tensor cores) is the
# accuracy path, reached with backend="triton": on an H200 (Triton 3.6) a first fp32 call at head dim 40 did not
# return within 110 s, nor a first fp32 train step of a model with head dim 128 within 250 s, while the autotuner
# compiled its 24 candidates of unrolled FMA dots (about 11× slower to compile than bf16's; see
# benchmarks/results/kernels.md). SDPA's fp32 kernels are compiled ahead of time.
AUTO_KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def attention_backend(backend: Backend) -> Iterator[None]:
    """Force the attention backend of every module inside the ``with`` block (the argument of ``attend`` wins)."""
    global _default_backend
    _check_backend(backend)
    previous, _default_backend = _default_backend, backend
    try:
        yield
    finally:
        _default_backend = previous


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def _triton_kernels():
    """The kernels module, or None where triton cannot be imported on this machine."""
    try:
        from perceiver import kernels
    except ImportError:
        return None
    return kernels if hasattr(kernels, "attention") else None


def _triton_unsupported_reason(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None) -> str | None:
    kernels = _triton_kernels()
    if kernels is None:
        return "perceiver.kernels could not be imported (is triton installed?)"
    if k.shape[-1] != v.shape[-1]:
        return f"the kernels need equal qk and v head dims, got {k.shape[-1]} and {v.shape[-1]}"
    return kernels.unsupported_reason(q, k, v, pad_mask)


def resolve_backend(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None = None, backend: str | None = None,
                    *, causal: bool = False) -> str:
    """The backend that ``attend`` will use for this call: ``"triton"``, ``"sdpa"`` or ``"math"``."""
    backend = _default_backend if backend is None else backend
    _check_backend(backend)
    if backend != "auto":
        return backend
    if q.is_cuda and q.dtype in AUTO_KERNEL_DTYPES and _triton_unsupported_reason(q, k, v, pad_mask) is None:
        return "triton"
    return "sdpa"


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pad_mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: Backend | None = None,
) -> Tensor:
    """softmax(scale · q kᵀ, ignoring padded keys and, if ``causal``, later keys) v.

    q (B, H, N, Dqk), k (B, H, M, Dqk), v (B, H, M, Dv), pad_mask (B, M) bool with True = padding.
    Returns (B, H, N, Dv). ``scale`` defaults to 1/sqrt(Dqk). ``causal``: query i sees key j iff j <= i + M - N
    (queries aligned with the last N keys; see the module docstring).
    """
    _check_attend_inputs(q, k, v, pad_mask)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    chosen = resolve_backend(q, k, v, pad_mask, backend, causal=causal)
    if chosen == "triton":
        reason = _triton_unsupported_reason(q, k, v, pad_mask)
        if reason is not None:
            raise RuntimeError(f"attention backend 'triton' cannot run this call: {reason}")
        return _triton_kernels().attention(q, k, v, pad_mask, scale=scale, causal=causal)
    if chosen == "sdpa":
        return _sdpa_attention(q, k, v, pad_mask, scale, causal)
    return _math_attention(q, k, v, pad_mask, scale, causal)


def causal_mask(num_queries: int, num_keys: int, device=None) -> Tensor:
    """(N, M) bool, True where query i must ignore key j: j > i + M - N (queries aligned with the last N keys)."""
    offset = num_keys - num_queries
    queries = torch.arange(num_queries, device=device)[:, None]
    return torch.arange(num_keys, device=device)[None, :] > queries + offset


def _ignored_keys(pad_mask: Tensor | None, causal: bool, n: int, m: int, device) -> Tensor | None:
    """Bool mask broadcastable to (B, H, N, M), True = ignore; None when every query sees every key."""
    ignore = None if pad_mask is None else pad_mask[:, None, None, :]
    if causal and n > 1:  # with one query (i = 0 sees j <= M - 1) nothing is hidden
        future = causal_mask(n, m, device)[None, None]
        ignore = future if ignore is None else ignore | future
    return ignore


def _check_attend_inputs(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor (B, H, length, head_dim), got shape {tuple(t.shape)}")
    b, h, _, d_qk = q.shape
    m = k.shape[2]
    if k.shape[:2] != (b, h) or k.shape[3] != d_qk:
        raise ValueError(f"k: expected shape ({b}, {h}, M, {d_qk}) to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != (b, h, m):
        raise ValueError(f"v: expected shape ({b}, {h}, {m}, Dv) to match k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_pad_mask(pad_mask, b, m)


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None, scale: float,
                    causal: bool = False) -> Tensor:
    n, m = q.shape[2], k.shape[2]
    if causal and pad_mask is None and n == m:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=True)
    ignore = _ignored_keys(pad_mask, causal, n, m, q.device)
    if ignore is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # A query whose keys are all ignored would give NaN in some SDPA kernels. Let it attend to everything
    # (finite values), then zero its output: the zeroing also stops every gradient through that query.
    empty = ignore.all(dim=-1, keepdim=True)  # (B or 1, 1, N or 1, 1)
    keep = ~(ignore & ~empty)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    return out.masked_fill(empty, 0.0)


def _math_attention(q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None, scale: float,
                    causal: bool = False) -> Tensor:
    return torch.einsum("bhnm,bhmd->bhnd", attention_weights(q, k, pad_mask, scale=scale, causal=causal), v)


def attention_weights(q: Tensor, k: Tensor, pad_mask: Tensor | None = None, *, scale: float | None = None,
                      causal: bool = False) -> Tensor:
    """softmax(scale · q kᵀ) over the keys each query may see: (B, H, N, M), 0 for a padded (or, if ``causal``, a
    later) key; a query that sees no key gets a row of zeros. q (B, H, N, D), k (B, H, M, D); ``scale`` defaults to
    1/sqrt(D)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
    ignore = _ignored_keys(pad_mask, causal, q.shape[2], k.shape[2], q.device)
    if ignore is None:
        return scores.softmax(dim=-1)
    # The most negative finite value (not -inf) keeps an all-padding row finite; zeroing the weights afterwards
    # makes its output and gradients exactly zero.
    return scores.masked_fill(ignore, torch.finfo(scores.dtype).min).softmax(dim=-1).masked_fill(ignore, 0.0)


class AttentionCall(NamedTuple):
    """One call of a ``MultiHeadAttention`` recorded by ``record_attention``."""

    name: str  # the module's name in the recorded model (``named_modules()``), e.g. "cross_attention_1.attention"
    weights: Tensor  # (B, H, N, M) softmax weights, detached; 0 for padded keys


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[list[AttentionCall]]:
    """Record the attention weights of every ``MultiHeadAttention`` inside ``model`` during the ``with`` block.

    Yields a list that fills with one ``AttentionCall`` per call, in the order of the calls (a module whose weights
    are shared across repeats records each application). Inside the block these modules compute through the math
    path (the fused kernels never hold the weights), so their outputs agree with the other backends up to rounding;
    their backend setting is ignored. Use it for inspection, not for training: the weights take (B, H, N, M) memory.

        with record_attention(model.encoder) as calls:
            model.encoder(tokens, pad_mask)
        first_cross_attend = calls[0].weights          # (B, heads, latents, tokens)
    """
    calls: list[AttentionCall] = []
    modules = [(name, module) for name, module in model.named_modules() if isinstance(module, MultiHeadAttention)]
    for name, module in modules:
        module._record = lambda weights, name=name: calls.append(AttentionCall(name, weights.detach()))
    try:
        yield calls
    finally:
        for _, module in modules:
            module._record = None


class MultiHeadAttention(Pretrained, nn.Module):
    """Multi-head attention of queries ``x_q`` (B, N, Cq) over keys/values ``x_kv`` (B, M, Ckv).

    Query/key and value channels may differ (Perceiver IO uses narrow qk channels to save compute on long inputs):
    ``num_qk_channels`` defaults to ``num_q_input_channels``, ``num_v_channels`` to ``num_qk_channels``, and the
    output has ``num_output_channels`` (default ``num_q_input_channels``). ``causal=True`` aligns the queries with
    the last keys (see ``attend``).

    ``forward`` is ``attend_heads(project_queries(x_q), *project_keys_values(x_kv), pad_mask)``; the three steps are
    public so that a model can transform the heads in between (rotary positions) or cache keys and values.
    """

    def __init__(
        self,
        *,
        num_heads: int,
        num_q_input_channels: int,
        num_kv_input_channels: int,
        num_qk_channels: int | None = None,
        num_v_channels: int | None = None,
        num_output_channels: int | None = None,
        causal: bool = False,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        num_qk_channels = num_q_input_channels if num_qk_channels is None else num_qk_channels
        num_v_channels = num_qk_channels if num_v_channels is None else num_v_channels
        num_output_channels = num_q_input_channels if num_output_channels is None else num_output_channels
        for name, channels in (("num_qk_channels", num_qk_channels), ("num_v_channels", num_v_channels)):
            if channels % num_heads != 0:
                raise ValueError(f"{name}: expected a multiple of num_heads={num_heads}, got {channels}")
        if backend is not None:
            _check_backend(backend)
        self.num_heads = num_heads
        self.num_q_input_channels = num_q_input_channels
        self.num_kv_input_channels = num_kv_input_channels
        self.causal = causal
        self.backend = backend
        self._record = None  # set by record_attention
        self.q_proj = nn.Linear(num_q_input_channels, num_qk_channels)
        self.k_proj = nn.Linear(num_kv_input_channels, num_qk_channels)
        self.v_proj = nn.Linear(num_kv_input_channels, num_v_channels)
        self.o_proj = nn.Linear(num_v_channels, num_output_channels)

    def forward(self, x_q: Tensor, x_kv: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        _check_channels("x_q", x_q, self.num_q_input_channels)
        _check_channels("x_kv", x_kv, self.num_kv_input_channels)
        if x_q.shape[0] != x_kv.shape[0]:
            raise ValueError(f"x_kv: expected batch size {x_q.shape[0]} (as x_q), got {x_kv.shape[0]}")
        return self.attend_heads(self.project_queries(x_q), *self.project_keys_values(x_kv), pad_mask)

    def project_queries(self, x_q: Tensor) -> Tensor:
        """Query heads (B, H, N, Dqk / H) of ``x_q`` (B, N, Cq)."""
        return rearrange(self.q_proj(x_q), "b n (h d) -> b h n d", h=self.num_heads)

    def project_keys_values(self, x_kv: Tensor) -> tuple[Tensor, Tensor]:
        """Key heads (B, H, M, Dqk / H) and value heads (B, H, M, Dv / H) of ``x_kv`` (B, M, Ckv)."""
        split = "b m (h d) -> b h m d"
        return (rearrange(self.k_proj(x_kv), split, h=self.num_heads),
                rearrange(self.v_proj(x_kv), split, h=self.num_heads))

    def attend_heads(self, q: Tensor, k: Tensor, v: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Attention of projected heads (this module's ``causal`` and backend), merged and projected: (B, N, Cout)."""
        if self._record is None:
            out = attend(q, k, v, pad_mask, causal=self.causal, backend=self.backend)
        else:
            weights = attention_weights(q, k, pad_mask, causal=self.causal)
            self._record(weights)
            out = torch.einsum("bhnm,bhmd->bhnd", weights, v)
        return self.o_proj(rearrange(out, "b h n d -> b n (h d)"))


def _check_channels(name: str, x: Tensor, channels: int) -> None:
    if x.dim() != 3 or x.shape[-1] != channels:
        raise ValueError(f"{name}: expected shape (B, length, {channels}), got {tuple(x.shape)}")
