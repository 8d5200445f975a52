"""Converted Hugging Face Perceivers compute what the originals compute (random weights, several configs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[dev]'); the converter needs it"
)

from perceiver import PerceiverIO  # noqa: E402
from perceiver.adapters import CLS_ID, MASK_ID, PAD_ID, SEP_ID  # noqa: E402
from perceiver.attention import attention_backend  # noqa: E402
from perceiver.convert import (  # noqa: E402
    UnsupportedModelError,
    from_huggingface,
    hf_id_of_our_id,
    ids_from_huggingface,
    load_huggingface,
)

from transformers import (  # noqa: E402
    PerceiverConfig,
    PerceiverForImageClassificationConvProcessing,
    PerceiverForImageClassificationFourier,
    PerceiverForImageClassificationLearned,
    PerceiverForMaskedLM,
    PerceiverForOpticalFlow,
    PerceiverForSequenceClassification,
    PerceiverModel,
)
from transformers.models.perceiver.modeling_perceiver import (  # noqa: E402
    PerceiverClassificationDecoder,
    PerceiverImagePreprocessor,
)

TEXT_CONFIGS = {
    "defaults": dict(),
    "narrow-qk-wide-mlp": dict(qk_channels=16, v_channels=32, self_attention_widening_factor=2,
                               cross_attention_widening_factor=3),
    "repeated-block": dict(num_blocks=3, num_self_attends_per_block=1, num_cross_attention_heads=4),
}


def small_config(**overrides) -> PerceiverConfig:
    settings = dict(
        num_latents=8,
        d_latents=32,
        d_model=24,
        num_blocks=2,
        num_self_attends_per_block=2,
        num_self_attention_heads=4,
        num_cross_attention_heads=2,
        max_position_embeddings=20,
        attention_probs_dropout_prob=0.0,
        num_labels=5,
        image_size=8,
    )
    settings.update(overrides)
    return PerceiverConfig(**settings)


def randomized(hf_model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """HF's own init gives logits of ~1e-3, too small to tell a wrong wiring from rounding: use O(1) weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return hf_model.eval().double()


def hf_text_batch(batch_size: int = 3, length: int = 13, seed: int = 1):
    """Random HF ids (bytes and [MASK]/[CLS]/[SEP]/[PAD]) with trailing padding of different lengths per row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 262, (batch_size, length), generator=generator)
    ids[:, 0] = 4  # [CLS]
    ids[0, 5] = 3  # [MASK]
    lengths = torch.tensor([length, length - 4, 3])[:batch_size]
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[attention_mask == 0] = 0  # [PAD]
    return ids, attention_mask


@pytest.mark.parametrize("name", TEXT_CONFIGS)
def test_masked_lm_matches_huggingface_in_float64(name):
    hf = randomized(PerceiverForMaskedLM(small_config(**TEXT_CONFIGS[name])))
    ours = from_huggingface(hf)
    ids, attention_mask = hf_text_batch()
    expected = hf(inputs=ids, attention_mask=attention_mask).logits  # (B, max_position_embeddings, 262)
    with attention_backend("math"):
        got = ours(ids_from_huggingface(ids), attention_mask == 0)
    assert got.dtype == torch.float64 and got.shape == (*ids.shape, 260)
    expected = expected[:, : ids.shape[1], hf_id_of_our_id()]  # our positions, our vocabulary order
    real = attention_mask.bool()
    assert expected.abs().max() > 1.0  # the comparison below is not between near-zero numbers
    torch.testing.assert_close(got[real], expected[real], rtol=1e-10, atol=1e-10)


def test_masked_lm_matches_huggingface_in_float32_with_the_default_backend():
    hf = randomized(PerceiverForMaskedLM(small_config(**TEXT_CONFIGS["narrow-qk-wide-mlp"]))).float()
    ours = from_huggingface(hf)
    ids, attention_mask = hf_text_batch()
    expected = hf(inputs=ids, attention_mask=attention_mask).logits[:, : ids.shape[1], hf_id_of_our_id()]
    got = ours(ids_from_huggingface(ids), attention_mask == 0)
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)


def test_sequence_classification_matches_huggingface_with_padding():
    hf = randomized(PerceiverForSequenceClassification(small_config()))
    ours = from_huggingface(hf)
    ids, attention_mask = hf_text_batch()
    expected = hf(inputs=ids, attention_mask=attention_mask).logits
    with attention_backend("math"):
        got = ours(ids_from_huggingface(ids), attention_mask == 0)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_fourier_image_classification_matches_huggingface():
    hf = randomized(PerceiverForImageClassificationFourier(small_config(num_cross_attention_heads=1)))
    ours = from_huggingface(hf)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = hf(inputs=images).logits
    with attention_backend("math"):
        got = ours(images)
    # HF computes its Fourier features in float32 (phases up to pi * 112), whatever the model's dtype.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    hf32, ours32 = hf.float(), from_huggingface(hf.float())
    torch.testing.assert_close(ours32(images.float()), hf32(inputs=images.float()).logits, rtol=1e-4, atol=1e-4)


def test_fourier_image_classification_matches_huggingface_to_float64_precision_with_float64_features(monkeypatch):
    """The only difference above is HF's float32 Fourier features: computed in float64, the outputs agree to 1e-10."""
    def float64_positions(index_dims, output_range=(-1.0, 1.0), device=None):
        axes = [torch.linspace(*output_range, n, dtype=torch.float64, device=device) for n in index_dims]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    monkeypatch.setattr(transformers.models.perceiver.modeling_perceiver, "build_linear_positions", float64_positions)
    hf = randomized(PerceiverForImageClassificationFourier(small_config(num_cross_attention_heads=1)))
    ours = from_huggingface(hf)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # HF builds its frequency bands in the default dtype
    try:
        expected = hf(inputs=images).logits
    finally:
        torch.set_default_dtype(default_dtype)
    with attention_backend("math"):
        got = ours(images)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_patch_preprocessor_with_classification_decoder_matches_huggingface():
    config = small_config(d_latents=16, num_cross_attention_heads=1)
    preprocessor = PerceiverImagePreprocessor(
        config,
        prep_type="patches",
        spatial_downsample=4,
        fourier_position_encoding_kwargs=dict(concat_pos=True, max_resolution=(4, 4), num_bands=3, sine_only=False),
    )
    decoder = PerceiverClassificationDecoder(
        config, num_channels=16, trainable_position_encoding_kwargs=dict(num_channels=16, index_dims=1),
        use_query_residual=True,
    )
    hf = randomized(PerceiverModel(config, input_preprocessor=preprocessor, decoder=decoder))
    ours = from_huggingface(hf, image_size=16)
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with attention_backend("math"):
        got = ours(images)
    torch.testing.assert_close(got, hf(inputs=images).logits, rtol=1e-6, atol=1e-6)


def test_converted_model_saves_and_reloads_with_our_own_format(tmp_path):
    hf = randomized(PerceiverForImageClassificationFourier(small_config(num_cross_attention_heads=1)))
    ours = from_huggingface(hf)
    ours.save_pretrained(tmp_path)
    reloaded = PerceiverIO.from_pretrained(tmp_path).double().eval()
    assert reloaded.input_adapter.positions.max_resolution == (224, 224)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(reloaded(images), ours(images), rtol=0, atol=0)


def test_load_huggingface_reads_a_checkpoint_directory_in_one_call(tmp_path):
    hf = randomized(PerceiverForMaskedLM(small_config())).float()
    hf.save_pretrained(tmp_path)
    ours = load_huggingface(tmp_path)
    ids, attention_mask = hf_text_batch()
    expected = hf(inputs=ids, attention_mask=attention_mask).logits[:, : ids.shape[1], hf_id_of_our_id()]
    got = ours(ids_from_huggingface(ids), attention_mask == 0)
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)


def test_ids_from_huggingface_maps_bytes_and_special_tokens():
    hf_ids = torch.tensor([[0, 3, 4, 5, 6, 6 + 65, 261]])
    assert ids_from_huggingface(hf_ids).tolist() == [[PAD_ID, MASK_ID, CLS_ID, SEP_ID, 0, 65, 255]]
    with pytest.raises(ValueError, match=r"\[BOS\]"):
        ids_from_huggingface(torch.tensor([[1, 7]]))
    with pytest.raises(ValueError, match="expected ids in"):
        ids_from_huggingface(torch.tensor([[262]]))


def test_pixel_subsampling_is_refused_rather_than_copying_hf_behaviour():
    # HF's 4-D "pixels" path slices inputs[::s, ::s], i.e. the batch and channel axes, not height and width.
    config = small_config()
    preprocessor = PerceiverImagePreprocessor(
        config, prep_type="pixels", spatial_downsample=2,
        fourier_position_encoding_kwargs=dict(concat_pos=True, max_resolution=(8, 8), num_bands=4, sine_only=False),
    )
    decoder = PerceiverClassificationDecoder(
        config, num_channels=32, trainable_position_encoding_kwargs=dict(num_channels=32, index_dims=1),
        use_query_residual=True,
    )
    hf = PerceiverModel(config, input_preprocessor=preprocessor, decoder=decoder)
    with pytest.raises(UnsupportedModelError, match="spatial_downsample.*batch and channel"):
        from_huggingface(hf)


UNSUPPORTED = {
    "conv-stem": (lambda: PerceiverForImageClassificationConvProcessing(small_config(num_cross_attention_heads=1)),
                  "prep_type: expected 'pixels' or 'patches'.*got 'conv'"),
    "conv1x1-learned": (lambda: PerceiverForImageClassificationLearned(small_config(num_cross_attention_heads=1)),
                        "got 'conv1x1'"),
    "optical-flow": (lambda: PerceiverForOpticalFlow(small_config(num_cross_attention_heads=1, train_size=[8, 8])),
                     "conv_after_patching: expected False"),
    "not-a-perceiver": (lambda: torch.nn.Linear(2, 2), "expected a transformers Perceiver model.*got Linear"),
    "other-vocabulary": (lambda: PerceiverForMaskedLM(small_config(vocab_size=300)),
                         r"vocab_size: expected 262 \(HF's byte tokenizer\), got 300"),
    "relu": (lambda: PerceiverForMaskedLM(small_config(hidden_act="relu")), "hidden_act: expected 'gelu'.*got 'relu'"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_models_raise_a_clear_error(name):
    build, message = UNSUPPORTED[name]
    with pytest.raises(UnsupportedModelError, match=message):
        from_huggingface(build())


def test_the_parity_doc_snippets_run(tmp_path, monkeypatch, capsys):
    """docs/parity.md becomes a README section: its Python snippets must run as they are."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "parity.md"
    snippets = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)
    assert snippets
    monkeypatch.chdir(tmp_path)
    for number, snippet in enumerate(snippets, start=1):
        exec(compile(snippet, f"docs/parity.md python snippet {number}", "exec"), {"__name__": "parity_doc"})
    assert (tmp_path / "hf-perceiver-mlm").is_dir()
    assert capsys.readouterr().out.split() == ["True"]  # the snippet's comparison of converted and HF outputs
