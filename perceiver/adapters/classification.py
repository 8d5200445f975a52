"""Classes on both sides of the model: a class label as an input token, and one learned output query whose decoded
vector a linear map turns into class logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter, OutputAdapter, QueryProvider
from perceiver.adapters.checks import check_tensor
from perceiver.config import capture_config


class ClassificationQuery(QueryProvider):
    """One learned query (B, 1, num_channels) per sample, initialised N(0, init_scale²); no query mask. Takes no query
    arguments."""

    def __init__(self, *, num_channels: int = 256, init_scale: float = 0.02):
        super().__init__()
        self.config = capture_config(locals())
        self.num_channels = num_channels
        self.query = nn.Parameter(torch.randn(1, 1, num_channels) * init_scale)

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, None]:
        check_tensor(tokens, "tokens", kind="float", rank=3, layout="(B, M, C)")
        return self.query.expand(tokens.shape[0], -1, -1), None


class ClassificationOutput(OutputAdapter):
    """Decoded query (B, 1, num_channels) → logits (B, num_classes)."""

    def __init__(self, *, num_channels: int = 256, num_classes: int = 10):
        super().__init__()
        self.config = capture_config(locals())
        self.num_channels = num_channels
        self.linear = nn.Linear(num_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", kind="float", rank=3, layout=f"(B, 1, {self.num_channels})")
        if x.shape[1:] != (1, self.num_channels):
            raise ValueError(f"x: expected shape (B, 1, {self.num_channels}), got {tuple(x.shape)}")
        return self.linear(x[:, 0])


class LabelAdapter(InputAdapter):
    """Class labels (B,) → one learned token per sample (B, 1, num_channels); no padding.

    Lets a label be one more modality of a ``MultimodalAdapter`` (e.g. an autoencoder over image, audio and label),
    which can then be dropped like any other. The embedding is initialised N(0, init_scale²).
    """

    def __init__(self, *, num_classes: int = 10, num_channels: int = 64, init_scale: float = 0.02):
        super().__init__()
        self.config = capture_config(locals())
        if num_classes < 1 or num_channels < 1:
            raise ValueError(f"num_classes, num_channels: expected positive ints, got {num_classes}, {num_channels}")
        self.num_classes = num_classes
        self.num_channels = num_channels
        self.embedding = nn.Embedding(num_classes, num_channels)
        nn.init.normal_(self.embedding.weight, std=init_scale)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, None]:
        check_tensor(x, "x", kind="integer", rank=1, layout="(B,) of class indices")
        if pad_mask is not None:
            raise ValueError(f"pad_mask: a label has no padding, expected None, got {type(pad_mask).__name__}")
        if bool(((x < 0) | (x >= self.num_classes)).any()):
            raise ValueError(f"x: expected class indices in [0, {self.num_classes}), got values from "
                             f"{int(x.min())} to {int(x.max())}")
        return self.embedding(x)[:, None, :], None
