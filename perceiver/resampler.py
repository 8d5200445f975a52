"""The Perceiver Resampler (Flamingo): a variable number of feature vectors in, a fixed number of tokens out.

Typical use: frozen per-frame or per-patch features of a vision or audio model (B, M, C), M varying from sample to
sample, become ``num_latents`` tokens of width ``num_output_channels`` that another model (a language model, say)
takes as a prefix, the pattern of Flamingo, BLIP-2's Q-Former and LLaVA's projector.

Each layer lets the learned latents attend to the features *and to themselves* (keys = [features; latents]), as in
Flamingo, then applies an MLP; a final LayerNorm and a linear projection give the output width. Padding features
(``pad_mask`` True) are never attended to, so a sample's output does not depend on how much its batch pads it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.checks import check_model_dtype, check_tensor
from perceiver.attention import Backend
from perceiver.config import Pretrained, capture_config
from perceiver.init import init_latents, init_linear_layers
from perceiver.layers import CrossAttentionLayer
from perceiver.masks import check_pad_mask, zero_padding


class PerceiverResampler(Pretrained, nn.Module):
    """``forward(features (B, M, num_input_channels), pad_mask (B, M) | None) -> (B, num_latents, num_output_channels)``.

    ``max_frames`` adds a learned embedding per frame for features laid out as (B, T, S, C) (T frames of S features
    each, Flamingo's video input); such inputs are flattened to (B, T·S, C) after the embedding is added, and their
    ``pad_mask`` may be given per frame (B, T) or per feature (B, T·S).
    """

    def __init__(
        self,
        *,
        num_input_channels: int,
        num_latents: int = 64,
        num_latent_channels: int = 256,
        num_output_channels: int | None = None,
        num_layers: int = 2,
        num_heads: int = 8,
        widening_factor: int = 4,
        max_frames: int | None = None,
        dropout: float = 0.0,
        init_scale: float | None = None,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        self.num_input_channels = num_input_channels
        self.num_output_channels = num_output_channels or num_latent_channels
        self.input_projection = nn.Linear(num_input_channels, num_latent_channels)
        self.frame_embedding = nn.Parameter(torch.empty(max_frames, num_latent_channels)) if max_frames else None
        self.latents = nn.Parameter(torch.empty(num_latents, num_latent_channels))
        self.layers = nn.ModuleList(
            CrossAttentionLayer(
                num_heads=num_heads,
                num_q_input_channels=num_latent_channels,
                num_kv_input_channels=num_latent_channels,
                widening_factor=widening_factor,
                dropout=dropout,
                backend=backend,
            )
            for _ in range(num_layers)
        )
        self.output_norm = nn.LayerNorm(num_latent_channels)
        self.output_projection = nn.Linear(num_latent_channels, self.num_output_channels)
        for embedding in (self.latents, self.frame_embedding):
            if embedding is not None:
                init_latents(embedding, init_scale)
        init_linear_layers(self, init_scale, num_residual_branches=2 * num_layers)

    def _flatten_frames(self, features: Tensor, pad_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        batch, frames, per_frame, _ = features.shape
        if self.frame_embedding is None:
            raise ValueError("features: got (B, T, S, C) frames, but the resampler was built without max_frames")
        if frames > self.frame_embedding.shape[0]:
            raise ValueError(f"features: expected at most max_frames={self.frame_embedding.shape[0]} frames, got {frames}")
        if pad_mask is not None and tuple(pad_mask.shape) == (batch, frames):
            pad_mask = pad_mask[:, :, None].expand(-1, -1, per_frame)
        if isinstance(pad_mask, Tensor) and pad_mask.dtype == torch.bool and pad_mask.shape == features.shape[:3]:
            features = zero_padding(features, pad_mask, channel_dim=-1)
        x = self.input_projection(features) + self.frame_embedding[:frames, None].to(features.dtype)
        if pad_mask is not None:
            pad_mask = pad_mask.reshape(batch, -1)
        return x.reshape(batch, frames * per_frame, -1), pad_mask

    def forward(self, features: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        layout = f"(B, M, {self.num_input_channels}) or (B, T, S, {self.num_input_channels})"
        frames_layout = isinstance(features, Tensor) and features.dim() == 4
        check_tensor(features, "features", kind="float", rank=4 if frames_layout else 3, layout=layout)
        if features.shape[-1] != self.num_input_channels:
            raise ValueError(f"features: expected shape {layout}, got {tuple(features.shape)}")
        check_model_dtype(features, "features", self)
        if frames_layout:
            x, pad_mask = self._flatten_frames(features, pad_mask)
        else:
            check_pad_mask(pad_mask, *features.shape[:2])
            # NaN or inf under the mask must not leak through attention (0 × NaN is NaN) nor into the gradients
            x = self.input_projection(zero_padding(features, pad_mask, channel_dim=-1))
        batch, length = x.shape[:2]
        check_pad_mask(pad_mask, batch, length)
        latents = self.latents.to(x.dtype).expand(batch, -1, -1)
        # The latents are keys too: they are never padding, so a sample whose features are all padding still has
        # keys to attend to and gets a well-defined output.
        latent_keys_mask = None
        if pad_mask is not None:
            latent_keys_mask = torch.cat([pad_mask, pad_mask.new_zeros(batch, latents.shape[1])], dim=1)
        for layer in self.layers:
            latents = layer(latents, torch.cat([x, latents], dim=1), latent_keys_mask)
        return self.output_projection(self.output_norm(latents))
