"""The Perceiver AR experiment end to end at a tiny size, and its pieces."""

import json
import math

import pytest
import torch

from experiments import shakespeare_ar

TINY = ["--max-steps", "3", "--batch-size", "2", "--warmup-steps", "1", "--log-every", "1", "--no-progress",
        "--num-workers", "0", "--wandb", "disabled", "--limit", "24", "--num-latents", "8", "--num-latent-channels",
        "16", "--num-self-attention-heads", "2", "--num-self-attention-layers", "2", "--context", "64",
        "--gpt-context", "16", "--eval-block", "8", "--eval-blocks", "4", "--prompt-bytes", "16", "--sample-bytes",
        "12", "--samples", "2"]


def test_tiny_run_of_both_models_writes_metrics_and_samples(tmp_path):
    out = tmp_path / "run"
    combined = shakespeare_ar.main(["--out", str(out), "--data", str(tmp_path / "data"), *TINY])
    assert json.loads((out / "metrics.json").read_text()) == combined
    assert combined["ar_context"] == 64 and combined["gpt_context"] == 16 and combined["ar_num_latents"] == 8
    assert combined["ar_parameters"] == combined["gpt_parameters"]  # rotary positions: the same layers, no table
    for kind in ("ar", "gpt"):
        metrics = json.loads((out / kind / "metrics.json").read_text())
        assert metrics["steps"] == 3 and metrics["eval_bytes"] == 32
        # An untrained model costs about log2(256) = 8 bits per byte.
        assert 6.0 < metrics["test_bits_per_byte"] < 10.0
        assert isinstance(metrics["sample_0"], str) and isinstance(metrics["sample_1"], str)
        assert (out / kind / "model" / "config.json").is_file()
    assert math.isclose(combined["ar_minus_gpt_bits_per_byte"],
                        combined["ar_test_bits_per_byte"] - combined["gpt_test_bits_per_byte"])


def test_bad_flags_name_the_flag(tmp_path):
    with pytest.raises(SystemExit):
        shakespeare_ar.main(["--out", str(tmp_path), "--context", "64", "--num-latents", "128"])


def test_random_windows_are_reproducible_slices_of_the_stream():
    stream = torch.arange(100, dtype=torch.uint8)
    batches = shakespeare_ar.random_windows(stream, length=10, batch_size=3, seed=1)
    first = next(iter(batches(0)))["ids"]
    assert torch.equal(first, next(iter(batches(0)))["ids"])
    assert not torch.equal(first, next(iter(batches(1)))["ids"])
    assert first.shape == (3, 10) and ((first[:, 1:] - first[:, :-1]) == 1).all()


def test_bits_per_byte_scores_the_block_after_each_context():
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            assert x.shape[1] == 12  # exactly the context
            return torch.zeros(*x.shape, 256)

    stream = torch.arange(200, dtype=torch.uint8)
    starts = shakespeare_ar.eval_starts(len(stream), context=12, block=4, blocks=5)
    assert starts[0] == 12 and starts[-1] == 196
    assert shakespeare_ar.bits_per_byte(Uniform(), stream, starts, context=12, block=4) == pytest.approx(8.0)
