"""The contrastive experiment end to end on tiny shards of both datasets, and its own pieces: the chance level of
recall, instance- against class-level hits, the direction of the zero-shot prototypes and the bias-free output."""

import json
import math
import random

import pytest
import torch

from experiments import contrastive

TINY_RUN = ["--max-steps", "3", "--batch-size", "8", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "0",
            "--checkpoint-every", "0", "--no-progress", "--num-workers", "0", "--num-latents", "4",
            "--num-latent-channels", "16", "--embed-channels", "16", "--embed-dim", "8",
            "--num-self-attention-layers", "1", "--num-self-attention-heads", "2", "--num-bands", "2"]


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run_experiment(out, data, *extra):
    returned = contrastive.main(["--out", str(out), "--data", str(data), "--wandb", "offline", *TINY_RUN, *extra])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert all(isinstance(value, (int, float, str, bool)) for value in metrics.values())  # flat
    assert metrics["steps"] == 3 and metrics["corrupt_samples"] == 0 and metrics["parameters"] > 0
    assert math.isfinite(metrics["final_train_loss"]) and metrics["logit_scale"] > 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert {path.name.rsplit("_", 2)[0] for path in runs[0].rglob("*.png")} == {"prototype_similarity"}
    assert (out / "latest.pt").is_file()
    return metrics


def test_av_digits_tiny_run_reports_class_level_retrieval_both_ways(tmp_path, data):
    metrics = run_experiment(tmp_path / "run", data, "--dataset", "av-digits", "--limit", "20")
    assert metrics["dataset"] == "av-digits" and metrics["test_pairs"] == 20
    for key in ("image_to_audio_recall_at_1", "image_to_audio_recall_at_5", "audio_to_image_recall_at_1",
                "audio_to_image_recall_at_5", "image_prototype_accuracy", "audio_prototype_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["image_to_audio_recall_at_1"] <= metrics["image_to_audio_recall_at_5"]
    assert 0.0 < metrics["chance_recall_at_1"] < metrics["chance_recall_at_5"] < 1.0
    assert metrics["chance_prototype_accuracy"] == pytest.approx(0.1)
    for modality in ("image", "audio"):
        assert (tmp_path / "run" / "model" / modality / "config.json").is_file()


def test_emoji_tiny_run_reports_instance_and_group_retrieval(tmp_path, data):
    metrics = run_experiment(tmp_path / "run", data, "--dataset", "emoji", "--limit", "30")
    pairs = metrics["test_pairs"]
    assert pairs >= 5
    for level in ("instance_", "group_"):
        for direction in ("image_to_caption", "caption_to_image"):
            assert 0.0 <= metrics[f"{level}{direction}_recall_at_1"] <= metrics[f"{level}{direction}_recall_at_5"] <= 1
    assert metrics["instance_chance_recall_at_1"] == pytest.approx(1 / pairs)  # one right caption per image
    assert metrics["instance_chance_recall_at_5"] == pytest.approx(5 / pairs)
    assert 0.0 <= metrics["image_prototype_accuracy"] <= 1.0 and 0.0 <= metrics["caption_prototype_accuracy"] <= 1.0
    assert (tmp_path / "run" / "model" / "caption" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------- pieces


def test_chance_recall_matches_the_average_over_random_rankings():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    rng = random.Random(0)
    for k in (1, 3):
        hits = 0
        trials = 4000
        for _ in range(trials):
            query = rng.randrange(len(labels))
            drawn = rng.sample(range(len(labels)), k)
            hits += any(labels[i] == labels[query] for i in drawn)
        assert contrastive.chance_recall(labels, labels, k) == pytest.approx(hits / trials, abs=0.025)
    assert contrastive.chance_recall(torch.arange(8), torch.arange(8), 2) == pytest.approx(2 / 8)


def test_retrieval_counts_a_same_class_item_at_class_level_but_only_the_partner_at_instance_level():
    # Pairs (0, 1), (2, 3), (4, 5) share a class. Each caption lies nearest to its image's classmate and second
    # nearest to its own image (and the other way round), with every other pairing orthogonal.
    classmate = torch.tensor([1, 0, 3, 2, 5, 4])
    image = torch.eye(6)
    caption = torch.eye(6)[classmate] + 0.5 * torch.eye(6)
    embeddings = {"image": image, "caption": caption}
    class_level = contrastive.retrieval_metrics(embeddings, torch.tensor([0, 0, 1, 1, 2, 2]))
    instance_level = contrastive.retrieval_metrics(embeddings, torch.arange(6), level="instance")
    assert class_level["image_to_caption_recall_at_1"] == pytest.approx(1.0)
    assert class_level["caption_to_image_recall_at_1"] == pytest.approx(1.0)
    assert class_level["chance_recall_at_1"] == pytest.approx(2 / 6)
    for direction in ("image_to_caption", "caption_to_image"):
        assert instance_level[f"instance_{direction}_recall_at_1"] == pytest.approx(0.0)
        assert instance_level[f"instance_{direction}_recall_at_5"] == pytest.approx(1.0)  # the partner comes second
    assert instance_level["instance_chance_recall_at_1"] == pytest.approx(1 / 6)


def test_prototypes_come_from_the_other_modality():
    # Training audio separates the two classes; training images all collapse on one direction. Test images lie on
    # their class's audio direction, so they are classified by audio prototypes only if those are used for them.
    train_labels = torch.tensor([0, 0, 1, 1])
    trained = {"image": torch.tensor([[0.0, 0.0, 1.0]] * 4),
               "audio": torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 1.0, 0.0]])}
    test_labels = torch.tensor([0, 1, 1])
    test = {"image": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),
            "audio": torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    metrics, similarity = contrastive.prototype_metrics(trained, train_labels, test, test_labels, num_classes=2)
    assert metrics["image_prototype_accuracy"] == pytest.approx(1.0)
    # Both image prototypes are the same vector: every test audio goes to the first class (argmax of a tie).
    assert metrics["audio_prototype_accuracy"] == pytest.approx(1 / 3)
    assert metrics["chance_prototype_accuracy"] == pytest.approx(0.5)
    assert metrics["majority_prototype_accuracy"] == pytest.approx(2 / 3)
    assert similarity.shape == (2, 2) and torch.allclose(similarity[0], similarity[1])  # rows: image prototypes


def test_embedders_have_a_frozen_zero_output_bias():
    args, dataset = contrastive.parse_args(["--num-latents", "4", "--num-latent-channels", "16", "--embed-channels",
                                            "16", "--embed-dim", "8", "--num-self-attention-layers", "1",
                                            "--num-self-attention-heads", "2", "--num-bands", "2"])
    torch.manual_seed(0)
    model = contrastive.build_model(dataset, args)
    audio = torch.randn(4, 16000)
    embeddings = model({"image": torch.rand(4, 1, 28, 28), "audio": audio},
                       {"audio": torch.zeros(4, 16000, dtype=torch.bool)})
    model.loss(embeddings, "image", "audio").backward()
    for modality, embedder in model.embedders.items():
        linear = embedder.decoder.output_adapter.linear
        assert not linear.bias.requires_grad and linear.bias.grad is None, modality
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias)), modality
        assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0, modality


def test_shift_images_moves_content_and_fills_the_border():
    torch.manual_seed(0)
    images = torch.zeros(16, 3, 8, 8)
    images[:, :, 3, 4] = 5.0
    shifted = contrastive.shift_images(images, 2, fill=1.0)
    assert shifted.shape == images.shape
    for image in shifted:
        assert (image == 5.0).sum() == 3  # the one marked pixel in each channel, moved by at most 2
        row, col = [int(i) for i in (image[0] == 5.0).nonzero()[0]]
        assert abs(row - 3) <= 2 and abs(col - 4) <= 2
        dy, dx = row - 3, col - 4
        # The border uncovered by the shift is filled with 1.0, the rest with the original zeros.
        uncovered = torch.zeros(8, 8, dtype=torch.bool)
        if dy > 0:
            uncovered[:dy] = True
        if dy < 0:
            uncovered[dy:] = True
        if dx > 0:
            uncovered[:, :dx] = True
        if dx < 0:
            uncovered[:, dx:] = True
        assert torch.all(image[:, uncovered] == 1.0) and torch.all(image[:, ~uncovered & (image[0] != 5.0)] == 0.0)


def test_parse_args_fills_the_patch_size_per_dataset_and_rejects_bad_values(capsys):
    assert contrastive.parse_args([])[0].patch_size == 4
    assert contrastive.parse_args(["--dataset", "emoji"])[0].patch_size == 8
    for bad in (["--patch-size", "5"], ["--dataset", "emoji", "--patch-size", "7"], ["--embed-dim", "0"],
                ["--image-shift", "-1"], ["--temperature", "0"]):
        with pytest.raises(SystemExit):
            contrastive.parse_args(bad)
        assert f"--{bad[-2].lstrip('-')}" in capsys.readouterr().err, bad
