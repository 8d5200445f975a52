"""UTF-8 bytes → tokens: a byte embedding plus positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.base import InputAdapter
from perceiver.adapters.checks import check_tensor
from perceiver.config import capture_config
from perceiver.masks import check_pad_mask
from perceiver.positions import build_position_encoding

# Ids 0..255 are the bytes themselves; the special ids follow them.
PAD_ID = 256
MASK_ID = 257
CLS_ID = 258
SEP_ID = 259
VOCAB_SIZE = 260


class ByteAdapter(InputAdapter):
    """Byte ids (B, M) → tokens (B, M, num_channels) and a pad mask (B, M).

    Tokens are ``embedding(id)`` plus a learned position (``num_channels = embed_channels``), or ``embedding(id)``
    concatenated with Fourier features of the position (``num_channels = embed_channels + Fourier channels``).
    Position ``m`` is absolute (cell ``m`` of ``max_length``), so padding never moves a real token.

    Pad mask: when ``pad_mask`` is given it wins and is returned as is (a ``PAD_ID`` under a False entry is embedded
    like any other id); when it is None the mask is ``ids == PAD_ID``.

    Args:
        max_length: longest sequence accepted.
        embed_channels: width of the byte embedding.
        positions: ``"learned"`` (added) or ``"fourier"`` (concatenated).
        num_bands: Fourier bands (Fourier positions only).
        init_scale: standard deviation of the byte embedding's initialisation.
    """

    def __init__(
        self,
        *,
        max_length: int = 2048,
        embed_channels: int = 256,
        positions: str = "learned",
        num_bands: int = 64,
        init_scale: float = 0.02,
    ):
        super().__init__()
        self.config = capture_config(locals())
        self.max_length = max_length
        self.embedding = nn.Embedding(VOCAB_SIZE, embed_channels)
        nn.init.normal_(self.embedding.weight, std=init_scale)
        self.positions = build_position_encoding(
            positions, max_shape=(max_length,), num_channels=embed_channels, num_bands=num_bands
        )
        self.concat_positions = positions == "fourier"
        self.num_channels = embed_channels + (self.positions.num_channels if self.concat_positions else 0)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "x", kind="integer", rank=2, layout="(B, M) of byte ids")
        batch_size, length = x.shape
        if not 1 <= length <= self.max_length:
            raise ValueError(f"x: expected a length M between 1 and max_length={self.max_length}, got {length}")
        if int(x.min()) < 0 or int(x.max()) >= VOCAB_SIZE:
            raise ValueError(f"x: expected ids in [0, {VOCAB_SIZE}), got values in [{int(x.min())}, {int(x.max())}]")
        check_pad_mask(pad_mask, batch_size, length)
        if pad_mask is None:
            pad_mask = x == PAD_ID
        tokens = self.embedding(x)
        positions = self.positions.grid((length,), device=x.device).to(tokens.dtype)
        if self.concat_positions:
            tokens = torch.cat([tokens, positions.expand(batch_size, -1, -1)], dim=-1)
        else:
            tokens = tokens + positions
        return tokens, pad_mask

    def encode(self, texts: list[str], *, truncate: bool = False) -> tuple[Tensor, Tensor]:
        """UTF-8 ids (B, L) padded with ``PAD_ID`` to the longest text, and the pad mask (B, L).

        A text longer than ``max_length`` bytes raises unless ``truncate`` (then its bytes beyond are dropped).
        """
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts: expected a non-empty list of str, got {texts!r:.60}")
        encoded = []
        for i, text in enumerate(texts):
            data = list(text.encode("utf-8"))
            if len(data) > self.max_length and not truncate:
                raise ValueError(
                    f"texts[{i}]: expected at most max_length={self.max_length} UTF-8 bytes, got {len(data)} "
                    "(pass truncate=True to cut it)"
                )
            encoded.append(data[: self.max_length])
        length = max(1, max(len(data) for data in encoded))
        ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        for i, data in enumerate(encoded):
            ids[i, : len(data)] = torch.tensor(data, dtype=torch.long)
        return ids, ids == PAD_ID

    @staticmethod
    def decode(ids: Tensor) -> list[str]:
        """Texts of ids (B, L): special ids are dropped, invalid UTF-8 is replaced."""
        check_tensor(ids, "ids", kind="integer", rank=2, layout="(B, L)")
        return [bytes(i for i in row if 0 <= i < 256).decode("utf-8", errors="replace") for row in ids.tolist()]
