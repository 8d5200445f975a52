"""Backward kernels: deterministic, without atomics.

With P = softmax(S), S = scale · q kᵀ, and the saved LSE, every kernel recomputes P = exp2(S·log2(e) - lse) tile by
tile (no N × M buffer):

- preprocess: D = rowsum(dO ∘ O), one value per query;
- dK/dV, one program per key block (and batch·head), looping over all queries:
  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ - D),  dK = scale · dSᵀ Q;
- dQ, one program per (query block, batch·head, key chunk): dQ_s = scale · dS K over the chunk's keys, written as an
  fp32 partial; a last pass sums the partials in chunk order. Each output element has exactly one writer, so two runs
  give bit-identical gradients.

A padded key has P = 0 and so zero dK and dV; a query with no unmasked key has LSE = -inf, which the kernels read as
+inf so that its P row is 0 and its dQ (and its share of dK, dV) is 0, never NaN.

Causal: the kernels mask exactly the (query, key) pairs the forward masked (``tiles.visible``) and skip the same
blocks: dQ stops at the key where the forward stopped (``tiles.causal_key_end``), and a key block starts its walk at
the query block of the first query that sees it (``tiles.causal_query_start``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .forward import NOMINAL_BLOCK_M, dot_precision
from .runtime import INTERPRET, Launcher, choose_num_splits, configs, head_dim_block, length_bucket
from .tiles import (
    batch_and_head, causal_key_end, causal_query_start, key_keep, load_rows, split_range, store_rows, visible,
)

PREPROCESS_BLOCK_N = 16 if INTERPRET else 64
REDUCE_BLOCK = 256 if INTERPRET else 1024
NOMINAL_DQ_BLOCK_N = 64


@triton.jit
def _preprocess_kernel(
    Out, dOut, Delta,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    num_heads, N,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    query_block = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = batch_and_head(bh, num_heads)
    offs_n = query_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < N
    d_valid = offs_d < HEAD_DIM
    o = load_rows(Out + b * stride_ob + h * stride_oh, offs_n, offs_d, stride_on, stride_od, n_valid, d_valid)
    do = load_rows(dOut + b * stride_dob + h * stride_doh, offs_n, offs_d, stride_don, stride_dod, n_valid, d_valid)
    tl.store(Delta + bh.to(tl.int64) * N + offs_n, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=n_valid)


@triton.jit
def _query_stats(Lse, Delta, bh64, offs_n, n_valid, N):
    """The saved LSE and D of a block of queries. A query with no visible key (LSE = -inf) reads LSE = +inf, so
    that its row of P = exp2(S - LSE) is 0 and it adds nothing to any gradient."""
    lse = tl.load(Lse + bh64 * N + offs_n, mask=n_valid, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(Delta + bh64 * N + offs_n, mask=n_valid, other=0.0)
    return lse, delta


@triton.jit
def _dkdv_kernel(
    Q, K, V, PadMask, dOut, Lse, Delta, dK, dV,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_mask_b, stride_mask_m,
    stride_dob, stride_doh, stride_don, stride_dod,
    num_heads, N, M, scale, scale_log2,
    N_BUCKET, M_BUCKET,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    key_block = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = batch_and_head(bh, num_heads)
    bh64 = bh.to(tl.int64)

    offs_m = key_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < M
    d_valid = offs_d < HEAD_DIM
    k = load_rows(K + b * stride_kb + h * stride_kh, offs_m, offs_d, stride_km, stride_kd, m_valid, d_valid)
    v = load_rows(V + b * stride_vb + h * stride_vh, offs_m, offs_d, stride_vm, stride_vd, m_valid, d_valid)
    keep = key_keep(PadMask, b, offs_m, m_valid, stride_mask_b, stride_mask_m, HAS_MASK)
    # Causal: the query blocks before the first one that sees this block's first key are not visited. A block of
    # keys that are all padding gets zero gradients without reading any query.
    n_start = causal_query_start(key_block * BLOCK_M, N, M, BLOCK_N, CAUSAL)
    n_end = tl.where(tl.max(keep.to(tl.int32), 0) > 0, N, 0)

    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = dOut + b * stride_dob + h * stride_doh
    for start_n in range(n_start, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        q = load_rows(q_base, offs_n, offs_d, stride_qn, stride_qd, n_valid, d_valid)
        do = load_rows(do_base, offs_n, offs_d, stride_don, stride_dod, n_valid, d_valid)
        lse, delta = _query_stats(Lse, Delta, bh64, offs_n, n_valid, N)

        # The tile is transposed (keys × queries), so the query and key offsets are broadcast the other way round.
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * scale_log2
        p_t = tl.where(visible(offs_n[None, :], offs_m[:, None], keep[:, None], N, M, CAUSAL),
                       tl.math.exp2(s_t - lse[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    store_rows(dK + bh64 * M * HEAD_DIM, dk * scale, offs_m, offs_d, HEAD_DIM, 1, m_valid, d_valid)
    store_rows(dV + bh64 * M * HEAD_DIM, dv, offs_m, offs_d, HEAD_DIM, 1, m_valid, d_valid)


@triton.jit
def _dq_kernel(
    Q, K, V, PadMask, dOut, Lse, Delta, dQ,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_mask_b, stride_mask_m,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dq_split,
    num_heads, N, M, scale, scale_log2,
    N_BUCKET, M_BUCKET, NUM_SPLITS,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    query_block = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b, h = batch_and_head(bh, num_heads)
    bh64 = bh.to(tl.int64)

    offs_n = query_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < N
    d_valid = offs_d < HEAD_DIM
    q = load_rows(Q + b * stride_qb + h * stride_qh, offs_n, offs_d, stride_qn, stride_qd, n_valid, d_valid)
    do = load_rows(dOut + b * stride_dob + h * stride_doh, offs_n, offs_d, stride_don, stride_dod, n_valid, d_valid)
    lse, delta = _query_stats(Lse, Delta, bh64, offs_n, n_valid, N)

    # The same chunk and the same causal stop as the forward: a chunk wholly after these queries leaves dQ_s = 0.
    start, end = split_range(split, NUM_SPLITS, M, BLOCK_M)
    loop_end = causal_key_end(query_block * BLOCK_N, end, N, M, BLOCK_N, CAUSAL)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(start, loop_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < end
        k = load_rows(k_base, offs_m, offs_d, stride_km, stride_kd, m_valid, d_valid)
        v = load_rows(v_base, offs_m, offs_d, stride_vm, stride_vd, m_valid, d_valid)
        keep = key_keep(PadMask, b, offs_m, m_valid, stride_mask_b, stride_mask_m, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        p = tl.where(visible(offs_n[:, None], offs_m[None, :], keep[None, :], N, M, CAUSAL),
                     tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    store_rows(dQ + split.to(tl.int64) * stride_dq_split + bh64 * N * HEAD_DIM, dq * scale, offs_n, offs_d, HEAD_DIM, 1,
               n_valid, d_valid)


@triton.jit
def _sum_splits_kernel(Partial, Out, numel, num_splits, BLOCK: tl.constexpr):
    """Out = Σ_s Partial[s], added in split order: the same order, hence the same bits, on every run."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for split in range(0, num_splits):
        acc += tl.load(Partial + split * numel + offs, mask=valid, other=0.0)
    tl.store(Out + offs, acc.to(Out.dtype.element_ty), mask=valid)


# Candidates that do not spill registers when compiled for sm_90 at Dh = 64 (most also at 128).
_DKDV_CONFIGS = configs([
    (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 64, 8, 3),
    (32, 64, 4, 2), (32, 64, 4, 3), (32, 64, 8, 3), (64, 128, 8, 2),
])
_DQ_CONFIGS = configs([
    (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (128, 64, 8, 2),
    (128, 64, 8, 3), (32, 64, 4, 3), (32, 64, 8, 2), (64, 128, 4, 2),
])
_INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_M": 16}
_dkdv = Launcher(
    _dkdv_kernel, configs=_DKDV_CONFIGS,
    key=["N_BUCKET", "M_BUCKET", "HAS_MASK", "CAUSAL", "HEAD_DIM", "DOT_PRECISION"],
    interpreter_config=_INTERPRETER_CONFIG,
)
_dq = Launcher(
    _dq_kernel, configs=_DQ_CONFIGS,
    key=["N_BUCKET", "M_BUCKET", "NUM_SPLITS", "HAS_MASK", "CAUSAL", "HEAD_DIM", "DOT_PRECISION"],
    interpreter_config=_INTERPRETER_CONFIG,
)


def attention_backward(q, k, v, pad_mask, out, lse, d_out, scale: float, num_splits: int | None, causal: bool = False):
    """Gradients (dq, dk, dv), contiguous, in the inputs' dtype. ``lse`` is the forward's base-2 LSE (B·H, N)."""
    batch, heads, n, head_dim = q.shape
    m = k.shape[2]
    device = q.device
    block_d = head_dim_block(head_dim)
    delta = torch.empty((batch * heads, n), dtype=torch.float32, device=device)
    _preprocess_kernel[(triton.cdiv(n, PREPROCESS_BLOCK_N), batch * heads)](
        out, d_out, delta, *out.stride(), *d_out.stride(), heads, n,
        HEAD_DIM=head_dim, BLOCK_N=PREPROCESS_BLOCK_N, BLOCK_D=block_d,
    )

    mask_arg = q if pad_mask is None else pad_mask.view(torch.uint8)
    mask_strides = (0, 0) if pad_mask is None else pad_mask.stride()
    common = dict(HAS_MASK=pad_mask is not None, CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=block_d,
                  DOT_PRECISION=dot_precision(q.dtype))
    strides = (*q.stride(), *k.stride(), *v.stride(), *mask_strides, *d_out.stride())
    scale_log2 = scale * 1.4426950408889634

    dk = torch.empty((batch, heads, m, head_dim), dtype=q.dtype, device=device)
    dv = torch.empty_like(dk)
    _dkdv(
        lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), batch * heads),
        q, k, v, mask_arg, d_out, lse, delta, dk, dv, *strides,
        heads, n, m, scale, scale_log2, length_bucket(n), length_bucket(m), **common,
    )

    if num_splits is None:
        num_splits = choose_num_splits(
            device,
            num_programs=triton.cdiv(n, NOMINAL_DQ_BLOCK_N) * batch * heads,
            num_key_blocks=triton.cdiv(m, NOMINAL_BLOCK_M),
        )
    dq = torch.empty((batch, heads, n, head_dim), dtype=q.dtype, device=device)
    dq_target = dq if num_splits == 1 else torch.empty(
        (num_splits, batch, heads, n, head_dim), dtype=torch.float32, device=device
    )
    _dq(
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), batch * heads, num_splits),
        q, k, v, mask_arg, d_out, lse, delta, dq_target, *strides, dq.numel(),
        heads, n, m, scale, scale_log2, length_bucket(n), length_bucket(m), num_splits, **common,
    )
    if num_splits > 1:
        _sum_splits_kernel[(triton.cdiv(dq.numel(), REDUCE_BLOCK),)](dq_target, dq, dq.numel(), num_splits, BLOCK=REDUCE_BLOCK)
    return dq, dk, dv
