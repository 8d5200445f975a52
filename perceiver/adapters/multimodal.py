"""Several named input adapters → one token sequence, tagged by modality."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter
from perceiver.config import build_module, capture_config
from perceiver.masks import merge_pad_masks

PRESENT_SUFFIX = "_present"


def blank_absent(value, present: Tensor):
    """``value`` with zeros for the samples that lack it (``present`` False), if it is a floating-point tensor.

    An absent modality's placeholder may hold anything, NaN and inf included; its tokens are masked, but a masked
    NaN still turns attention's weighted sum (0 × NaN) and the gradients into NaN. ``torch.where`` keeps it out.
    Integer inputs (e.g. byte ids) cannot hold NaN and are returned as they are, as is anything whose batch size
    does not match (the caller's checks report it).
    """
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() == 0:
        return value
    if not isinstance(present, Tensor) or present.dtype != torch.bool or tuple(present.shape) != (value.shape[0],):
        return value
    keep = present.reshape(-1, *([1] * (value.dim() - 1)))
    return torch.where(keep, value, torch.zeros((), dtype=value.dtype, device=value.device))
def presence_flag(x: dict, name: str, batch_size: int) -> Tensor | None:
    """``x[f"{name}_present"]``, checked: a bool tensor (B,), False where a sample lacks modality ``name``; None when
    ``x`` has no such flag (every sample that has the modality's input has it). Shared by every module that takes
    several modalities (``MultimodalAdapter``, the fusion classifiers)."""
    key = name + PRESENT_SUFFIX
    present = x.get(key)
    if present is None:
        return None
    if not isinstance(present, Tensor) or present.dtype != torch.bool:
        got = present.dtype if isinstance(present, Tensor) else type(present).__name__
        raise TypeError(f"x[{key!r}]: expected a torch.bool tensor ({batch_size},), got {got}")
    if tuple(present.shape) != (batch_size,):
        raise ValueError(f"x[{key!r}]: expected shape ({batch_size},), got {tuple(present.shape)}")
    return present


class MultimodalAdapter(InputAdapter):
    """A dict of named adapters whose tokens are concatenated, in the order of ``adapters``, into (B, M, C).

    Each modality's tokens are padded to the common width ``num_channels`` by appending zero channels, then its
    learned modality embedding (C channels) is added, so the encoder can tell modalities apart.

    Input ``x`` is a dict ``{name: that adapter's input}``; ``pad_masks`` is None or a dict ``{name: that adapter's
    pad mask}`` (the keyword ``pad_mask`` is still accepted for it). Missing modalities:

    - a name absent from ``x``: the whole batch lacks that modality; it contributes no tokens at all;
    - ``x[f"{name}_present"]``, a bool tensor (B,): samples marked False lack the modality; their tokens of it
      (whatever the placeholder input was) are all masked as padding.

    Args:
        adapters: ``{name: adapter}``; an adapter may also be given as its spec ``{"type": ..., "config": ...}``
            (``perceiver.config.module_spec``).
        num_channels: common token width; defaults to the widest adapter's ``num_channels``.
        init_scale: standard deviation of the modality embeddings' initialisation (``init_std`` in configs stored
            before the rename still loads).
    """

    def __init__(self, *, adapters: dict, num_channels: int | None = None, init_scale: float = 0.02):
        super().__init__()
        self.config = capture_config(locals())
        if not isinstance(adapters, dict) or not adapters:
            raise ValueError(f"adapters: expected a non-empty dict {{name: adapter}}, got {adapters!r:.80}")
        modules = {}
        for name, adapter in adapters.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"adapters: expected identifier names, got {name!r}")
            modules[name] = adapter if isinstance(adapter, nn.Module) else build_module(adapter)
            if not isinstance(modules[name], InputAdapter):
                raise TypeError(f"adapters[{name!r}]: expected an InputAdapter, got {type(modules[name]).__name__}")
        self.adapters = nn.ModuleDict(modules)
        widest = max(adapter.num_channels for adapter in modules.values())
        if num_channels is None:
            num_channels = widest
        if num_channels < widest:
            raise ValueError(f"num_channels: expected at least the widest adapter's {widest}, got {num_channels}")
        self.num_channels = num_channels
        self.modality_embedding = nn.Parameter(torch.randn(len(modules), num_channels) * init_scale)

    @property
    def modalities(self) -> list[str]:
        return list(self.adapters.keys())

    def check_keys(self, x, pad_masks) -> None:
        if not isinstance(x, dict):
            raise TypeError(
                f"x: expected a dict {{modality: input}} with modalities {self.modalities}, got {type(x).__name__}"
            )
        allowed = set(self.modalities) | {name + PRESENT_SUFFIX for name in self.modalities}
        unknown = sorted(set(x) - allowed)
        if unknown:
            raise ValueError(f"x: expected keys among {sorted(allowed)}, got unknown {unknown}")
        if not any(name in x for name in self.modalities):
            raise ValueError(f"x: expected at least one of the modalities {self.modalities}, got keys {sorted(x)}")
        if pad_masks is not None:
            if not isinstance(pad_masks, dict):
                raise TypeError(
                    f"pad_masks: expected None or a dict {{modality: pad mask}}, got {type(pad_masks).__name__}"
                )
            unknown = sorted(set(pad_masks) - set(self.modalities))
            if unknown:
                raise ValueError(f"pad_masks: expected keys among {self.modalities}, got unknown {unknown}")

    def forward(
        self, x: dict[str, Tensor], pad_masks: dict[str, Tensor | None] | None = None, *,
        pad_mask: dict[str, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if pad_mask is not None:  # the keyword's former name
            if pad_masks is not None:
                raise TypeError("pad_masks, pad_mask: expected one of them (pad_mask is its former name), got both")
            pad_masks = pad_mask
        self.check_keys(x, pad_masks)
        pad_masks = pad_masks or {}
        batch_size = None
        all_tokens, all_masks = [], []
        for index, name in enumerate(self.modalities):
            if name not in x:
                continue
            present = x.get(name + PRESENT_SUFFIX)  # checked below, once the batch size is known
            value = x[name] if present is None else blank_absent(x[name], present)
            tokens, mask = self.adapters[name](value, pad_masks.get(name))
            if batch_size is None:
                batch_size = tokens.shape[0]
            elif tokens.shape[0] != batch_size:
                raise ValueError(
                    f"x[{name!r}]: expected batch size {batch_size} like the modalities before, got {tokens.shape[0]}"
                )
            tokens = nn.functional.pad(tokens, (0, self.num_channels - tokens.shape[-1]))
            tokens = tokens + self.modality_embedding[index].to(tokens.dtype)
            present = presence_flag(x, name, batch_size)
            if present is not None:
                absent = ~present[:, None].expand(-1, tokens.shape[1])
                mask = absent if mask is None else mask | absent
            all_tokens.append(tokens)
            all_masks.append(mask)
        lengths = [tokens.shape[1] for tokens in all_tokens]
        merged = merge_pad_masks(all_masks, lengths, batch_size, all_tokens[0].device)
        return torch.cat(all_tokens, dim=1), merged
