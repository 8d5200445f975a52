"""Pre-LayerNorm attention layers: cross-attention, self-attention, and blocks of self-attention layers."""

from __future__ import annotations

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from perceiver.attention import Backend, MultiHeadAttention
from perceiver.config import Pretrained, capture_config


class MLP(Pretrained, nn.Sequential):
    """LayerNorm → Linear(C, w·C) → GELU → Linear(w·C, C) → dropout."""

    def __init__(self, *, num_channels: int, widening_factor: int = 1, dropout: float = 0.0):
        hidden = widening_factor * num_channels
        super().__init__(
            nn.LayerNorm(num_channels),
            nn.Linear(num_channels, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_channels),
            nn.Dropout(dropout),
        )
        self.config = capture_config(locals())

    @property
    def output(self) -> nn.Linear:
        """The map that writes into the residual stream."""
        return self[3]


class CrossAttentionLayer(Pretrained, nn.Module):
    """Queries ``x_q`` (B, N, Cq) read ``x_kv`` (B, M, Ckv); then an MLP. Both with residual connections.

    ``query_residual=False`` drops the residual around the attention (Perceiver IO decoders do this, so that an output
    query's own features do not leak into its output). ``causal=True``: the N queries are aligned with the last N
    of the M keys, query i sees key j iff j <= i + M - N (Perceiver AR).
    """

    def __init__(
        self,
        *,
        num_heads: int,
        num_q_input_channels: int,
        num_kv_input_channels: int,
        num_qk_channels: int | None = None,
        num_v_channels: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
        query_residual: bool = True,
        causal: bool = False,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        self.q_norm = nn.LayerNorm(num_q_input_channels)
        self.kv_norm = nn.LayerNorm(num_kv_input_channels)
        self.attention = MultiHeadAttention(
            num_heads=num_heads,
            num_q_input_channels=num_q_input_channels,
            num_kv_input_channels=num_kv_input_channels,
            num_qk_channels=num_qk_channels,
            num_v_channels=num_v_channels,
            causal=causal,
            backend=backend,
        )
        self.dropout = nn.Dropout(dropout)
        self.mlp = MLP(num_channels=num_q_input_channels, widening_factor=widening_factor, dropout=dropout)
        self.query_residual = query_residual

    def forward(self, x_q: Tensor, x_kv: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        attended = self.dropout(self.attention(self.q_norm(x_q), self.kv_norm(x_kv), pad_mask))
        x = x_q + attended if self.query_residual else attended
        return x + self.mlp(x)


class SelfAttentionLayer(Pretrained, nn.Module):
    """Self-attention of ``x`` (B, N, C) over itself, then an MLP, both residual; ``causal``: token i sees tokens <= i."""

    def __init__(
        self,
        *,
        num_heads: int,
        num_channels: int,
        num_qk_channels: int | None = None,
        num_v_channels: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
        causal: bool = False,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        self.norm = nn.LayerNorm(num_channels)
        self.attention = MultiHeadAttention(
            num_heads=num_heads,
            num_q_input_channels=num_channels,
            num_kv_input_channels=num_channels,
            num_qk_channels=num_qk_channels,
            num_v_channels=num_v_channels,
            causal=causal,
            backend=backend,
        )
        self.dropout = nn.Dropout(dropout)
        self.mlp = MLP(num_channels=num_channels, widening_factor=widening_factor, dropout=dropout)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        normed = self.norm(x)
        x = x + self.dropout(self.attention(normed, normed, pad_mask))
        return x + self.mlp(x)


class SelfAttentionBlock(Pretrained, nn.ModuleList):
    """``num_layers`` self-attention layers applied in order; optionally with activation checkpointing."""

    def __init__(self, *, num_layers: int, activation_checkpointing: bool = False, **layer_kwargs):
        super().__init__([SelfAttentionLayer(**layer_kwargs) for _ in range(num_layers)])
        self.config = capture_config(locals())
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        for layer in self:
            x = run_layer(layer, self.activation_checkpointing, x, pad_mask)
        return x


def run_layer(layer: nn.Module, activation_checkpointing: bool, *args) -> Tensor:
    """Call ``layer(*args)``, recomputing its activations in the backward pass when asked and training."""
    if activation_checkpointing and layer.training:
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)
