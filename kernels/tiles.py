"""Tile addressing, masks and loop bounds shared by the forward and backward kernels.

Every kernel works on tiles of one (batch, head): rows of queries or keys by a (padded) head dim. These helpers are
the only place where a tile's pointers, its padding and causal mask, and the key or query range that a block has to
visit are computed, so the forward and the backward always agree on which (query, key) pairs take part.

Causal masks align the queries with the *last* N of the M keys: query i sees key j iff j ≤ i + M − N. With N > M the
first N − M queries see no key at all (output 0, like a query whose keys are all padding).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def batch_and_head(bh, num_heads):
    """The batch and head of program axis ``bh`` (= batch · heads + head), as 64-bit ints.

    64-bit offsets: B·H·M·Dh passes 2^31 at Perceiver input lengths.
    """
    return (bh // num_heads).to(tl.int64), (bh % num_heads).to(tl.int64)


@triton.jit
def load_rows(base, offs_rows, offs_d, stride_row, stride_d, row_valid, d_valid):
    """The (rows × BLOCK_D) tile at ``base`` + row · stride_row + d · stride_d; 0 outside the valid rows and dims."""
    ptrs = base + offs_rows.to(tl.int64)[:, None] * stride_row + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=row_valid[:, None] & d_valid[None, :], other=0.0)


@triton.jit
def store_rows(base, value, offs_rows, offs_d, stride_row, stride_d, row_valid, d_valid):
    """Store a (rows × BLOCK_D) tile where ``load_rows`` reads one, cast to the buffer's dtype (valid rows, dims)."""
    ptrs = base + offs_rows.to(tl.int64)[:, None] * stride_row + offs_d[None, :] * stride_d
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=row_valid[:, None] & d_valid[None, :])


@triton.jit
def key_keep(PadMask, b, offs_m, m_valid, stride_mask_b, stride_mask_m, HAS_MASK: tl.constexpr):
    """Per key of a block: True where the key exists (``m_valid``) and is not padding."""
    keep = m_valid
    if HAS_MASK:
        padding = tl.load(PadMask + b * stride_mask_b + offs_m.to(tl.int64) * stride_mask_m, mask=m_valid, other=1)
        keep = keep & (padding == 0)
    return keep


@triton.jit
def visible(offs_q, offs_k, keep, N, M, CAUSAL: tl.constexpr):
    """Which (query, key) pairs of a tile take part: the key is kept (``key_keep``) and, if causal, j ≤ i + M − N.

    ``offs_q`` and ``offs_k`` come already broadcast to the tile's orientation (``[:, None]`` and ``[None, :]`` for a
    (queries × keys) tile, the other way round for a transposed one), and ``keep`` like ``offs_k``.
    """
    if CAUSAL:
        keep = keep & (offs_k <= offs_q + (M - N))
    return keep


@triton.jit
def split_range(split, NUM_SPLITS, M, BLOCK_M: tl.constexpr):
    """Keys [start, end) of chunk ``split`` of the split-KV: whole key blocks, so every chunk but the last is full."""
    blocks_per_split = tl.cdiv(tl.cdiv(M, BLOCK_M), NUM_SPLITS)
    start = split * blocks_per_split * BLOCK_M
    end = tl.minimum(start + blocks_per_split * BLOCK_M, M)
    return start, end


@triton.jit
def causal_key_end(query_start, end, N, M, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Where a query block's walk over the keys stops: at ``end``, or (causal) after the last key its last query sees.

    The key blocks past it are wholly masked for the block and are not visited; the result may lie at or below the
    chunk's start, and then the chunk has nothing to do for these queries.
    """
    if CAUSAL:
        end = tl.minimum(end, tl.minimum(query_start + BLOCK_N, N) + (M - N))
    return end


@triton.jit
def causal_query_start(key_start, N, M, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Where a key block's walk over the queries starts: 0, or (causal) the query block of the first query that sees
    its first key (i ≥ j − M + N). Earlier query blocks are wholly masked for these keys and are not visited."""
    start = key_start * 0
    if CAUSAL:
        start = tl.maximum(key_start - (M - N), 0) // BLOCK_N * BLOCK_N
    return start
