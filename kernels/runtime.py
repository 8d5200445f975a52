"""How the kernels are launched: autotuned on CUDA, a fixed config under the interpreter; the split-KV heuristic.

``TRITON_INTERPRET=1`` must be set before triton is imported (``triton.jit`` reads it when a kernel is defined), so
the mode is read once, when this module is imported, and the whole package follows that one answer.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, Sequence

import torch
import triton

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Lengths are bucketed to the next power of two, capped: the autotuner re-benchmarks once per bucket, not once per
# input length (a new sequence length must not trigger a new search).
LENGTH_BUCKET_CAP = 65536


def length_bucket(length: int) -> int:
    """The autotune key of a sequence length: the next power of two, at least 16, at most ``LENGTH_BUCKET_CAP``."""
    return min(max(16, triton.next_power_of_2(max(length, 1))), LENGTH_BUCKET_CAP)


def head_dim_block(head_dim: int) -> int:
    """Head dims are padded to a power of two (at least 16, the smallest ``tl.dot`` tile) and masked."""
    return max(16, triton.next_power_of_2(head_dim))


class Launcher:
    """Calls ``kernel[grid](*args, **kwargs)`` with block sizes from an autotuner (CUDA) or a fixed config.

    ``grid`` is a function of the chosen meta-parameters (a dict with e.g. ``BLOCK_N``), as for ``triton.autotune``.
    ``key`` names the kernel arguments the autotuner caches on; pass bucketed lengths there, never raw lengths.
    """

    def __init__(self, kernel, *, configs: Sequence[triton.Config], key: list[str], interpreter_config: dict):
        self.kernel = kernel
        self.configs = list(configs)
        self.key = key
        self.interpreter_config = interpreter_config

    @functools.cached_property
    def _tuned(self):
        return triton.autotune(configs=self.configs, key=self.key)(self.kernel)

    def __call__(self, grid: Callable[[dict], tuple], *args, **kwargs) -> None:
        if INTERPRET:
            meta = dict(self.interpreter_config)
            self.kernel[grid(meta)](*args, **kwargs, **meta)
        else:
            self._tuned[grid](*args, **kwargs)


def configs(candidates: Sequence[tuple[int, int, int, int]]) -> list[triton.Config]:
    """Autotune configs from (BLOCK_N, BLOCK_M, num_warps, num_stages) tuples."""
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=s) for bn, bm, w, s in candidates]


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Without CUDA (the interpreter) there are no SMs to fill: one split unless a caller forces more.
INTERPRETER_NUM_SPLITS = 1
MAX_SPLITS = 128


def num_splits_heuristic(*, num_programs: int, num_sms: int, num_key_blocks: int, max_splits: int = MAX_SPLITS) -> int:
    """How many chunks to split the keys into, as FlashAttention's ``num_splits_heuristic``.

    ``num_programs`` = query blocks x batch x heads, the parallelism without a split. If it already fills 80% of the
    SMs, no split (a split costs a combine pass and fp32 partial outputs). Otherwise, among the split counts that
    change the number of key blocks per chunk, take the smallest whose wave efficiency (waves / ceil(waves), the
    share of the last wave that does work) is within 85% of the best: more splits fill the GPU, fewer cost less.
    """
    if num_programs >= 0.8 * num_sms:
        return 1
    max_splits = max(1, min(max_splits, num_sms, num_key_blocks))

    def eligible(splits: int) -> bool:
        # Splits that leave the chunk size unchanged only add empty chunks.
        return splits == 1 or math.ceil(num_key_blocks / splits) != math.ceil(num_key_blocks / (splits - 1))

    def efficiency(splits: int) -> float:
        waves = num_programs * splits / num_sms
        return waves / math.ceil(waves)

    best = max(efficiency(s) for s in range(1, max_splits + 1) if eligible(s))
    for splits in range(1, max_splits + 1):
        if eligible(splits) and efficiency(splits) >= 0.85 * best:
            return splits
    return 1


def choose_num_splits(device: torch.device, *, num_programs: int, num_key_blocks: int) -> int:
    """The split count for a launch on ``device``: the heuristic on CUDA, ``INTERPRETER_NUM_SPLITS`` elsewhere."""
    if device.type != "cuda":
        return INTERPRETER_NUM_SPLITS
    return num_splits_heuristic(
        num_programs=num_programs,
        num_sms=multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device()),
        num_key_blocks=num_key_blocks,
    )
