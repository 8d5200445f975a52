"""Whole models: every input adapter with every output, through the real encoder and decoder."""

import pytest
import torch

from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO, attention_backend
from perceiver.adapters import (
    ByteAdapter,
    ClassificationOutput,
    ClassificationQuery,
    MultimodalAdapter,
    PatchAdapter,
    ReconstructionOutput,
    ReconstructionQueries,
    SpectrogramAdapter,
    TokenOutput,
    TokenQueries,
)

D = 32  # latent and decoder width


def byte_adapter(embed_channels=24):
    return ByteAdapter(max_length=32, embed_channels=embed_channels)


def image_adapter():
    return PatchAdapter(in_channels=3, max_size=(16, 16), patch_size=4, embed_channels=24, num_bands=3)


def audio_adapter():
    return SpectrogramAdapter(sample_rate=8000, n_fft=64, hop_length=32, n_mels=8, max_duration=0.5, patch_size=4,
                              embed_channels=24, num_bands=2)


def inputs(kind: str, adapter):
    if kind == "bytes":
        return adapter.encode(["a text", "a longer text", "x"])
    if kind == "image":
        return torch.randn(3, 3, 16, 16), None
    if kind == "audio":
        pad_mask = torch.arange(2000)[None, :] >= torch.tensor([[2000], [900], [1500]])
        return torch.randn(3, 2000), pad_mask
    ids, _ = adapter.adapters["text"].encode(["a text", "a longer text", "x"])
    return {"text": ids, "image": torch.randn(3, 3, 16, 16), "image_present": torch.tensor([True, False, True])}, None


ADAPTERS = {
    "bytes": byte_adapter,
    "image": image_adapter,
    "audio": audio_adapter,
    "multimodal": lambda: MultimodalAdapter(adapters={"text": byte_adapter(), "image": image_adapter()}),
}


def build(input_adapter, query_provider, output_adapter, **encoder_kwargs):
    encoder = PerceiverEncoder(num_input_channels=input_adapter.num_channels, num_latents=8, num_latent_channels=D,
                               num_self_attention_heads=4, num_self_attention_layers_per_block=2, **encoder_kwargs)
    decoder = PerceiverDecoder(query_provider=query_provider, output_adapter=output_adapter, num_latent_channels=D)
    return PerceiverIO(input_adapter=input_adapter, encoder=encoder, decoder=decoder)


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
@pytest.mark.parametrize("output", ["class", "tokens", "reconstruction"])
def test_every_adapter_with_every_output_gives_shapes_and_gradients(kind, output):
    torch.manual_seed(0)
    adapter = ADAPTERS[kind]()
    x, pad_mask = inputs(kind, adapter)
    num_tokens = adapter(x, pad_mask)[0].shape[1]
    query_args = {}
    if output == "class":
        queries, head, expected = ClassificationQuery(num_channels=D), ClassificationOutput(num_channels=D, num_classes=5), (3, 5)
    elif output == "tokens":
        queries, head, expected = TokenQueries(max_length=128, num_channels=D), TokenOutput(num_channels=D, vocab_size=7), (3, num_tokens, 7)
    else:
        queries = ReconstructionQueries(output_shapes={"grid": [4, 4]}, num_channels=D)
        head, expected = ReconstructionOutput(num_channels=D, num_values=6), (3, 5, 6)
        query_args = {"modality": "grid", "output_index": torch.tensor([0, 3, 5, 9, 15])}
    model = build(adapter, queries, head, num_self_attention_blocks=2, num_cross_attention_layers=2)
    out = model(x, pad_mask, **query_args)
    assert out.shape == expected
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.latents.grad.abs().sum() > 0


def classifier(adapter):
    return build(adapter, ClassificationQuery(num_channels=D), ClassificationOutput(num_channels=D, num_classes=4)).eval()


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_bytes_outputs_do_not_depend_on_batch_padding(backend):
    torch.manual_seed(0)
    adapter = byte_adapter(embed_channels=D)  # a tied output reads the embedding, so it needs the decoder's width
    model = build(adapter, TokenQueries(max_length=32, num_channels=D), TokenOutput(num_channels=D, tied=True)).eval()
    alone_ids, _ = adapter.encode(["short"])
    batch_ids, batch_mask = adapter.encode(["short", "a much longer neighbour"])
    with attention_backend(backend):
        alone = model(alone_ids)
        batched = model(batch_ids)
    assert batch_mask[0].sum() > 0  # the sample really is padded in the batch
    torch.testing.assert_close(batched[0, :5], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_spectrogram_outputs_do_not_depend_on_batch_padding(backend):
    torch.manual_seed(0)
    model = classifier(audio_adapter())
    clip = torch.randn(1, 1100)
    neighbour = torch.randn(1, 2000)
    batch = torch.cat([torch.cat([clip, torch.full((1, 900), 7.0)], dim=1), neighbour])
    pad_mask = torch.zeros(2, 2000, dtype=torch.bool)
    pad_mask[0, 1100:] = True
    with attention_backend(backend):
        torch.testing.assert_close(model(batch, pad_mask)[0], model(clip)[0], rtol=1e-5, atol=1e-5)


def test_multimodal_outputs_do_not_depend_on_a_missing_modality_of_the_batch():
    torch.manual_seed(0)
    adapter = ADAPTERS["multimodal"]()
    model = classifier(adapter)
    ids, _ = adapter.adapters["text"].encode(["some words", "other words, longer"])
    images = torch.randn(2, 3, 16, 16)
    batch = {"text": ids, "image": images, "image_present": torch.tensor([False, True])}
    text_only = {"text": ids[:1, :10]}
    torch.testing.assert_close(model(batch)[0], model(text_only)[0], rtol=1e-5, atol=1e-5)
    # and the image does matter where it is present
    assert not torch.allclose(model(batch)[1], model({"text": ids[1:]})[0], atol=1e-4)


def test_tied_model_saves_and_rebuilds(tmp_path):
    torch.manual_seed(0)
    adapter = byte_adapter(embed_channels=D)  # a tied output reads the embedding, so it needs the decoder's width
    model = build(adapter, TokenQueries(max_length=32, num_channels=D), TokenOutput(num_channels=D, tied=True)).eval()
    model.save_pretrained(tmp_path)
    rebuilt = PerceiverIO.from_pretrained(tmp_path).eval()
    ids, _ = adapter.encode(["tied weights"])
    torch.testing.assert_close(rebuilt(ids), model(ids), rtol=0, atol=0)
    with torch.no_grad():
        rebuilt.input_adapter.embedding.weight.add_(1.0)
    assert not torch.allclose(rebuilt(ids), model(ids))  # the output really reads the input embedding
