"""Decoded samples → one batch: stack images, pad audio and text to the longest and return their pad masks.

Masks follow the package convention: True where the entry is padding.
"""

from __future__ import annotations

import numpy as np
import torch

from perceiver.adapters.text import PAD_ID


def pad_sequences(sequences: list[np.ndarray], pad_value, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D arrays → (B, L) padded with ``pad_value`` and the (B, L) pad mask, L = the longest (at least 1)."""
    length = max(1, max(len(sequence) for sequence in sequences))
    padded = torch.full((len(sequences), length), pad_value, dtype=dtype)
    pad_mask = torch.ones((len(sequences), length), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.from_numpy(np.array(sequence)).to(dtype)  # a copy: inputs may be read-only
        pad_mask[row, : len(sequence)] = False
    return padded, pad_mask


def collate(samples: list[dict], *, corrupt: int = 0) -> dict:
    """Samples with fields ``image`` (C, H, W), ``audio`` (T,), ``text`` (L,) uint8, ``label``, ``meta``, ``key``.

    Returns a dict with the fields the samples have, plus ``corrupt`` (the count given). A field some samples lack
    cannot be batched and raises, naming the keys without it (except ``meta``, given as ``{}``).
    """
    if not samples:
        raise ValueError("samples: expected at least one sample to collate, got an empty list")
    keys = [sample["key"] for sample in samples]
    batch: dict = {"key": keys, "corrupt": int(corrupt)}
    for field in ("image", "audio", "text", "label", "meta"):
        present = [field in sample for sample in samples]
        if not any(present):
            continue
        if field == "meta":  # metadata is optional per sample
            batch["meta"] = [sample.get("meta", {}) for sample in samples]
            continue
        if not all(present):
            missing = [key for key, has in zip(keys, present) if not has]
            raise ValueError(f"samples: field {field!r} is missing from {missing[:5]} but present in others")
        values = [sample[field] for sample in samples]
        if field == "image":
            shapes = {value.shape for value in values}
            if len(shapes) != 1:
                raise ValueError(f"samples: images must share one (C, H, W) shape to be stacked, got {sorted(shapes)}")
            batch["image"] = torch.from_numpy(np.stack(values)).float()
        elif field == "audio":
            batch["audio"], batch["audio_pad_mask"] = pad_sequences(values, 0.0, torch.float32)
        elif field == "text":
            batch["text"], batch["text_pad_mask"] = pad_sequences(values, PAD_ID, torch.int64)
        else:
            batch["label"] = torch.tensor(values, dtype=torch.int64)
    return batch
