"""Classification: one learned output query, and a linear map of its decoded vector to class logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.base import OutputAdapter, QueryProvider
from perceiver.adapters.checks import check_tensor


class ClassificationQuery(QueryProvider):
    """One learned query (B, 1, num_channels) per sample; no query mask. Takes no query arguments."""

    def __init__(self, *, num_channels: int = 256, init_std: float = 0.02):
        super().__init__()
        self.config = dict(num_channels=num_channels, init_std=init_std)
        self.num_channels = num_channels
        self.query = nn.Parameter(torch.randn(1, 1, num_channels) * init_std)

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, None]:
        check_tensor(tokens, "tokens", kind="float", rank=3, layout="(B, M, C)")
        return self.query.expand(tokens.shape[0], -1, -1), None


class ClassificationOutput(OutputAdapter):
    """Decoded query (B, 1, num_channels) → logits (B, num_classes)."""

    def __init__(self, *, num_channels: int = 256, num_classes: int = 10):
        super().__init__()
        self.config = dict(num_channels=num_channels, num_classes=num_classes)
        self.num_channels = num_channels
        self.linear = nn.Linear(num_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", kind="float", rank=3, layout=f"(B, 1, {self.num_channels})")
        if x.shape[1:] != (1, self.num_channels):
            raise ValueError(f"x: expected shape (B, 1, {self.num_channels}), got {tuple(x.shape)}")
        return self.linear(x[:, 0])
