"""Task builders: each width stated once, a plain PerceiverIO that saves and loads."""

import pytest
import torch

from perceiver import PerceiverIO, module_spec
from perceiver.adapters import ByteAdapter, ConvAdapter, PatchAdapter
from perceiver.builders import autoencoder, classifier, token_model


def test_classifier_takes_its_widths_from_the_adapter_and_the_latents(tmp_path):
    adapter = ConvAdapter(in_channels=1, max_size=(8, 8), channels=(4, 8), strides=(2, 2), num_bands=2)
    model = classifier(adapter, num_classes=5, num_latents=6, num_latent_channels=16, num_self_attention_heads=2,
                       num_self_attention_layers_per_block=1, widening_factor=2, init_scale=0.1)
    assert model.encoder.num_input_channels == adapter.num_channels
    assert model.decoder.num_latent_channels == 16 and model.decoder.query_provider.num_channels == 16
    assert model.encoder.config["self_attention_widening_factor"] == 2
    assert model.decoder.config["cross_attention_widening_factor"] == 2 and model.decoder.config["init_scale"] == 0.1
    x = torch.randn(3, 1, 8, 8)
    assert model(x).shape == (3, 5)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(PerceiverIO.from_pretrained(tmp_path / "m")(x), model(x))


def test_token_model_ties_its_output_to_the_byte_embedding():
    adapter = ByteAdapter(max_length=16, embed_channels=12)
    model = token_model(adapter, num_latents=4, num_latent_channels=8, num_self_attention_heads=2,
                        num_self_attention_layers_per_block=1)
    ids, _ = adapter.encode(["hello", "hi"])
    logits = model(ids)
    assert logits.shape == (2, ids.shape[1], adapter.embedding.num_embeddings)
    assert model.decoder.output_adapter._tied_embedding[0] is adapter.embedding


def test_autoencoder_decodes_a_subset_of_output_points():
    adapter = PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=4, embed_channels=8, num_bands=2)
    model = autoencoder(adapter, output_shapes={"image": [2, 2]}, num_values=16, num_bands=2, num_latents=4,
                        num_latent_channels=8, num_self_attention_heads=2, num_self_attention_layers_per_block=1)
    out = model(torch.randn(2, 1, 8, 8), modality="image", output_index=torch.tensor([0, 3]))
    assert out.shape == (2, 2, 16)


def test_builder_errors():
    with pytest.raises(TypeError, match="input_adapter: expected an InputAdapter"):
        classifier(torch.nn.Linear(2, 2), num_classes=3)
    with pytest.raises(ValueError, match="input_adapter: expected a token adapter"):
        token_model(ConvAdapter(in_channels=1, max_size=(8, 8), channels=(4,), strides=(2,)))


def test_classifier_draws_the_same_weights_as_the_hand_assembled_model():
    from perceiver import PerceiverDecoder, PerceiverEncoder
    from perceiver.adapters import ClassificationOutput, ClassificationQuery

    def adapter():
        return PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=4, embed_channels=8, num_bands=2)

    torch.manual_seed(0)
    by_hand_adapter = adapter()
    by_hand = PerceiverIO(
        input_adapter=by_hand_adapter,
        encoder=PerceiverEncoder(num_input_channels=by_hand_adapter.num_channels, num_latents=4, num_latent_channels=8,
                                 num_self_attention_heads=2, cross_attention_widening_factor=2,
                                 self_attention_widening_factor=2),
        decoder=PerceiverDecoder(query_provider=ClassificationQuery(num_channels=8),
                                 output_adapter=ClassificationOutput(num_channels=8, num_classes=3),
                                 num_latent_channels=8))
    torch.manual_seed(0)
    built = classifier(adapter(), num_classes=3, num_latents=4, num_latent_channels=8, num_self_attention_heads=2,
                       widening_factor=2, decoder_kwargs={"cross_attention_widening_factor": 1})
    assert module_spec(built) == module_spec(by_hand)
    expected = by_hand.state_dict()
    for name, value in built.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
