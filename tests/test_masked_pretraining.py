"""Masked patch pretraining: the hiding of patches, the patch targets, the linear probe, and a tiny run end to end."""

import json
import math

import pytest
import torch

from experiments import masked_pretraining
from experiments.common import seed_everything
from perceiver.adapters import PatchAdapter, normalize_patches
from perceiver.masks import pad_mask_from_index
from perceiver.probe import fit_linear_probe
from perceiver.training.plots import image_grid_figure

# The experiment's own flags, parsed by its own parser: a hand-kept Namespace would go stale as flags are added.
TINY_FLAGS = ["--patch-size", "7", "--embed-channels", "16", "--num-bands", "2", "--init-scale", "0.2",
              "--num-latents", "4", "--num-latent-channels", "16", "--num-cross-attention-heads", "2",
              "--num-self-attention-heads", "2", "--num-self-attention-layers", "1"]


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


def tiny_model():
    torch.manual_seed(0)
    return masked_pretraining.build_model(masked_pretraining.parse_arguments(TINY_FLAGS)).eval()


# ---------------------------------------------------------------------------------------------------- masking


def test_pad_mask_from_index_marks_exactly_the_given_positions():
    index = torch.tensor([[0, 3], [4, 1]])
    assert pad_mask_from_index(index, 5).tolist() == [[True, False, False, True, False],
                                                       [False, True, False, False, True]]
    with pytest.raises(ValueError, match=r"index: expected positions in \[0, 4\)"):
        pad_mask_from_index(index, 4)
    with pytest.raises(ValueError, match="index: expected a \\(B, K\\) tensor"):
        pad_mask_from_index(index[0], 5)


def test_hidden_patches_never_reach_the_encoder():
    model = tiny_model()
    images = torch.randn(3, 1, 28, 28)
    hidden_index = torch.tensor([[0, 5, 10], [15, 1, 2], [3, 8, 12]])  # of the 4 x 4 grid of 7 x 7 patches
    hidden = pad_mask_from_index(hidden_index, 16)

    def encode(x):
        tokens, _ = model.input_adapter(x)
        return model.encoder(tokens, hidden), masked_pretraining.predict_hidden(model, x, hidden_index)

    pixel_hidden = model.input_adapter.unpatchify(hidden[:, :, None].expand(-1, -1, 49).float()).bool()
    changed = torch.where(pixel_hidden, torch.randn_like(images) * 100, images)
    with torch.no_grad():
        latents, predicted = encode(images)
        latents_changed, predicted_changed = encode(changed)
        # The control: one visible pixel changed does change the encoder's output.
        visible = images.clone()
        visible[~pixel_hidden] += 1.0
        latents_visible, _ = encode(visible)
    assert torch.equal(latents, latents_changed) and torch.equal(predicted, predicted_changed)
    assert not torch.allclose(latents, latents_visible)
    assert predicted.shape == (3, 3, 49)


def test_num_hidden_keeps_one_patch_visible():
    model = tiny_model()  # 16 patches
    assert masked_pretraining.num_hidden(model, 0.75) == 12
    assert masked_pretraining.num_hidden(model, 0.5) == 8
    assert masked_pretraining.num_hidden(model, 0.99) == 15 and masked_pretraining.num_hidden(model, 0.01) == 1


def test_flags_of_a_stem_it_cannot_use_are_refused(capsys):
    """It hides patches, so it reads patch embeddings only: conv flags would be silently ignored, so none exist."""
    assert masked_pretraining.parse_arguments(TINY_FLAGS).input == "patches"
    for flags, named in ((["--input", "conv"], "--input"), (["--conv-channels", "16", "32"], "--conv-channels")):
        with pytest.raises(SystemExit):
            masked_pretraining.parse_arguments(TINY_FLAGS + flags)
        assert named in capsys.readouterr().err


def test_random_baseline_has_the_pretrained_models_initial_weights():
    args = masked_pretraining.parse_arguments(TINY_FLAGS)
    seed_everything(3)
    first = masked_pretraining.build_model(args).state_dict()
    seed_everything(3)
    second = masked_pretraining.build_model(args).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# ---------------------------------------------------------------------------------------------------- patch targets


def reference_patch_targets(images: torch.Tensor, patch: int, eps: float) -> torch.Tensor:
    """Per-patch normalised pixels in float64, patch by patch in row-major grid order, pixels row-major inside."""
    images = images.double()
    batch, channels, height, width = images.shape
    rows = []
    for b in range(batch):
        patches = []
        for i in range(height // patch):
            for j in range(width // patch):
                cell = images[b, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
                values = cell.permute(1, 2, 0).reshape(-1)  # (ph pw c), as patchify flattens
                mean = values.mean()
                std = math.sqrt(((values - mean) ** 2).mean().item() + eps)
                patches.append((values - mean) / std)
        rows.append(torch.stack(patches))
    return torch.stack(rows)


def test_patch_targets_match_a_float64_reference():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 12) * 4 + 1
    images[0, :, :4, :4] = 0.5  # a flat patch: normalised to zeros, not NaN
    adapter = PatchAdapter(in_channels=3, max_size=(8, 12), patch_size=4, embed_channels=8)
    targets = normalize_patches(adapter.patchify(images), eps=1e-6)
    expected = reference_patch_targets(images, 4, 1e-6)
    assert targets.dtype == torch.float32 and targets.shape == (2, 6, 48)
    torch.testing.assert_close(targets.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(targets[0, 0], torch.zeros(48))
    torch.testing.assert_close(normalize_patches(adapter.patchify(images.double()), eps=1e-6), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_size, size, patch", [((8, 12), (8, 12), 4), ((8, 12), (4, 8), 4), ((12,), (9,), 3)])
def test_unpatchify_inverts_patchify(max_size, size, patch):
    channels = 2
    adapter = PatchAdapter(in_channels=channels, max_size=max_size, patch_size=patch, embed_channels=8)
    x = torch.randn(3, channels, *size)
    assert torch.equal(adapter.unpatchify(adapter.patchify(x), size), x)


def test_unpatchify_names_the_expected_shape():
    adapter = PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=4, embed_channels=8)
    with pytest.raises(ValueError, match=r"patches: expected shape \(B, 4, 16\)"):
        adapter.unpatchify(torch.zeros(2, 5, 16))
    with pytest.raises(ValueError, match="size: expected 2 multiples of patch_size"):
        adapter.unpatchify(torch.zeros(2, 4, 16), (6, 8))


# ---------------------------------------------------------------------------------------------------- the probe


def blobs(generator, *, samples, classes=5, dims=16, spread=0.6):
    centres = torch.randn(classes, dims, generator=generator) * 3
    labels = torch.randint(0, classes, (samples,), generator=generator)
    return centres[labels] + spread * torch.randn(samples, dims, generator=generator) + 50.0, labels


def test_probe_separates_separable_features_and_not_random_labels():
    generator = torch.Generator().manual_seed(0)
    features, labels = blobs(generator, samples=1200)  # offset by 50: the probe standardises
    probe = fit_linear_probe(features[:800], labels[:800], num_classes=5)
    assert probe.accuracy(features[800:], labels[800:]) > 0.97
    shuffled = labels[torch.randperm(1200, generator=generator)]
    chance = fit_linear_probe(features[:800], shuffled[:800], num_classes=5).accuracy(features[800:], shuffled[800:])
    assert chance < 0.4  # 0.2 expected: the probe cannot generalise labels unrelated to the features


def test_probe_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"labels: expected classes in \[0, 3\)"):
        fit_linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), num_classes=3)
    with pytest.raises(ValueError, match=r"features: expected a float tensor of shape \(S, F\)"):
        fit_linear_probe(torch.randn(4), torch.tensor([0, 1, 2, 0]), num_classes=3)


def test_image_grid_figure_has_a_cell_per_sample_and_column():
    figure = image_grid_figure({"a": torch.rand(3, 1, 5, 5), "b": torch.full((3, 5, 5), float("nan"))})
    assert len(figure.axes) == 6 and figure.axes[0].get_title() == "a"
    with pytest.raises(ValueError, match="same number of images"):
        image_grid_figure({"a": torch.rand(3, 5, 5), "b": torch.rand(2, 5, 5)})


# ---------------------------------------------------------------------------------------------------- end to end


def test_masked_pretraining_tiny_run(tmp_path):
    out = tmp_path / "run"
    returned = masked_pretraining.main([
        "--out", str(out), "--data", str(tmp_path / "data"), "--wandb", "offline", "--limit", "40",
        "--max-steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "0",
        "--checkpoint-every", "0", "--no-progress", "--num-workers", "0", "--probe-train-samples", "30",
        "--mask-ratio", "0.5", *TINY_FLAGS,
    ])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert all(isinstance(value, (int, float, str, bool)) for value in metrics.values())  # flat
    assert metrics["steps"] == 3 and metrics["corrupt_samples"] == 0 and metrics["hidden_patches"] == 8
    for key in ("probe_accuracy_pretrained", "probe_accuracy_random", "probe_accuracy_pixels"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["probe_gain"] == pytest.approx(metrics["probe_accuracy_pretrained"] - metrics["probe_accuracy_random"])
    assert math.isfinite(metrics["final_train_loss"]) and metrics["test_reconstruction_mse"] > 0
    assert metrics["zero_prediction_mse"] > 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert any(path.name.startswith("reconstructions") for path in runs[0].rglob("eval/*.png"))
    assert (out / "reconstructions.png").is_file()
    assert (out / "model" / "config.json").is_file() and (out / "latest.pt").is_file()
