"""benchmarks.speech_or_noise: the frame range against a float64 reference, the seeded clips without speech, and the
table end to end from shards and a saved model."""

import json

import numpy as np
import pytest
import torch

from benchmarks import recording_conditions, speech_or_noise
from experiments import spoken_digits
from perceiver.masks import pad_mask_from_lengths
from tests.test_predict_digits import tiny_model
from tests.test_recording_conditions import write_engine_shards


def reference_range_db(waveform: np.ndarray) -> float:
    """The loudest 10-ms frame over the 10th percentile of frames, in dB, in float64 after the mean is removed."""
    real = waveform.astype(np.float64) - waveform.astype(np.float64).mean()
    frames = len(real) // speech_or_noise.FRAME
    energy = (real[: frames * speech_or_noise.FRAME].reshape(frames, -1) ** 2).mean(axis=1)
    return float(10 * np.log10(energy.max() / np.quantile(energy, 0.1)))


def test_frame_range_matches_a_float64_reference_alone_or_padded_and_is_0_for_one_value():
    rng = np.random.default_rng(0)
    signs = np.where(np.arange(speech_or_noise.FRAME) % 2, 1.0, -1.0)  # each frame's mean is 0
    amplitudes = rng.permutation(np.geomspace(0.001, 0.5, 30))  # frames 54 dB apart at most
    word = (np.concatenate([a * signs for a in amplitudes]) + 0.3).astype(np.float32)  # with an offset of 0.3
    expected = reference_range_db(word)
    assert 45 < expected < 54  # the offset, were it kept, would squeeze this to under 1 dB
    lengths = torch.tensor([len(word), len(word) // 2, 1000])
    audio = torch.zeros(3, len(word))
    audio[0], audio[1, : len(word) // 2], audio[2, :1000] = torch.from_numpy(word), torch.from_numpy(word[::2]), 0.25
    ranges = speech_or_noise.frame_range_db(audio, pad_mask_from_lengths(lengths, len(word)))
    assert ranges[0] == pytest.approx(expected, rel=1e-4)
    assert ranges[1] == pytest.approx(reference_range_db(word[::2]), rel=1e-4)  # its padding is not a frame
    assert ranges[2] == 0.0  # one value: nothing louder than anything else


def test_clips_without_speech_are_seeded_and_of_their_kind():
    first, again, other = (speech_or_noise.no_speech(4, seed) for seed in (0, 0, 1))
    assert list(first) == ["white noise", "pink noise", "brown noise", "mains hum over a faint hiss",
                           "digital silence"]
    for kind, (audio, pad_mask) in first.items():
        assert audio.shape == pad_mask.shape == (4, spoken_digits.SAMPLE_RATE) and not pad_mask.any()
        assert torch.equal(audio, again[kind][0])
        assert (kind == "digital silence") == (not audio.any())
        assert (kind == "digital silence") == torch.equal(audio, other[kind][0])
    ranges = {kind: speech_or_noise.frame_range_db(*clips).median() for kind, clips in first.items()}
    assert ranges["white noise"] < ranges["pink noise"] < ranges["brown noise"]  # slower swings, wider range


def test_each_row_summarises_its_clips_end_to_end(tmp_path):
    shards = write_engine_shards(tmp_path / "data")
    model_dir = tmp_path / "run" / "model"
    tiny_model().save_pretrained(model_dir)
    out = tmp_path / "speech_or_noise"
    report = speech_or_noise.main(["--model", str(model_dir), "--data", str(shards), "--splits", "engine",
                                   "--conditions", "clean", "hum", "--limit", "5", "--no-speech-clips", "3",
                                   "--threads", "1", "--out", str(out)])
    assert json.loads(out.with_suffix(".json").read_text()) == report
    table = out.with_suffix(".md").read_text()
    assert "| speech | engine, hum | 5 |" in table and "| no speech | digital silence | 3 |" in table
    assert [row["kind"] for row in report["rows"]] == ["engine, clean", "engine, hum", *speech_or_noise.no_speech(3, 0)]
    model = tiny_model()
    shard_paths = sorted(str(p) for p in (shards / spoken_digits.EVAL_DATASET).glob("*.tar"))
    batches = list(recording_conditions.batches_of(shard_paths, 5, 100))
    hum = [recording_conditions.CONDITIONS["hum"][1](b["audio"], b["audio_pad_mask"], torch.Generator().manual_seed(i))
           for i, b in enumerate(batches)]
    ranges = torch.cat([speech_or_noise.frame_range_db(*piece) for piece in hum])
    assert report["rows"][1]["frame_range_db"] == speech_or_noise.quantiles(ranges)
    silence = torch.zeros(3, spoken_digits.SAMPLE_RATE)
    with torch.no_grad():
        audio, pad_mask = spoken_digits.cut_to_speech(silence, torch.zeros_like(silence, dtype=torch.bool),
                                                      max_samples=model.input_adapter.max_samples,
                                                      speech_margin=spoken_digits.SPEECH_MARGIN)
        _, averaged = spoken_digits.plain_and_speed_averaged_log_probs(
            model, audio, pad_mask, speeds=spoken_digits.EVAL_SPEEDS, max_samples=model.input_adapter.max_samples)
    top = float(averaged.exp().amax(dim=1)[0])
    assert report["rows"][-1]["top_probability"] == pytest.approx([top] * len(speech_or_noise.QUANTILES), abs=1e-3)


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        speech_or_noise.main(["--model", str(tmp_path)])
    assert "--model: expected a saved model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speech_or_noise.main(["--limit", "0"])
    assert "--limit, --no-speech-clips: expected" in capsys.readouterr().err
