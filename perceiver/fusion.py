"""Ways to fuse modalities, and modality dropout.

- **Early fusion** needs no module of its own: a ``MultimodalAdapter`` in front of one ``PerceiverIO`` puts every
  modality's tokens under one latent array.
- **Late fusion** (``LateFusionClassifier``): one model per modality, their class log-probabilities combined.
- **Intermediate (hybrid) fusion** (``HybridFusionClassifier``): one encoder per modality; their latent arrays, each
  tagged with a learned modality embedding, are concatenated and refined by shared latent self-attention before one
  classification query reads them.

Both fusion modules take the input the way ``MultimodalAdapter`` does: a dict ``{name: input}`` where a modality that
the whole batch lacks is left out, and ``x[f"{name}_present"]``, a bool (B,), marks per sample which modalities it
has. A sample missing a modality is classified from the others, so the same model answers with one modality missing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.adapters.multimodal import PRESENT_SUFFIX, blank_absent, presence_flag
from perceiver.attention import Backend
from perceiver.config import Pretrained, capture_config
from perceiver.encoder import PerceiverEncoder
from perceiver.init import init_latents, init_linear_layers
from perceiver.layers import CrossAttentionLayer, SelfAttentionBlock


def modality_presence(x: dict, names: list[str], batch_size: int, device: torch.device) -> Tensor:
    """Bool (B, len(names)): which sample has which modality, from the keys of ``x`` and its ``*_present`` flags."""
    columns = []
    for name in names:
        if name not in x:
            columns.append(torch.zeros(batch_size, dtype=torch.bool, device=device))
            continue
        present = presence_flag(x, name, batch_size)
        columns.append(torch.ones(batch_size, dtype=torch.bool, device=device) if present is None else present)
    presence = torch.stack(columns, dim=1)
    if not bool(presence.any(dim=1).all()):
        missing = torch.nonzero(~presence.any(dim=1)).flatten().tolist()
        raise ValueError(f"x: samples {missing} have none of the modalities {names}")
    return presence


def _batch_size(x: dict, names: list[str]) -> tuple[int, torch.device]:
    for name in names:
        if name in x:
            value = x[name]
            return len(value), value.device
    raise ValueError(f"x: expected at least one of the modalities {names}, got keys {sorted(x)}")


def drop_modalities(x: dict, names: list[str], p: float, generator: torch.Generator | None = None) -> dict:
    """A copy of ``x`` in which each sample loses each of its modalities with probability ``p`` (modality dropout).

    Every sample keeps at least one modality: where all of a sample's modalities were dropped, one of those it had is
    given back at random. Dropping only sets the ``*_present`` flags; the inputs themselves are left as they are.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a probability in [0, 1), got {p}")
    batch_size, device = _batch_size(x, names)
    presence = modality_presence(x, names, batch_size, device)
    keep = torch.rand(presence.shape, generator=generator).to(device) >= p
    kept = presence & keep
    emptied = ~kept.any(dim=1)
    if emptied.any():
        # For a sample that lost everything, restore the modality with the highest random score among those it had.
        scores = torch.rand(presence.shape, generator=generator).to(device).masked_fill(~presence, -1.0)
        restore = nn.functional.one_hot(scores.argmax(dim=1), len(names)).bool()
        kept = kept | (restore & emptied[:, None])
    dropped = dict(x)
    for i, name in enumerate(names):
        if name in x:
            dropped[name + PRESENT_SUFFIX] = kept[:, i]
    return dropped


class LateFusionClassifier(Pretrained, nn.Module):
    """One classifier per modality (each maps its input to logits (B, K)); their log-probabilities are combined.

    ``weighting="mean"`` averages the log-probabilities of the modalities a sample has; ``"learned"`` weighs them with
    learned, softmax-normalised weights (renormalised over the modalities present). Returns log-probabilities.
    """

    def __init__(self, *, models: dict[str, nn.Module], weighting: str = "mean"):
        super().__init__()
        self.config = capture_config(locals())
        if weighting not in ("mean", "learned"):
            raise ValueError(f"weighting: expected 'mean' or 'learned', got {weighting!r}")
        if not models:
            raise ValueError("models: expected at least one modality, got an empty dict")
        self.models = nn.ModuleDict(models)
        self.names = list(models)
        self.weighting = weighting
        self.weight_logits = nn.Parameter(torch.zeros(len(models))) if weighting == "learned" else None

    def forward(self, x: dict, pad_masks: dict | None = None, *, return_branches: bool = False):
        """Fused log-probabilities (B, K); with ``return_branches`` also ``{name: (log_probs (B, K), present (B,))}``
        for each modality in ``x``, e.g. for a loss on each branch alone (which trains every branch to stand on its
        own, so that a sample missing a modality gets what that branch's unimodal model would give)."""
        pad_masks = pad_masks or {}
        batch_size, device = _batch_size(x, self.names)
        presence = modality_presence(x, self.names, batch_size, device)
        branches, used = {}, []
        for i, name in enumerate(self.names):
            if name in x:
                value = blank_absent(x[name], presence[:, i])  # a placeholder's NaN must not reach the gradients
                branches[name] = (self.models[name](value, pad_masks.get(name)).log_softmax(dim=-1), presence[:, i])
                used.append(i)
        stacked = torch.stack([log_probs for log_probs, _ in branches.values()], dim=1)  # (B, modalities in x, K)
        present = presence[:, used]
        logits = self.weight_logits[used] if self.weight_logits is not None else torch.zeros(len(used), device=device)
        weights = logits.to(stacked.dtype).expand(batch_size, -1).masked_fill(~present, float("-inf")).softmax(dim=1)
        # A missing modality's log-probabilities may be anything (its input is a placeholder): zero them before the sum
        # so that 0 × (-inf) cannot appear.
        fused = (weights[..., None] * stacked.masked_fill(~present[..., None], 0.0)).sum(dim=1)
        return (fused, branches) if return_branches else fused


class HybridFusionClassifier(Pretrained, nn.Module):
    """Per-modality adapters and encoders; concatenated latents refined by shared self-attention; one class query.

    All encoders must have the same latent width. The latents of a modality that a sample lacks are masked out of the
    shared self-attention and of the classification query's cross-attention.
    """

    def __init__(
        self,
        *,
        adapters: dict[str, nn.Module],
        encoders: dict[str, PerceiverEncoder],
        num_classes: int,
        num_fusion_layers: int = 2,
        num_fusion_heads: int = 4,
        init_scale: float | None = None,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        if set(adapters) != set(encoders) or not adapters:
            raise ValueError(f"adapters, encoders: expected the same non-empty modality names, got {sorted(adapters)} "
                             f"and {sorted(encoders)}")
        widths = {name: encoder.config["num_latent_channels"] for name, encoder in encoders.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(f"encoders: expected one latent width for all modalities, got {widths}")
        width = next(iter(widths.values()))
        self.names = list(adapters)
        self.adapters = nn.ModuleDict(adapters)
        self.encoders = nn.ModuleDict(encoders)
        self.modality_embedding = nn.Parameter(init_latents(torch.empty(len(self.names), width), init_scale))
        self.fusion = SelfAttentionBlock(
            num_layers=num_fusion_layers, num_heads=num_fusion_heads, num_channels=width, backend=backend
        )
        self.query = nn.Parameter(init_latents(torch.empty(1, 1, width), init_scale))
        self.readout = CrossAttentionLayer(
            num_heads=1, num_q_input_channels=width, num_kv_input_channels=width, query_residual=False, backend=backend
        )
        self.classifier = nn.Linear(width, num_classes)
        # The encoders come initialised; the fusion layers continue their latents' residual stream.
        init_linear_layers(self.fusion, init_scale, num_residual_branches=2 * num_fusion_layers)
        init_linear_layers(self.readout, init_scale)

    def forward(self, x: dict, pad_masks: dict | None = None) -> Tensor:
        pad_masks = pad_masks or {}
        batch_size, device = _batch_size(x, self.names)
        presence = modality_presence(x, self.names, batch_size, device)
        latents, latent_masks = [], []
        for i, name in enumerate(self.names):
            if name not in x:
                continue
            tokens, pad_mask = self.adapters[name](blank_absent(x[name], presence[:, i]), pad_masks.get(name))
            encoded = self.encoders[name](tokens, pad_mask) + self.modality_embedding[i].to(tokens.dtype)
            latents.append(encoded)
            latent_masks.append((~presence[:, i])[:, None].expand(-1, encoded.shape[1]))
        mask = torch.cat(latent_masks, dim=1)
        fused = self.fusion(torch.cat(latents, dim=1), mask)
        read = self.readout(self.query.to(fused.dtype).expand(batch_size, -1, -1), fused, mask)
        return self.classifier(read[:, 0])
