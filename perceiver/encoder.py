"""The Perceiver encoder: a learned latent array reads the input tokens and refines itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.attention import Backend
from perceiver.config import Pretrained, capture_config
from perceiver.init import init_latents, init_linear_layers
from perceiver.layers import CrossAttentionLayer, SelfAttentionBlock, run_layer
from perceiver.masks import check_pad_mask, zero_padding


class PerceiverEncoder(Pretrained, nn.Module):
    """Latents (N, D) cross-attend to tokens (B, M, C), then blocks of latent self-attention; returns (B, N, D).

    The computation interleaves cross-attends and self-attention blocks as in the Perceiver papers::

        cross-attend 1 → block 1 → cross-attend 2 → block 2 → … → block ``num_self_attention_blocks``

    with ``num_cross_attention_layers`` cross-attends (at most one before each block). Weight sharing follows the
    papers: the first cross-attend and the first block have their own weights unless
    ``first_cross_attention_layer_shared`` / ``first_self_attention_block_shared`` say otherwise, and all later
    cross-attends share one set of weights, as do all later blocks. So the encoder holds at most two cross-attention
    layers and two blocks, whatever the depth it computes. Perceiver IO is the special case of one cross-attend and
    ``num_self_attention_blocks`` repeats of one block.

    ``init_scale=None`` (default) initialises every linear map N(0, 2 / fan_in), scales the maps that write into the
    latents' residual stream by 1 / sqrt(2 × computed depth), and draws the latents N(0, 1): models of any width and
    depth start with selective attention and distinct latents (``perceiver.init``). A float gives the papers'
    fixed std (e.g. 0.02) for every weight and the latents.
    """

    def __init__(
        self,
        *,
        num_input_channels: int,
        num_latents: int = 256,
        num_latent_channels: int = 256,
        num_cross_attention_heads: int = 1,
        num_cross_attention_qk_channels: int | None = None,
        num_cross_attention_v_channels: int | None = None,
        num_cross_attention_layers: int = 1,
        first_cross_attention_layer_shared: bool = False,
        cross_attention_widening_factor: int = 1,
        num_self_attention_heads: int = 8,
        num_self_attention_qk_channels: int | None = None,
        num_self_attention_v_channels: int | None = None,
        num_self_attention_layers_per_block: int = 4,
        num_self_attention_blocks: int = 1,
        first_self_attention_block_shared: bool = False,
        self_attention_widening_factor: int = 1,
        dropout: float = 0.0,
        init_scale: float | None = None,
        activation_checkpointing: bool = False,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        if not 1 <= num_cross_attention_layers <= num_self_attention_blocks:
            raise ValueError(
                "num_cross_attention_layers: expected between 1 and num_self_attention_blocks="
                f"{num_self_attention_blocks} (one cross-attend at most before each block), got {num_cross_attention_layers}"
            )
        self.num_input_channels = num_input_channels
        self.num_cross_attention_layers = num_cross_attention_layers
        self.num_self_attention_blocks = num_self_attention_blocks
        self.activation_checkpointing = activation_checkpointing

        def cross_attention() -> CrossAttentionLayer:
            return CrossAttentionLayer(
                num_heads=num_cross_attention_heads,
                num_q_input_channels=num_latent_channels,
                num_kv_input_channels=num_input_channels,
                num_qk_channels=num_cross_attention_qk_channels,
                num_v_channels=num_cross_attention_v_channels,
                widening_factor=cross_attention_widening_factor,
                dropout=dropout,
                backend=backend,
            )

        def self_attention_block() -> SelfAttentionBlock:
            return SelfAttentionBlock(
                num_layers=num_self_attention_layers_per_block,
                num_heads=num_self_attention_heads,
                num_channels=num_latent_channels,
                num_qk_channels=num_self_attention_qk_channels,
                num_v_channels=num_self_attention_v_channels,
                widening_factor=self_attention_widening_factor,
                dropout=dropout,
                activation_checkpointing=activation_checkpointing,
                backend=backend,
            )

        self.latents = nn.Parameter(torch.empty(num_latents, num_latent_channels))
        self.cross_attention_1 = cross_attention()
        needs_shared_cross = num_cross_attention_layers > 1 and not first_cross_attention_layer_shared
        self.cross_attention_n = cross_attention() if needs_shared_cross else self.cross_attention_1
        self.self_attention_1 = self_attention_block()
        needs_shared_block = num_self_attention_blocks > 1 and not first_self_attention_block_shared
        self.self_attention_n = self_attention_block() if needs_shared_block else self.self_attention_1
        self._init_parameters(init_scale)

    def _init_parameters(self, init_scale: float | None) -> None:
        init_latents(self.latents, init_scale)
        # The latents pass through an attention and an MLP branch per cross-attend and per self-attention layer.
        depth = self.num_cross_attention_layers + self.num_self_attention_blocks * len(self.self_attention_1)
        init_linear_layers(self, init_scale, num_residual_branches=2 * depth)

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.num_input_channels:
            raise ValueError(f"tokens: expected shape (B, M, {self.num_input_channels}), got {tuple(tokens.shape)}")
        if tokens.shape[0] == 0:
            raise ValueError("tokens: expected a non-empty batch, got batch size 0")
        check_pad_mask(pad_mask, tokens.shape[0], tokens.shape[1])
        if tokens.dtype != self.latents.dtype and not torch.is_autocast_enabled(tokens.device.type):
            raise TypeError(f"tokens: expected dtype {self.latents.dtype} (the dtype of the model's parameters), got "
                            f"{tokens.dtype}; convert the input or the model (model.to({tokens.dtype}))")
        # A masked token is ignored by attention, but a NaN or inf in it would still leak (0 × NaN is NaN).
        tokens = zero_padding(tokens, pad_mask, channel_dim=-1)
        x = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for i in range(self.num_self_attention_blocks):
            if i < self.num_cross_attention_layers:
                cross = self.cross_attention_1 if i == 0 else self.cross_attention_n
                x = run_layer(cross, self.activation_checkpointing, x, tokens, pad_mask)
            x = (self.self_attention_1 if i == 0 else self.self_attention_n)(x)
        return x
