"""The experiment scripts end to end: tiny shards built on demand, a tiny model, a few steps, metrics and wandb.

Also the pieces of the experiments that carry their own logic: the spoken-digit augmentation and the masked-byte
windows, corruption and scores.
"""

import argparse
import json
import math

import pytest
import torch

from experiments import fashion_mnist, shakespeare_mlm, spoken_digits
from perceiver.adapters import MASK_ID, PAD_ID

TINY_MODEL = ["--num-latents", "4", "--num-latent-channels", "16", "--embed-channels", "16",
              "--num-self-attention-layers", "1", "--num-self-attention-heads", "2"]
TINY_RUN = ["--max-steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--log-every", "1", "--eval-every", "0",
            "--checkpoint-every", "0", "--no-progress", "--num-workers", "0", *TINY_MODEL]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One folder of tiny shards shared by the runs of this module (each script builds its own dataset there)."""
    return tmp_path_factory.mktemp("data")


def run_experiment(module, out, data, *extra):
    returned = module.main(["--out", str(out), "--data", str(data), "--wandb", "offline", *TINY_RUN, *extra])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert all(isinstance(value, (int, float, str, bool)) for value in metrics.values())  # flat
    assert metrics["steps"] == 3 and metrics["corrupt_samples"] == 0 and metrics["parameters"] > 0
    assert metrics["train_seconds"] > 0 and math.isfinite(metrics["final_train_loss"])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (out / "model" / "config.json").is_file() and (out / "latest.pt").is_file()
    return metrics, runs[0]


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_fashion_mnist_tiny_run(tmp_path, data):
    metrics, _ = run_experiment(fashion_mnist, tmp_path / "run", data, "--limit", "40", "--patch-size", "7",
                                "--num-bands", "2")
    assert metrics["test_samples"] == 40 and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_spoken_digits_tiny_run_reports_held_out_voices_and_real_speech(tmp_path, data):
    metrics, wandb_run = run_experiment(spoken_digits, tmp_path / "run", data, "--limit", "20", "--num-bands", "2")
    assert metrics["test_samples"] == 20 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["real_samples"] == 10 and 0.0 <= metrics["real_accuracy"] <= 1.0  # all ten real recordings
    images = {path.name.rsplit("_", 2)[0] for path in wandb_run.rglob("*.png")}
    assert {"confusion_matrix", "real_confusion_matrix"} <= images


def test_spoken_digits_input_flag_swaps_the_patch_shape():
    # One second at 16 kHz: 98 frames (n_fft 400, hop 160), 25 time patches of 4 frames; 32 mel bins.
    for name, tokens_per_time_patch, width in (("patches", 4, 4 * 8), ("time-frames", 1, 4 * 32)):
        args = argparse.Namespace(input=name, patch_frames=4, patch_mels=8, n_mels=32, f_max=4000.0,
                                  max_duration=1.0, embed_channels=8, num_bands=2)
        adapter = spoken_digits.build_adapter(args)
        patches, pad_mask = adapter.patchify(torch.randn(2, 16000), torch.zeros(2, 16000, dtype=torch.bool))
        assert patches.shape == (2, 25 * tokens_per_time_patch, width) and pad_mask.shape == patches.shape[:2]


def test_shakespeare_mlm_tiny_run_reports_model_and_unigram_scores(tmp_path, data):
    metrics, _ = run_experiment(shakespeare_mlm, tmp_path / "run", data, "--limit", "24", "--window", "64")
    assert metrics["test_masked_bytes"] > 0
    assert 0.0 <= metrics["test_masked_accuracy"] <= 1.0 and 0.0 <= metrics["unigram_masked_accuracy"] <= 1.0
    # A near-uniform untrained model costs about log2(256) = 8 bits; the unigram baseline far less.
    assert 6.0 < metrics["test_bits_per_byte"] < 10.0
    assert 2.0 < metrics["unigram_bits_per_byte"] < 6.0


# ---------------------------------------------------------------------------------------------------- pieces


def test_augment_delays_each_waveform_and_keeps_padding_trailing():
    torch.manual_seed(0)
    audio = torch.arange(1, 13, dtype=torch.float32).reshape(2, 6)
    pad_mask = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    shifted, new_mask = spoken_digits.augment(audio, pad_mask, max_shift=4, snr_db=None)
    assert shifted.shape == (2, 10)
    for row, length in ((0, 6), (1, 3)):
        real = (~new_mask[row]).sum()
        delay = int(real) - length
        assert 0 <= delay <= 4
        assert torch.equal(shifted[row, :delay], torch.zeros(delay))
        assert torch.equal(shifted[row, delay:real], audio[row, :length])
        assert torch.equal(new_mask[row], torch.arange(10) >= real)  # trailing
        assert torch.all(shifted[row, real:] == 0)


def test_change_speed_stretches_each_waveform_by_its_factor():
    torch.manual_seed(0)
    audio = torch.sin(torch.arange(3 * 400, dtype=torch.float32).reshape(3, 400) / 10)
    pad_mask = torch.arange(400)[None, :] >= torch.tensor([[400], [200], [40]])
    slow, slow_mask = spoken_digits.change_speed(audio, pad_mask, speeds=(0.5, 0.5))
    assert (~slow_mask).sum(dim=1).tolist() == [800, 400, 80] and slow.shape == (3, 800)
    assert torch.equal(slow_mask, torch.arange(800)[None, :] >= torch.tensor([[800], [400], [80]]))  # trailing
    assert torch.all(slow[slow_mask] == 0)
    same, same_mask = spoken_digits.change_speed(audio, pad_mask, speeds=(1.0, 1.0))
    assert torch.equal(same_mask, pad_mask) and torch.allclose(same * ~same_mask, audio * ~pad_mask)


def test_augment_noise_has_the_asked_signal_to_noise_ratio():
    torch.manual_seed(0)
    audio = torch.randn(4, 20000, dtype=torch.float64).float()
    pad_mask = torch.zeros(4, 20000, dtype=torch.bool)
    noisy, _ = spoken_digits.augment(audio, pad_mask, max_shift=0, snr_db=(20.0, 20.0))
    noise = (noisy - audio).double()
    snr = 10 * torch.log10(audio.double().pow(2).mean(1) / noise.pow(2).mean(1))
    assert torch.allclose(snr, torch.full_like(snr, 20.0), atol=0.2)


def test_random_windows_cut_inside_the_real_bytes():
    torch.manual_seed(0)
    ids = torch.full((3, 10), PAD_ID)
    ids[0, :10] = torch.arange(10)
    ids[1, :6] = torch.arange(100, 106)
    ids[2, :2] = torch.tensor([7, 8])
    pad_mask = ids == PAD_ID
    for _ in range(20):
        windows, window_pad = shakespeare_mlm.random_windows(ids, pad_mask, 4)
        assert windows.shape == (3, 4)
        start = int(windows[0, 0])
        assert 0 <= start <= 6 and windows[0].tolist() == list(range(start, start + 4))
        start = int(windows[1, 0]) - 100
        assert 0 <= start <= 2 and windows[1].tolist() == list(range(100 + start, 104 + start))
        assert windows[2].tolist() == [7, 8, PAD_ID, PAD_ID] and window_pad[2].tolist() == [False, False, True, True]
        assert not window_pad[:2].any()


def test_consecutive_windows_cover_every_real_byte_once():
    ids = torch.full((2, 7), PAD_ID)
    ids[0] = torch.arange(7)
    ids[1, :2] = torch.tensor([50, 51])
    windows, window_pad = shakespeare_mlm.consecutive_windows(ids, ids == PAD_ID, 3)
    assert windows.tolist() == [[0, 1, 2], [3, 4, 5], [6, PAD_ID, PAD_ID], [50, 51, PAD_ID]]
    assert torch.equal(window_pad, windows == PAD_ID)


def test_mask_bytes_follows_bert_proportions_and_never_touches_padding():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (64, 1000), generator=generator)
    pad_mask = torch.zeros_like(ids, dtype=torch.bool)
    pad_mask[:, 900:] = True
    corrupted, chosen = shakespeare_mlm.mask_bytes(ids, pad_mask, rate=0.15, generator=generator)
    assert not (chosen & pad_mask).any()
    assert torch.equal(corrupted[~chosen], ids[~chosen])  # nothing else changes
    n = int(chosen.sum())
    assert abs(n / int((~pad_mask).sum()) - 0.15) < 0.005
    masked = (corrupted[chosen] == MASK_ID).sum() / n
    kept = (corrupted[chosen] == ids[chosen]).sum() / n  # includes random bytes that drew the same value (1/256)
    assert abs(float(masked) - 0.8) < 0.01
    assert abs(float(kept) - (0.1 + 0.1 / 256)) < 0.01
    assert int(corrupted[chosen].max()) <= MASK_ID and (corrupted[chosen] != PAD_ID).all()
