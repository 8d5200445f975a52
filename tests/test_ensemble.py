"""EnsembleClassifier: the mean of its members' log-probabilities, padding passed through, saved and loaded whole."""

import pytest
import torch

from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO, load_model
from perceiver.adapters import ClassificationOutput, ClassificationQuery, PatchAdapter
from perceiver.ensemble import EnsembleClassifier

D = 16


def classifier(seed: int, num_classes: int = 5) -> PerceiverIO:
    torch.manual_seed(seed)
    adapter = PatchAdapter(in_channels=1, max_size=(32,), patch_size=4, embed_channels=12, num_bands=2)
    return PerceiverIO(
        input_adapter=adapter,
        encoder=PerceiverEncoder(num_input_channels=adapter.num_channels, num_latents=4, num_latent_channels=D,
                                 num_self_attention_heads=2, num_self_attention_layers_per_block=1),
        decoder=PerceiverDecoder(query_provider=ClassificationQuery(num_channels=D),
                                 output_adapter=ClassificationOutput(num_channels=D, num_classes=num_classes),
                                 num_latent_channels=D),
    )


def signals(batch: int = 6, length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lengths = torch.tensor([32, 20, 32, 8, 12, 32])[:batch]
    pad_mask = torch.arange(length)[None] >= lengths[:, None]
    return x, pad_mask


def test_the_ensemble_is_the_normalised_mean_of_its_members_log_probabilities_in_float64():
    members = [classifier(seed).double().eval() for seed in (0, 1, 2)]
    ensemble = EnsembleClassifier(models=members).eval()
    x, pad_mask = signals()
    with torch.no_grad():
        found = ensemble(x, pad_mask)
        each = torch.stack([torch.log_softmax(member(x, pad_mask), dim=-1) for member in members])
    mean = each.mean(dim=0)
    expected = mean - torch.logsumexp(mean, dim=-1, keepdim=True)
    assert found.dtype == torch.float64
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found.exp().sum(dim=-1), torch.ones(len(x), dtype=torch.float64))
    # the members disagree, so the ensemble is none of them
    assert all(not torch.allclose(found, each[k]) for k in range(3))


def test_one_member_gives_its_own_log_probabilities_and_padding_reaches_the_members():
    member = classifier(0).double().eval()
    ensemble = EnsembleClassifier(models=[member]).eval()
    x, pad_mask = signals()
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x, pad_mask), member(x, pad_mask).log_softmax(dim=-1))
        # a padded sample scores as it does alone: the mask went through to the member
        alone = ensemble(x[1:2, :, :20], None)
        torch.testing.assert_close(ensemble(x, pad_mask)[1:2], alone, rtol=1e-10, atol=1e-10)


def test_an_ensemble_saves_and_loads_whole_with_the_first_members_input_adapter(tmp_path):
    ensemble = EnsembleClassifier(models=[classifier(0), classifier(1)]).eval()
    ensemble.save_pretrained(tmp_path / "model")
    loaded = load_model(tmp_path / "model").eval()
    assert isinstance(loaded, EnsembleClassifier) and len(loaded.models) == 2
    x, pad_mask = signals()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x.float(), pad_mask), ensemble(x.float(), pad_mask), rtol=0, atol=0)
    assert loaded.input_adapter is loaded.models[0].input_adapter


def test_bad_members_get_clear_errors():
    with pytest.raises(ValueError, match="models: expected at least one classifier"):
        EnsembleClassifier(models=[])
    ensemble = EnsembleClassifier(models=[classifier(0, num_classes=5), classifier(1, num_classes=3)])
    x, pad_mask = signals()
    with pytest.raises(ValueError, match=r"models: expected the members to give logits of one shape, got \[\(6, 3\), \(6, 5\)\]"):
        ensemble(x.float(), pad_mask)
