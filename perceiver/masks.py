"""The one mask convention of the package.

A **pad mask** is a boolean tensor of shape (B, M) that is ``True`` where token ``m`` of sample ``b`` is padding,
that is, where attention must ignore it. ``None`` means that no token of the batch is padding. Every input adapter
returns ``(tokens, pad_mask)`` in this convention, the attention modules accept it as ``pad_mask``, the data
collation produces it, and the decoder's optional query mask uses it for output queries.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pad_mask_from_lengths(lengths: Tensor, max_length: int | None = None) -> Tensor:
    """Pad mask (B, max_length) for samples whose first ``lengths[b]`` tokens are real."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths: expected a 1-D tensor (B,), got shape {tuple(lengths.shape)}")
    if max_length is None:
        max_length = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] >= lengths[:, None]


def pad_mask_from_index(index: Tensor, length: int) -> Tensor:
    """Pad mask (B, length), True at the token positions ``index`` (B, K) of each sample: e.g. tokens to hide.

    Hiding tokens through the pad mask removes them from attention exactly, as if they were never there.
    """
    if index.dim() != 2:
        raise ValueError(f"index: expected a (B, K) tensor of token positions, got shape {tuple(index.shape)}")
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index: expected an int32 or int64 tensor, got {index.dtype}")
    if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < length:
        raise ValueError(f"index: expected positions in [0, {length}), got [{int(index.min())}, {int(index.max())}]")
    mask = torch.zeros(index.shape[0], length, dtype=torch.bool, device=index.device)
    return mask.scatter(1, index.long(), True)


def check_pad_mask(pad_mask: Tensor | None, *shape: int, name: str = "pad_mask", note: str = "") -> None:
    """Raise a clear error unless ``pad_mask`` is None or a bool tensor of ``shape``, e.g. (B, M) or (B, H, W).

    The one check of every pad mask in the package (tokens, input-resolution masks of the adapters, the kernels).
    ``note`` explains the expected shape in the message, e.g. ``" (B and the input's spatial size)"``.
    """
    if pad_mask is None:
        return
    shape = tuple(int(n) for n in shape)
    if not isinstance(pad_mask, Tensor):
        raise TypeError(f"{name}: expected a bool tensor of shape {shape}{note} or None, got {type(pad_mask).__name__}")
    if pad_mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected dtype torch.bool (True = padding), got {pad_mask.dtype}")
    if tuple(pad_mask.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}{note}, got {tuple(pad_mask.shape)}")


def zero_padding(x: Tensor, pad_mask: Tensor | None, *, channel_dim: int | None = None) -> Tensor:
    """``x`` with zeros wherever ``pad_mask`` is True, so that NaN or inf under padding cannot reach real outputs.

    ``torch.where``, not a product: NaN × 0 is NaN. ``pad_mask`` has the shape of ``x`` without ``channel_dim``
    (e.g. (B, H, W) for images (B, C, H, W) with ``channel_dim=1``), or exactly the shape of ``x``.
    """
    if pad_mask is None:
        return x
    mask = pad_mask if channel_dim is None else pad_mask.unsqueeze(channel_dim)
    return torch.where(mask, torch.zeros((), dtype=x.dtype, device=x.device), x)


def merge_pad_masks(masks: list[Tensor | None], lengths: list[int], batch_size: int, device) -> Tensor | None:
    """Concatenate per-part pad masks along the token axis; parts without a mask count as unpadded."""
    if all(mask is None for mask in masks):
        return None
    parts = [
        mask if mask is not None else torch.zeros(batch_size, length, dtype=torch.bool, device=device)
        for mask, length in zip(masks, lengths)
    ]
    return torch.cat(parts, dim=1)
