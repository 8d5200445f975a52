"""Values under a pad mask or in an absent modality never reach real outputs; a wrong input dtype is named.

NaN and inf at positions marked as padding (or in an absent modality's placeholder) must leave every real output and
every gradient exactly as zeros there would: masked keys get zero attention weight, but 0 × NaN is NaN, so the
adapters zero masked inputs (``torch.where``) where they first touch them.
"""

import pytest
import torch

from perceiver import PerceiverEncoder, attention_backend
from perceiver.adapters import (
    ConvAdapter,
    MultimodalAdapter,
    PatchAdapter,
    SpectrogramAdapter,
    SpectrogramConvAdapter,
)
from perceiver.fusion import HybridFusionClassifier, LateFusionClassifier
from perceiver.resampler import PerceiverResampler

BAD_VALUES = [float("nan"), float("inf"), -float("inf")]


def encoder_for(adapter):
    return PerceiverEncoder(num_input_channels=adapter.num_channels, num_latents=4, num_latent_channels=16,
                            num_self_attention_heads=2, num_self_attention_layers_per_block=1)


def run(adapter, encoder, x, pad_mask):
    """Latents and every parameter's gradient, in float64 with the exact math backend."""
    adapter.zero_grad()
    encoder.zero_grad()
    with attention_backend("math"):
        latents = encoder(*adapter(x, pad_mask))
    latents.square().sum().backward()
    grads = [p.grad.clone() for p in (*adapter.parameters(), *encoder.parameters()) if p.grad is not None]
    return latents.detach(), grads


def assert_padding_values_ignored(adapter, clean, pad_mask, value):
    torch.manual_seed(0)
    adapter = adapter.double()
    encoder = encoder_for(adapter).double()
    clean = clean.double()
    mask = pad_mask if clean.dim() == pad_mask.dim() else pad_mask.unsqueeze(1).expand_as(clean)
    dirty = torch.where(mask, torch.full_like(clean, value), clean)
    expected, expected_grads = run(adapter, encoder, torch.where(mask, torch.zeros_like(clean), clean), pad_mask)
    got, got_grads = run(adapter, encoder, dirty, pad_mask)
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in got_grads)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def trailing_mask(batch, length, real):
    return torch.arange(length) >= torch.tensor(real)[:, None]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("embed_channels", [12, None])
def test_patch_adapter_1d_ignores_values_under_the_mask(value, embed_channels):
    adapter = PatchAdapter(in_channels=2, max_size=(32,), patch_size=4, embed_channels=embed_channels, num_bands=2)
    # 13 real samples: the fourth patch is part real, part padding, so its padded elements must be zeroed too
    assert_padding_values_ignored(adapter, torch.randn(2, 2, 32), trailing_mask(2, 32, [13, 32]), value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_patch_adapter_2d_ignores_values_under_the_mask(value):
    adapter = PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=2, embed_channels=12, num_bands=2)
    pad_mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    pad_mask[0, 5:, :] = True
    pad_mask[1, :, 3:] = True
    assert_padding_values_ignored(adapter, torch.randn(2, 1, 8, 8), pad_mask, value)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("max_size", [(16,), (8, 8)])
def test_conv_adapter_ignores_values_under_the_mask(value, max_size):
    adapter = ConvAdapter(in_channels=1, max_size=max_size, channels=(4, 6), strides=(2, 1), num_bands=2)
    x = torch.randn(2, 1, *max_size)
    pad_mask = torch.zeros(2, *max_size, dtype=torch.bool)
    pad_mask[0, 5:] = True
    assert_padding_values_ignored(adapter, x, pad_mask, value)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("kind", ["patches", "time", "time-mel"])
def test_spectrogram_adapters_ignore_values_under_the_mask(value, kind):
    common = dict(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, max_duration=0.5)
    if kind == "patches":
        adapter = SpectrogramAdapter(**common, patch_size=(4, 4), embed_channels=12, num_bands=2)
    else:
        adapter = SpectrogramConvAdapter(**common, conv=kind, channels=(8,), strides=(2,), num_bands=2)
    assert_padding_values_ignored(adapter, torch.randn(2, 4000), trailing_mask(2, 4000, [1500, 4000]), value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_resampler_ignores_values_under_the_mask(value):
    torch.manual_seed(0)
    resampler = PerceiverResampler(num_input_channels=6, num_latents=3, num_latent_channels=8).double()
    features = torch.randn(2, 5, 6, dtype=torch.float64)
    pad_mask = trailing_mask(2, 5, [2, 5])
    dirty = torch.where(pad_mask[..., None], torch.full_like(features, value), features)
    with attention_backend("math"):
        expected = resampler(torch.where(pad_mask[..., None], 0.0, features), pad_mask)
        got = resampler(dirty, pad_mask)
        got.sum().backward()
    torch.testing.assert_close(got, expected)
    assert all(torch.isfinite(p.grad).all() for p in resampler.parameters() if p.grad is not None)


def two_modalities():
    image = PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=2, embed_channels=12, num_bands=2)
    signal = PatchAdapter(in_channels=1, max_size=(16,), patch_size=4, embed_channels=12, num_bands=2)
    return {"image": image, "signal": signal}


@pytest.mark.parametrize("value", BAD_VALUES)
def test_an_absent_modality_placeholder_is_ignored_whatever_it_holds(value):
    torch.manual_seed(0)
    adapter = MultimodalAdapter(adapters=two_modalities()).double()
    encoder = encoder_for(adapter).double()
    x = {"image": torch.randn(2, 1, 8, 8, dtype=torch.float64), "signal": torch.randn(2, 1, 16, dtype=torch.float64),
         "signal_present": torch.tensor([True, False])}
    dirty = {**x, "signal": torch.stack([x["signal"][0], torch.full_like(x["signal"][1], value)])}
    with attention_backend("math"):
        expected = encoder(*adapter(x))
        got = encoder(*adapter(dirty))
        got.square().sum().backward()
    torch.testing.assert_close(got, expected)
    assert all(torch.isfinite(p.grad).all() for p in (*adapter.parameters(), *encoder.parameters())
               if p.grad is not None)


@pytest.mark.parametrize("kind", ["late", "hybrid"])
def test_fusion_ignores_a_nan_placeholder(kind):
    torch.manual_seed(0)
    adapters = two_modalities()
    if kind == "late":
        from perceiver import PerceiverDecoder, PerceiverIO
        from perceiver.adapters import ClassificationOutput, ClassificationQuery

        def classifier(adapter):
            decoder = PerceiverDecoder(query_provider=ClassificationQuery(num_channels=16),
                                       output_adapter=ClassificationOutput(num_channels=16, num_classes=3),
                                       num_latent_channels=16)
            return PerceiverIO(input_adapter=adapter, encoder=encoder_for(adapter), decoder=decoder)

        model = LateFusionClassifier(models={name: classifier(a) for name, a in adapters.items()})
    else:
        model = HybridFusionClassifier(adapters=adapters, encoders={n: encoder_for(a) for n, a in adapters.items()},
                                       num_classes=3, num_fusion_layers=1, num_fusion_heads=2)
    x = {"image": torch.randn(2, 1, 8, 8), "signal": torch.randn(2, 1, 16),
         "signal_present": torch.tensor([True, False])}
    dirty = {**x, "signal": torch.stack([x["signal"][0], torch.full_like(x["signal"][1], float("nan"))])}
    expected = model(x)
    got = model(dirty)
    got.sum().backward()
    torch.testing.assert_close(got, expected)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_encoder_ignores_nan_tokens_under_the_mask():
    torch.manual_seed(0)
    encoder = PerceiverEncoder(num_input_channels=8, num_latents=4, num_latent_channels=16)
    tokens = torch.randn(2, 5, 8)
    pad_mask = trailing_mask(2, 5, [3, 5])
    dirty = torch.where(pad_mask[..., None], float("nan"), tokens)
    torch.testing.assert_close(encoder(dirty, pad_mask), encoder(tokens, pad_mask))


@pytest.mark.parametrize("make, x", [
    (lambda: PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=2, embed_channels=12), torch.randn(1, 1, 8, 8)),
    (lambda: PatchAdapter(in_channels=1, max_size=(16,), patch_size=4, embed_channels=12), torch.randn(1, 1, 16)),
    (lambda: ConvAdapter(in_channels=1, max_size=(8, 8), channels=(4,), strides=(2,)), torch.randn(1, 1, 8, 8)),
])
def test_a_float64_input_to_a_float32_adapter_is_named(make, x):
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 .*got torch.float64"):
        make()(x.double())


def test_a_float64_input_to_a_float32_encoder_or_resampler_is_named():
    encoder = PerceiverEncoder(num_input_channels=8, num_latents=4, num_latent_channels=16)
    with pytest.raises(TypeError, match=r"tokens: expected dtype torch.float32 .*got torch.float64"):
        encoder(torch.randn(1, 3, 8, dtype=torch.float64))
    resampler = PerceiverResampler(num_input_channels=6, num_latents=3, num_latent_channels=8)
    with pytest.raises(TypeError, match=r"features: expected dtype torch.float32 .*got torch.float64"):
        resampler(torch.randn(1, 5, 6, dtype=torch.float64))
    raw = PatchAdapter(in_channels=1, max_size=(16,), patch_size=4, embed_channels=None)  # no weights: the encoder's
    tokens, _ = raw(torch.randn(1, 1, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"tokens: expected dtype torch.float32 .*got torch.float64"):
        encoder_for(raw)(tokens)


def test_spectrogram_adapters_take_a_float64_waveform_into_a_float32_model():
    """The log-mel is computed in the waveform's dtype and cast once to the model's."""
    common = dict(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, max_duration=0.5)
    waveform = torch.randn(1, 4000, dtype=torch.float64)
    for adapter in (SpectrogramAdapter(**common, patch_size=(4, 4), embed_channels=12),
                    SpectrogramConvAdapter(**common, channels=(8,), strides=(2,))):
        tokens, _ = adapter(waveform)
        assert tokens.dtype == torch.float32


def test_a_float64_batch_into_a_float32_model_is_named_at_the_entry():
    from perceiver import PerceiverDecoder, PerceiverIO
    from perceiver.adapters import ClassificationOutput, ClassificationQuery

    adapter = PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=2, embed_channels=16)
    model = PerceiverIO(input_adapter=adapter, encoder=encoder_for(adapter), decoder=PerceiverDecoder(
        query_provider=ClassificationQuery(num_channels=16),
        output_adapter=ClassificationOutput(num_channels=16, num_classes=3), num_latent_channels=16))
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 \(the dtype of the model's parameters\), "
                                        r"got torch.float64"):
        model(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    assert model.double()(torch.randn(2, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64
