"""Every public module of the package records its config one way and round-trips through save_pretrained /
from_pretrained (config.json + model.safetensors): the same weights and the same outputs."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest
import torch
from torch import nn

import perceiver
from perceiver import PerceiverAR, PerceiverDecoder, PerceiverEncoder
from perceiver.adapters import (ByteAdapter, ClassificationOutput, ClassificationQuery, ConvAdapter, ConvStem,
                                LabelAdapter, LogMelSpectrogram, MultimodalAdapter, PatchAdapter,
                                ReconstructionOutput, ReconstructionQueries, SpectrogramAdapter,
                                SpectrogramConvAdapter, TokenOutput, TokenQueries)
from perceiver.attention import MultiHeadAttention
from perceiver.builders import classifier
from perceiver.contrastive import ContrastiveModel
from perceiver.ensemble import EnsembleClassifier
from perceiver.fusion import HybridFusionClassifier, LateFusionClassifier
from perceiver.layers import MLP, CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer
from perceiver.positions import FourierPositionEncoding, LearnedPositionEncoding, RotaryEmbedding
from perceiver.probe import LinearProbe
from perceiver.resampler import PerceiverResampler

# Subpackages whose modules are not models (data pipelines, the training loop, the kernels).
NOT_MODELS = ("perceiver.data", "perceiver.training", "perceiver.kernels")
PAD = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
WAVES = torch.randn(2, 1600)


def tokens(channels: int = 6) -> torch.Tensor:
    return torch.randn(2, 6, channels)


def image_adapter() -> PatchAdapter:
    return PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=4, embed_channels=6, num_bands=2)


def audio_adapter() -> SpectrogramAdapter:
    return SpectrogramAdapter(n_mels=8, max_duration=0.1, patch_size=(2, 8), embed_channels=6, num_bands=2)


def tiny_classifier(adapter) -> perceiver.PerceiverIO:
    return classifier(adapter, num_classes=3, num_latents=3, num_latent_channels=8, num_self_attention_heads=2,
                      num_self_attention_layers_per_block=1)


def encoder(num_input_channels: int = 6) -> PerceiverEncoder:
    return PerceiverEncoder(num_input_channels=num_input_channels, num_latents=3, num_latent_channels=8,
                            num_self_attention_heads=2, num_self_attention_layers_per_block=1)


AV = {"image": torch.rand(2, 1, 8, 8), "audio": WAVES}
AV_PAD = {"audio": torch.zeros(2, 1600, dtype=torch.bool)}

# name -> (build the module, call it)
CASES = {
    "MultiHeadAttention": (lambda: MultiHeadAttention(num_heads=2, num_q_input_channels=8, num_kv_input_channels=6),
                           lambda m: m(tokens(8)[:, :3], tokens(), PAD)),
    "MLP": (lambda: MLP(num_channels=8, widening_factor=2), lambda m: m(tokens(8))),
    "CrossAttentionLayer": (lambda: CrossAttentionLayer(num_heads=2, num_q_input_channels=8, num_kv_input_channels=6),
                            lambda m: m(tokens(8)[:, :3], tokens(), PAD)),
    "SelfAttentionLayer": (lambda: SelfAttentionLayer(num_heads=2, num_channels=8), lambda m: m(tokens(8), PAD)),
    "SelfAttentionBlock": (lambda: SelfAttentionBlock(num_layers=2, num_heads=2, num_channels=8, widening_factor=2),
                           lambda m: m(tokens(8), PAD)),
    "FourierPositionEncoding": (lambda: FourierPositionEncoding(max_shape=(4, 4), num_bands=3),
                                lambda m: m.grid((4, 4))),
    "LearnedPositionEncoding": (lambda: LearnedPositionEncoding(max_shape=(5,), num_channels=4, init_scale=0.1),
                                lambda m: m.grid((5,))),
    "LogMelSpectrogram": (lambda: LogMelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=8,
                                                    max_duration=0.1), lambda m: m(WAVES)),
    "ConvStem": (lambda: ConvStem(num_dims=2, in_channels=1, channels=[4, 6], strides=[2, 1]),
                 lambda m: m(torch.rand(2, 1, 8, 8))),
    "PatchAdapter": (image_adapter, lambda m: m(torch.rand(2, 1, 8, 8))),
    "ConvAdapter": (lambda: ConvAdapter(in_channels=1, max_size=(8, 8), channels=(4,), strides=(2,), num_bands=2),
                    lambda m: m(torch.rand(2, 1, 8, 8))),
    "SpectrogramAdapter": (audio_adapter, lambda m: m(WAVES)),
    "SpectrogramConvAdapter": (lambda: SpectrogramConvAdapter(n_mels=8, max_duration=0.1, channels=(6,),
                                                              strides=(2,), num_bands=2), lambda m: m(WAVES)),
    "ByteAdapter": (lambda: ByteAdapter(max_length=8, embed_channels=6, init_scale=0.05),
                    lambda m: m(torch.randint(0, 256, (2, 6)))),
    "LabelAdapter": (lambda: LabelAdapter(num_classes=3, num_channels=6), lambda m: m(torch.tensor([0, 2]))),
    "MultimodalAdapter": (lambda: MultimodalAdapter(adapters={"image": image_adapter(), "audio": audio_adapter()}),
                          lambda m: m(AV, AV_PAD)),
    "ClassificationQuery": (lambda: ClassificationQuery(num_channels=8), lambda m: m(tokens())),
    "TokenQueries": (lambda: TokenQueries(max_length=8, num_channels=6), lambda m: m(tokens(), PAD)),
    "ReconstructionQueries": (lambda: ReconstructionQueries(output_shapes={"image": [2, 2]}, num_bands=2,
                                                            modality_channels=4, num_channels=8),
                              lambda m: m(tokens(), None, modality="image")),
    "ClassificationOutput": (lambda: ClassificationOutput(num_channels=8, num_classes=3),
                             lambda m: m(tokens(8)[:, :1])),
    "TokenOutput": (lambda: TokenOutput(num_channels=8), lambda m: m(tokens(8))),
    "ReconstructionOutput": (lambda: ReconstructionOutput(num_channels=8, num_values=5), lambda m: m(tokens(8))),
    "PerceiverEncoder": (encoder, lambda m: m(tokens(), PAD)),
    "PerceiverDecoder": (lambda: PerceiverDecoder(query_provider=ClassificationQuery(num_channels=8),
                                                  output_adapter=ClassificationOutput(num_channels=8, num_classes=3),
                                                  num_latent_channels=8),
                         lambda m: m(tokens(8)[:, :3], tokens=tokens())),
    "PerceiverIO": (lambda: tiny_classifier(image_adapter()), lambda m: m(torch.rand(2, 1, 8, 8))),
    "PerceiverResampler": (lambda: PerceiverResampler(num_input_channels=6, num_latents=3, num_latent_channels=8,
                                                      num_heads=2, num_layers=1), lambda m: m(tokens(), PAD)),
    "EnsembleClassifier": (lambda: EnsembleClassifier(models=[tiny_classifier(image_adapter()),
                                                              tiny_classifier(image_adapter())]),
                           lambda m: m(torch.rand(2, 1, 8, 8))),
    "LateFusionClassifier": (lambda: LateFusionClassifier(models={"image": tiny_classifier(image_adapter()),
                                                                  "audio": tiny_classifier(audio_adapter())},
                                                          weighting="learned"), lambda m: m(AV, AV_PAD)),
    "HybridFusionClassifier": (lambda: HybridFusionClassifier(adapters={"image": image_adapter(),
                                                                        "audio": audio_adapter()},
                                                              encoders={"image": encoder(image_adapter().num_channels),
                                                                        "audio": encoder(audio_adapter().num_channels)},
                                                              num_classes=3, num_fusion_layers=1, num_fusion_heads=2),
                               lambda m: m(AV, AV_PAD)),
    "ContrastiveModel": (lambda: ContrastiveModel(embedders={"image": tiny_classifier(image_adapter()),
                                                             "audio": tiny_classifier(audio_adapter())}),
                         lambda m: m(AV, AV_PAD)),
    "LinearProbe": (lambda: LinearProbe(num_features=5, num_classes=3), lambda m: m(torch.randn(4, 5))),
    "PerceiverAR": (lambda: PerceiverAR(max_seq_len=12, num_latents=4, num_channels=8, num_heads=2,
                                        num_self_attention_layers=1), lambda m: m(torch.randint(0, 256, (2, 12)))),
    "RotaryEmbedding": (lambda: RotaryEmbedding(num_channels=4), lambda m: m(torch.randn(2, 2, 5, 6), torch.arange(5))),
}


def public_module_classes() -> set[str]:
    """Every nn.Module class defined in the package's model modules under a public name."""
    found = set()
    for info in pkgutil.walk_packages(perceiver.__path__, "perceiver."):
        if info.name.startswith(NOT_MODELS) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == info.name
                    and not name.startswith("_")):
                found.add(name)
    return found


def test_the_cases_cover_every_public_module():
    abstract = {"InputAdapter", "QueryProvider", "OutputAdapter", "PositionEncoding"}
    assert public_module_classes() - abstract == set(CASES)


def outputs(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in outputs(value[key])]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in outputs(item)]
    return []


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_round_trips_through_save_and_from_pretrained(name, tmp_path):
    build, call = CASES[name]
    torch.manual_seed(0)
    module = build().eval()
    module.save_pretrained(tmp_path / name)
    stored = json.loads((tmp_path / name / "config.json").read_text())
    assert stored["type"].endswith("." + name) and stored["config"] == perceiver.module_spec(module)["config"]
    loaded = type(module).from_pretrained(tmp_path / name).eval()
    assert type(loaded) is type(module)
    expected = module.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    torch.manual_seed(1)
    with torch.no_grad():
        before = outputs(call(module))
    torch.manual_seed(1)
    with torch.no_grad():
        after = outputs(call(loaded))
    assert before and len(before) == len(after)
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_configs_stored_with_init_std_still_load(tmp_path):
    model = MultimodalAdapter(adapters={"label": LabelAdapter(num_classes=3, num_channels=4, init_scale=0.1)},
                              init_scale=0.3)
    model.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert '"init_scale"' in text and '"init_std"' not in text
    (tmp_path / "config.json").write_text(text.replace('"init_scale"', '"init_std"'))
    loaded = MultimodalAdapter.from_pretrained(tmp_path)
    assert loaded.config["init_scale"] == 0.3 and loaded.adapters["label"].config["init_scale"] == 0.1
    torch.testing.assert_close(loaded.modality_embedding, model.modality_embedding)


def test_from_pretrained_refuses_another_class(tmp_path):
    LinearProbe(num_features=2, num_classes=2).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="expected a saved PerceiverIO, found a LinearProbe"):
        perceiver.PerceiverIO.from_pretrained(tmp_path)
