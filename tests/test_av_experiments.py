"""The audio-visual digit experiments: their inputs, the fusion and recovery scripts end to end, the run summary."""

import json
import math

import pytest
import torch

from experiments import av_fusion, av_recovery, common, resampler_digits, summarize
from perceiver import load_model
from perceiver.adapters import LabelAdapter

TINY_MODEL = ["--num-latents", "4", "--num-latent-channels", "16", "--embed-channels", "16", "--num-bands", "2",
              "--num-self-attention-layers", "1", "--num-self-attention-heads", "2", "--num-cross-attention-heads", "1"]
TINY_RUN = ["--max-steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "0",
            "--checkpoint-every", "0", "--no-progress", "--num-workers", "0", "--limit", "12", *TINY_MODEL]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


def run(module, out, data, *extra):
    returned = module.main(["--out", str(out), "--data", str(data), "--wandb", "offline", *TINY_RUN, *extra])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert all(isinstance(value, (int, float, str, bool)) for value in metrics.values())
    assert metrics["steps"] == 2 and metrics["corrupt_samples"] == 0 and math.isfinite(metrics["final_train_loss"])
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1 and (out / "latest.pt").is_file()
    return metrics


def assert_saved_model_loads(directory):
    """The run's model folder (config.json + model.safetensors) rebuilds the model with every weight."""
    loaded = load_model(directory)
    assert sum(p.numel() for p in loaded.parameters()) > 0
    return loaded


@pytest.mark.parametrize("variant", av_fusion.VARIANTS)
def test_fusion_variant_tiny_run_reports_each_test_condition_it_can_answer(tmp_path, data, variant):
    metrics = run(av_fusion, tmp_path / variant, data, "--variant", variant)
    expected = {"image": ["image_only"], "audio": ["audio_only"]}.get(variant, ["both", "image_only", "audio_only"])
    reported = sorted(key.removeprefix("test_accuracy_") for key in metrics if key.startswith("test_accuracy_"))
    assert reported == sorted(expected)
    assert all(0.0 <= metrics[f"test_accuracy_{name}"] <= 1.0 for name in expected)
    assert metrics["test_samples"] == 12 and metrics["variant"] == variant
    assert_saved_model_loads(tmp_path / variant / "model")


def test_recovery_tiny_run_reports_psnr_judged_accuracy_and_saves_the_grid(tmp_path, data):
    metrics = run(av_recovery, tmp_path / "recovery", data, "--classifier-steps", "2", "--image-points", "20",
                  "--audio-points", "8", "--grid-size", "3", "--query-bands", "2")
    for condition in av_recovery.CONDITIONS:
        assert math.isfinite(metrics[f"test_image_{condition}_psnr"])
        assert 0.0 <= metrics[f"test_image_{condition}_judged_accuracy"] <= 1.0
    assert math.isfinite(metrics["test_audio_from_image_psnr"])
    assert math.isfinite(metrics["test_baseline_class_mean_psnr"])
    assert math.isfinite(metrics["test_baseline_mean_image_psnr"])
    assert (tmp_path / "recovery" / "reconstructions.png").stat().st_size > 0
    assert (tmp_path / "recovery" / "image_classifier" / "model" / "config.json").is_file()


@pytest.mark.parametrize("summary", resampler_digits.SUMMARIES)
def test_resampler_tiny_run_classifies_variable_length_features_independently_of_padding(tmp_path, data, summary):
    metrics = run(resampler_digits, tmp_path / summary, data, "--summary", summary, "--num-tokens", "3",
                  "--token-channels", "8", "--num-heads", "2", "--num-resampler-layers", "1",
                  "--num-classifier-layers", "1")
    assert metrics["summary"] == summary and 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_samples"] == 12
    assert metrics["test_frames_min"] < metrics["test_frames_max"]  # the features really vary in length
    assert metrics["padding_max_abs_logit_gap"] < 1e-4
    loaded = assert_saved_model_loads(tmp_path / summary / "model")
    assert isinstance(loaded, resampler_digits.TokenClassifier) and loaded.summary == summary


def test_evaluation_degradations_are_the_same_whichever_modalities_are_asked_for():
    batch = {"image": torch.rand(2, 1, 28, 28), "audio": torch.randn(2, 4000),
             "audio_pad_mask": torch.zeros(2, 4000, dtype=torch.bool), "label": torch.tensor([1, 2])}
    degradation = common.Degradation(image_noise=0.3, occlusion=8, audio_snr_db=0.0)
    both, _ = common.av_model_inputs(batch, ("image", "audio"), "cpu", degradation, common.eval_generator(0))
    audio_only, _ = common.av_model_inputs(batch, ("audio",), "cpu", degradation, common.eval_generator(0))
    assert set(audio_only) == {"audio"} and torch.equal(both["audio"], audio_only["audio"])


def test_label_adapter_embeds_each_class_and_rejects_bad_labels():
    adapter = LabelAdapter(num_classes=3, num_channels=5)
    tokens, pad_mask = adapter(torch.tensor([2, 0, 2]))
    assert tokens.shape == (3, 1, 5) and pad_mask is None
    assert torch.equal(tokens[0], tokens[2]) and not torch.equal(tokens[0], tokens[1])
    with pytest.raises(ValueError, match=r"x: expected class indices in \[0, 3\), got values from 0 to 3"):
        adapter(torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="x: expected an integer dtype"):
        adapter(torch.tensor([0.0]))


def test_psnr_matches_its_definition_in_float64():
    target = torch.rand(2, 5, 3, dtype=torch.float64)
    reconstruction = target + 0.1 * torch.randn(2, 5, 3, dtype=torch.float64)
    peak = torch.tensor([1.0, 2.0], dtype=torch.float64)
    mse = ((reconstruction - target) ** 2).flatten(1).mean(dim=1)
    expected = 10 * torch.log10(peak**2 / mse)
    torch.testing.assert_close(av_recovery.psnr(reconstruction, target, peak), expected, rtol=1e-12, atol=1e-12)
    mask = torch.zeros(2, 5, 1, dtype=torch.bool)
    mask[:, 3:] = True  # the last two rows are padding and must not count
    expected_masked = 10 * torch.log10(peak**2 / ((reconstruction - target)[:, :3] ** 2).flatten(1).mean(dim=1))
    torch.testing.assert_close(av_recovery.psnr(reconstruction, target, peak, mask), expected_masked)


def test_summarize_tables_and_charts_runs(tmp_path):
    for name, accuracy in (("a", 0.5), ("b", 0.75)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy, "steps": 3}))
    table = summarize.main([str(tmp_path / "a"), str(tmp_path / "b"), "--keys", "test_accuracy", "steps", "missing",
                            "--plot", str(tmp_path / "chart.png")])
    assert table.splitlines()[2:] == ["| a | 50.0% | 3 | – |", "| b | 75.0% | 3 | – |"]
    assert (tmp_path / "chart.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        summarize.read_runs([tmp_path])
