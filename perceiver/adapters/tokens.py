"""Per-token outputs: one query per input position (e.g. masked-byte prediction) and vocabulary logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.base import OutputAdapter, QueryProvider
from perceiver.adapters.checks import check_tensor
from perceiver.adapters.text import VOCAB_SIZE
from perceiver.config import capture_config
from perceiver.masks import check_pad_mask
from perceiver.positions import build_position_encoding


class TokenQueries(QueryProvider):
    """One query per input token: (B, M, num_channels) for tokens (B, M, C); the query mask is the input's mask.

    Query ``m`` encodes position ``m`` (absolute, like ``ByteAdapter``'s): a learned vector, or Fourier features,
    linearly projected to ``num_channels`` unless ``num_channels`` is None (then the raw Fourier features, whose
    width the formula fixes). Takes no query arguments.

    Args:
        max_length: longest input accepted.
        num_channels: query width (required for learned positions).
        positions: ``"learned"`` or ``"fourier"``.
        num_bands: Fourier bands.
    """

    def __init__(
        self, *, max_length: int = 2048, num_channels: int | None = 256, positions: str = "learned", num_bands: int = 64
    ):
        super().__init__()
        self.config = capture_config(locals())
        if positions == "learned" and num_channels is None:
            raise ValueError("num_channels: learned positions need an int, got None")
        self.max_length = max_length
        self.positions = build_position_encoding(
            positions, max_shape=(max_length,), num_channels=num_channels or 0, num_bands=num_bands
        )
        project = positions == "fourier" and num_channels is not None
        self.projection = nn.Linear(self.positions.num_channels, num_channels) if project else None
        self.num_channels = num_channels if num_channels is not None else self.positions.num_channels

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        check_tensor(tokens, "tokens", kind="float", rank=3, layout="(B, M, C)")
        batch_size, length = tokens.shape[:2]
        if length > self.max_length:
            raise ValueError(f"tokens: expected at most max_length={self.max_length} tokens, got M={length}")
        check_pad_mask(pad_mask, batch_size, length)
        queries = self.positions.grid((length,), device=tokens.device)
        if self.projection is not None:
            queries = self.projection(queries.to(self.projection.weight.dtype))
        queries = queries.to(tokens.dtype)
        return queries.expand(batch_size, -1, -1), pad_mask


class TokenOutput(OutputAdapter):
    """Decoded per-token vectors (B, M, num_channels) → logits (B, M, vocab_size).

    With ``tied=True`` the output weight is an input embedding's weight (e.g. ``ByteAdapter.embedding``), given by
    ``tie_to(adapter_or_embedding)`` after construction (also after rebuilding from a stored config); only the bias
    belongs to this module, so the shared weight is stored once, with the input adapter.
    """

    def __init__(self, *, num_channels: int = 256, vocab_size: int = VOCAB_SIZE, tied: bool = False):
        super().__init__()
        self.config = capture_config(locals())
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.tied = tied
        if tied:
            self.bias = nn.Parameter(torch.zeros(vocab_size))
            self._tied_embedding: list[nn.Embedding] = []  # a plain list, so the embedding is not a submodule here
        else:
            self.linear = nn.Linear(num_channels, vocab_size)

    def tie_to(self, source: nn.Module) -> None:
        """Use ``source``'s embedding weight (an ``nn.Embedding``, or a module with one as ``.embedding``)."""
        if not self.tied:
            raise ValueError("tie_to: this TokenOutput was built with tied=False; build it with tied=True")
        embedding = source if isinstance(source, nn.Embedding) else getattr(source, "embedding", None)
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(
                f"source: expected an nn.Embedding or a module with one as .embedding, got {type(source).__name__}"
            )
        expected = (self.vocab_size, self.num_channels)
        if tuple(embedding.weight.shape) != expected:
            raise ValueError(
                f"source: expected an embedding weight of shape {expected}, got {tuple(embedding.weight.shape)}"
            )
        self._tied_embedding[:] = [embedding]

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", kind="float", rank=3, layout=f"(B, M, {self.num_channels})")
        if x.shape[-1] != self.num_channels:
            raise ValueError(
                f"x: expected {self.num_channels} channels (B, M, {self.num_channels}), got {tuple(x.shape)}"
            )
        if not self.tied:
            return self.linear(x)
        if not self._tied_embedding:
            raise RuntimeError("TokenOutput(tied=True) needs tie_to(input_adapter) before its first call")
        return nn.functional.linear(x, self._tied_embedding[0].weight, self.bias)
