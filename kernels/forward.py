"""Forward kernels: fused attention with online softmax over one chunk of keys, and the log-sum-exp combine of chunks.

For one block of queries, the kernel walks the keys of its chunk a block at a time and keeps, per query, in fp32:
the running max ``m`` of the scores, the running sum ``l`` of exp(score - m) and the running output ``acc``. When a new
block raises the max to ``m'``, the old sum and output are rescaled by exp(m - m'). The output is ``acc / l`` and the
log-sum-exp ``m + log(l)`` is saved for the backward. Scores are kept in base 2 (scale · log2(e) folded into one
factor) so that every exponential is an ``exp2``; the saved LSE is therefore in base 2 as well.

Split-KV: with S > 1 chunks, each (query block, batch·head, chunk) program writes an fp32 partial output and its LSE;
``_combine_splits_kernel`` merges them with weights 2^(lse_s - lse_total). A chunk with no unmasked key (empty, or
all padding) has LSE = -inf and weight 0; a query with no unmasked key at all gets output 0 and LSE = -inf.

Causal (queries aligned with the last N keys, query i sees key j iff j ≤ i + M - N): a query block stops its walk
after the last key that its last query sees (``tiles.causal_key_end``), so the key blocks wholly after it are never
loaded, and a chunk that lies wholly after it does no work and writes LSE = -inf (weight 0 in the combine). Within the
blocks it visits, the causal mask is applied with the padding (``tiles.visible``). The first N - M queries of N > M
see no key: output 0, LSE = -inf.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import Launcher, choose_num_splits, configs, head_dim_block, length_bucket
from .tiles import batch_and_head, causal_key_end, key_keep, load_rows, split_range, store_rows, visible

# Block sizes used to estimate the grid for the split heuristic (the autotuner may pick others).
NOMINAL_BLOCK_N = 128
NOMINAL_BLOCK_M = 64
COMBINE_BLOCK_N = 16


@triton.jit
def _attention_forward_kernel(
    Q, K, V, PadMask, Out, Lse,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_mask_b, stride_mask_m,
    stride_o_split, stride_o_bh, stride_o_n, stride_o_d,
    stride_lse_split, stride_lse_bh,
    num_heads, N, M, scale_log2,
    N_BUCKET, M_BUCKET, NUM_SPLITS,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # Axis 0 (query blocks) varies fastest, so programs that run together share one (batch, head): its K/V tiles
    # are read from L2 by all of them.
    query_block = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b, h = batch_and_head(bh, num_heads)

    offs_n = query_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < N
    d_valid = offs_d < HEAD_DIM
    q = load_rows(Q + b * stride_qb + h * stride_qh, offs_n, offs_d, stride_qn, stride_qd, n_valid, d_valid)

    # This program's chunk of keys, cut short (causal) after the last key that its last query sees.
    start, end = split_range(split, NUM_SPLITS, M, BLOCK_M)
    loop_end = causal_key_end(query_block * BLOCK_N, end, N, M, BLOCK_N, CAUSAL)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(start, loop_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < end
        k = load_rows(k_base, offs_m, offs_d, stride_km, stride_kd, m_valid, d_valid)
        v = load_rows(v_base, offs_m, offs_d, stride_vm, stride_vd, m_valid, d_valid)
        keep = key_keep(PadMask, b, offs_m, m_valid, stride_mask_b, stride_mask_m, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(visible(offs_n[:, None], offs_m[None, :], keep[None, :], N, M, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # While a row has seen only masked keys its max is -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    store_rows(Out + split.to(tl.int64) * stride_o_split + bh.to(tl.int64) * stride_o_bh, out, offs_n, offs_d,
               stride_o_n, stride_o_d, n_valid, d_valid)
    tl.store(Lse + split.to(tl.int64) * stride_lse_split + bh.to(tl.int64) * stride_lse_bh + offs_n, lse, mask=n_valid)


@triton.jit
def _combine_splits_kernel(
    Partial, PartialLse, Out, Lse,
    stride_p_split, stride_p_bh, stride_p_n,
    stride_pl_split, stride_pl_bh,
    stride_o_bh, stride_o_n,
    stride_lse_bh,
    N, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out = Σ_s 2^(lse_s - lse) · o_s with lse = log2 Σ_s 2^lse_s, summed in split order (deterministic)."""
    query_block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_n = query_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < N
    d_valid = offs_d < HEAD_DIM

    lse_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    for split in range(0, num_splits):
        lse_s = tl.load(PartialLse + split * stride_pl_split + bh * stride_pl_bh + offs_n, mask=n_valid, other=float("-inf"))
        lse_max = tl.maximum(lse_max, lse_s)
    lse_max_safe = tl.where(lse_max == float("-inf"), 0.0, lse_max)

    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for split in range(0, num_splits):
        lse_s = tl.load(PartialLse + split * stride_pl_split + bh * stride_pl_bh + offs_n, mask=n_valid, other=float("-inf"))
        # 0 for a chunk with no visible unmasked key for this query: empty, all padding, or (causal) all after it.
        weight = tl.math.exp2(lse_s - lse_max_safe)
        o_s = load_rows(Partial + split * stride_p_split + bh * stride_p_bh, offs_n, offs_d, stride_p_n, 1,
                        n_valid, d_valid)
        total += weight
        acc += weight[:, None] * o_s

    has_keys = total > 0.0
    out = acc / tl.where(has_keys, total, 1.0)[:, None]
    lse = tl.where(has_keys, lse_max_safe + tl.math.log2(tl.where(has_keys, total, 1.0)), float("-inf"))
    store_rows(Out + bh * stride_o_bh, out, offs_n, offs_d, stride_o_n, 1, n_valid, d_valid)
    tl.store(Lse + bh * stride_lse_bh + offs_n, lse, mask=n_valid)


_forward = Launcher(
    _attention_forward_kernel,
    # Chosen from the register and shared-memory use of each candidate compiled for sm_90 (bf16/fp16, Dh 64 and
    # 128): the ones kept do not spill at Dh = 64; larger tiles stay for Dh <= 64 to pick when they fit.
    configs=configs([
        (128, 64, 8, 3), (128, 64, 4, 3), (128, 64, 8, 2), (128, 128, 8, 2),
        (64, 64, 4, 3), (64, 64, 8, 3), (64, 64, 4, 2), (64, 128, 4, 3),
    ]),
    key=["N_BUCKET", "M_BUCKET", "NUM_SPLITS", "HAS_MASK", "CAUSAL", "HEAD_DIM", "DOT_PRECISION"],
    interpreter_config={"BLOCK_N": 16, "BLOCK_M": 16},
)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get full-precision dots (not TF32): fp32 callers expect fp32 accuracy."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_forward(
    q, k, v, pad_mask, scale: float, num_splits: int | None, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. Returns out (B, H, N, Dh) in q's dtype and the base-2 LSE (B·H, N) in fp32.

    Inputs are assumed checked (``interface.check_inputs``); they may be strided.
    """
    batch, heads, n, head_dim = q.shape
    m = k.shape[2]
    out = torch.empty((batch, heads, n, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch * heads, n), dtype=torch.float32, device=q.device)
    if num_splits is None:
        num_splits = choose_num_splits(
            q.device,
            num_programs=triton.cdiv(n, NOMINAL_BLOCK_N) * batch * heads,
            num_key_blocks=triton.cdiv(m, NOMINAL_BLOCK_M),
        )
    block_d = head_dim_block(head_dim)
    mask_arg = q if pad_mask is None else pad_mask.view(torch.uint8)
    mask_strides = (0, 0) if pad_mask is None else pad_mask.stride()
    if num_splits == 1:
        o_target, lse_target = out, lse
        o_strides = (0, n * head_dim, head_dim, 1)
        lse_strides = (0, n)
    else:
        o_target = torch.empty((num_splits, batch * heads, n, head_dim), dtype=torch.float32, device=q.device)
        lse_target = torch.empty((num_splits, batch * heads, n), dtype=torch.float32, device=q.device)
        o_strides = o_target.stride()
        lse_strides = lse_target.stride()[:2]

    _forward(
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), batch * heads, num_splits),
        q, k, v, mask_arg, o_target, lse_target,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *o_strides, *lse_strides,
        heads, n, m, scale * 1.4426950408889634,
        length_bucket(n), length_bucket(m), num_splits,
        HAS_MASK=pad_mask is not None, CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=block_d,
        DOT_PRECISION=dot_precision(q.dtype),
    )
    if num_splits > 1:
        _combine_splits_kernel[(triton.cdiv(n, COMBINE_BLOCK_N), batch * heads)](
            o_target, lse_target, out, lse,
            *o_target.stride()[:3], *lse_target.stride()[:2],
            n * head_dim, head_dim, lse.stride(0),
            n, num_splits,
            HEAD_DIM=head_dim, BLOCK_N=COMBINE_BLOCK_N, BLOCK_D=block_d,
        )
    return out, lse
