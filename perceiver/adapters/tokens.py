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
    width the formula fixes).

    With ``token_channels`` (the input tokens' width C) a query also reads the input around its position: a linear map
    of the tokens at ``m - context .. m + context`` (concatenated; zeros beyond the input and at padding) is added to
    the position. For masked-token prediction this puts the MASK token and its neighbours into the query, so the
    latents need not carry every token to the decoder.

    Query arguments: ``index`` (B, K), the positions to decode (e.g. only the masked ones), and ``index_pad_mask``
    (B, K), True for filler entries of ``index`` (rows with fewer than K positions); the queries are then (B, K, E)
    and their mask is ``index_pad_mask`` or the input's mask at ``index``.

    Args:
        max_length: longest input accepted.
        num_channels: query width (required for learned positions and for ``token_channels``).
        positions: ``"learned"`` or ``"fourier"``.
        num_bands: Fourier bands.
        token_channels: width C of the input tokens that the queries read; None: positions only.
        context: input tokens read on each side of a query's own (with ``token_channels``).
    """

    def __init__(
        self, *, max_length: int = 2048, num_channels: int | None = 256, positions: str = "learned",
        num_bands: int = 64, token_channels: int | None = None, context: int = 0,
    ):
        super().__init__()
        self.config = capture_config(locals())
        if positions == "learned" and num_channels is None:
            raise ValueError("num_channels: learned positions need an int, got None")
        if token_channels is not None and (num_channels is None or token_channels < 1):
            raise ValueError(f"token_channels: expected None, or a positive int with an int num_channels, got "
                             f"{token_channels} (num_channels={num_channels})")
        if not (isinstance(context, int) and context >= 0):
            raise ValueError(f"context: expected a non-negative int, got {context!r}")
        self.max_length = max_length
        self.context = context
        self.positions = build_position_encoding(
            positions, max_shape=(max_length,), num_channels=num_channels or 0, num_bands=num_bands
        )
        project = positions == "fourier" and num_channels is not None
        self.projection = nn.Linear(self.positions.num_channels, num_channels) if project else None
        self.num_channels = num_channels if num_channels is not None else self.positions.num_channels
        self.token_projection = (None if token_channels is None
                                 else nn.Linear((2 * context + 1) * token_channels, num_channels))

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None, index: Tensor | None = None,
                index_pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        check_tensor(tokens, "tokens", kind="float", rank=3, layout="(B, M, C)")
        batch_size, length = tokens.shape[:2]
        if length > self.max_length:
            raise ValueError(f"tokens: expected at most max_length={self.max_length} tokens, got M={length}")
        check_pad_mask(pad_mask, batch_size, length)
        if index is None:
            if index_pad_mask is not None:
                raise ValueError("index_pad_mask: expected None without an index")
            index = torch.arange(length, device=tokens.device).expand(batch_size, -1)
            query_pad_mask = pad_mask
        else:
            check_tensor(index, "index", kind="integer", rank=2, layout="(B, K) of positions")
            if index.shape[0] != batch_size:
                raise ValueError(f"index: expected {batch_size} rows (the batch), got shape {tuple(index.shape)}")
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= length):
                raise ValueError(f"index: expected positions in [0, {length}), got values in "
                                 f"[{int(index.min())}, {int(index.max())}]")
            check_pad_mask(index_pad_mask, batch_size, index.shape[1], name="index_pad_mask")
            query_pad_mask = pad_mask.gather(1, index) if pad_mask is not None else None
            if index_pad_mask is not None:
                query_pad_mask = index_pad_mask if query_pad_mask is None else query_pad_mask | index_pad_mask
        queries = self.positions.grid((length,), device=tokens.device)
        if self.projection is not None:
            queries = self.projection(queries.to(self.projection.weight.dtype))
        queries = queries.to(tokens.dtype)[index]  # (B, K, E)
        if self.token_projection is not None:
            queries = queries + self.token_projection(self._neighbourhood(tokens, pad_mask, index))
        return queries, query_pad_mask

    def _neighbourhood(self, tokens: Tensor, pad_mask: Tensor | None, index: Tensor) -> Tensor:
        """The tokens at ``index + offset`` for offsets -context..context, concatenated: (B, K, (2·context+1)·C)."""
        offsets = torch.arange(-self.context, self.context + 1, device=tokens.device)
        where = index[..., None] + offsets  # (B, K, 2·context+1)
        outside = (where < 0) | (where >= tokens.shape[1])
        where = where.clamp(0, tokens.shape[1] - 1)
        if pad_mask is not None:
            outside = outside | pad_mask.gather(1, where.flatten(1)).view_as(where)
        batch = torch.arange(tokens.shape[0], device=tokens.device)[:, None, None]
        neighbours = tokens[batch, where].masked_fill(outside[..., None], 0.0)  # (B, K, 2·context+1, C)
        return neighbours.flatten(2)


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
