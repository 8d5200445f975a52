"""The Perceiver IO decoder: output queries read the latents; an output adapter turns them into task outputs."""

from __future__ import annotations

from torch import Tensor, nn

from perceiver.adapters.base import OutputAdapter, QueryProvider
from perceiver.attention import Backend
from perceiver.config import Pretrained, capture_config
from perceiver.init import init_linear_layers
from perceiver.layers import CrossAttentionLayer, run_layer
from perceiver.masks import check_pad_mask


class PerceiverDecoder(Pretrained, nn.Module):
    """Queries (B, O, E) from ``query_provider`` cross-attend to latents (B, N, D); ``output_adapter`` maps (B, O, E).

    A query marked as padding by the query provider's mask (True = padding) gets a zero decoder output, so it
    cannot influence anything downstream; the output adapter still returns a value for it, which losses must ignore.
    ``init_scale`` as in ``PerceiverEncoder`` (None: fan-in scaled, see ``perceiver.init``).
    """

    def __init__(
        self,
        *,
        query_provider: QueryProvider,
        output_adapter: OutputAdapter,
        num_latent_channels: int = 256,
        num_cross_attention_heads: int = 1,
        num_cross_attention_qk_channels: int | None = None,
        num_cross_attention_v_channels: int | None = None,
        cross_attention_widening_factor: int = 1,
        query_residual: bool = False,
        dropout: float = 0.0,
        init_scale: float | None = None,
        activation_checkpointing: bool = False,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        self.query_provider = query_provider
        self.output_adapter = output_adapter
        self.num_latent_channels = num_latent_channels
        self.activation_checkpointing = activation_checkpointing
        self.cross_attention = CrossAttentionLayer(
            num_heads=num_cross_attention_heads,
            num_q_input_channels=query_provider.num_channels,
            num_kv_input_channels=num_latent_channels,
            num_qk_channels=num_cross_attention_qk_channels,
            num_v_channels=num_cross_attention_v_channels,
            widening_factor=cross_attention_widening_factor,
            dropout=dropout,
            query_residual=query_residual,
            backend=backend,
        )
        init_linear_layers(self.cross_attention, init_scale)

    def forward(self, latents: Tensor, *, tokens: Tensor, pad_mask: Tensor | None = None, **query_args):
        """Decode ``latents``; ``tokens``/``pad_mask`` (the adapted input) and ``query_args`` go to the query provider."""
        if latents.dim() != 3 or latents.shape[-1] != self.num_latent_channels:
            raise ValueError(f"latents: expected shape (B, N, {self.num_latent_channels}), got {tuple(latents.shape)}")
        queries, query_pad_mask = self.query_provider(tokens, pad_mask, **query_args)
        if queries.dim() != 3 or queries.shape[0] != latents.shape[0]:
            raise ValueError(
                f"query_provider: expected queries of shape ({latents.shape[0]}, O, E), got {tuple(queries.shape)}"
            )
        check_pad_mask(query_pad_mask, queries.shape[0], queries.shape[1], name="query_pad_mask")
        x = run_layer(self.cross_attention, self.activation_checkpointing, queries, latents)
        if query_pad_mask is not None:
            x = x.masked_fill(query_pad_mask[..., None], 0.0)
        return self.output_adapter(x)
