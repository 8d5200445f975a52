"""Initialisation statistics of a default encoder: signals neither vanish nor explode across depth, attention starts
selective and the latents start (and stay) distinct, at a small width and at the Perceiver papers' width."""

import math

import pytest
import torch

from perceiver import PerceiverEncoder
from perceiver.init import check_init_scale, init_latents

SMALL = dict(num_latents=16, num_latent_channels=64, num_self_attention_heads=4, num_self_attention_layers_per_block=4)
# The papers' ImageNet width and depth (1024 channels, 8 blocks of 6 layers sharing weights), with fewer latents.
PAPER = dict(num_latents=32, num_latent_channels=1024, num_self_attention_heads=8,
             num_self_attention_layers_per_block=6, num_self_attention_blocks=8)


def encoder_statistics(init_scale, config, seed=0):
    """Residual stream std after every layer, mean |cosine| between final latents, cross-attention entropy / log M."""
    torch.manual_seed(seed)
    encoder = PerceiverEncoder(num_input_channels=24, init_scale=init_scale, **config)
    tokens = torch.randn(2, 96, 24)
    stream = []
    layers = [encoder.cross_attention_1, *encoder.self_attention_1, *encoder.self_attention_n]
    hooks = [layer.register_forward_hook(lambda module, inputs, output: stream.append(output.std().item()))
             for layer in dict.fromkeys(layers)]
    with torch.no_grad():
        latents = encoder(tokens)
        cross = encoder.cross_attention_1
        q = cross.attention.q_proj(cross.q_norm(encoder.latents))
        k = cross.attention.k_proj(cross.kv_norm(tokens[0]))
    for hook in hooks:
        hook.remove()
    weights = (q @ k.T / math.sqrt(q.shape[-1])).softmax(dim=-1)
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1).mean() / math.log(k.shape[0])
    unit = torch.nn.functional.normalize(latents[0], dim=-1)
    n = unit.shape[0]
    cosine = (unit @ unit.T - torch.eye(n)).abs().sum() / (n * (n - 1))
    return stream, cosine.item(), entropy.item()


@pytest.mark.parametrize("config", [SMALL, PAPER], ids=["small", "paper-width"])
def test_default_initialisation_keeps_signals_in_range_across_depth(config):
    stream, cosine, entropy = encoder_statistics(None, config)
    depth = 1 + config["num_self_attention_layers_per_block"] * config.get("num_self_attention_blocks", 1)
    assert len(stream) == depth and all(math.isfinite(s) for s in stream)
    assert min(stream) > 0.5  # nothing vanishes
    # Residual branches add to the stream: it may grow like a random walk over its 2 branches per layer, no faster.
    assert max(stream) < 4 * math.sqrt(2 * depth), stream
    assert cosine < 0.8, f"the latents collapsed onto one direction (mean |cos| {cosine:.2f})"
    assert entropy < 0.95, f"cross-attention starts uniform (entropy {entropy:.3f} of the maximum)"


def test_the_papers_fixed_small_std_starts_with_uniform_attention():
    """What the default avoids: with std 0.02 every cross-attention starts (almost exactly) uniform."""
    _, _, entropy = encoder_statistics(0.02, SMALL)
    assert entropy > 0.999


def test_init_scale_is_checked():
    for bad in (0, -0.1, "0.02"):
        with pytest.raises(ValueError, match="init_scale: expected None"):
            check_init_scale(bad)
    latents = init_latents(torch.empty(4096, 8))
    assert 0.8 < latents.std().item() < 1.0 and latents.abs().max() <= 2.0  # unit normal cut at 2 std
