"""experiments.predict_digits: a saved spoken-digits model names the digits in audio files as the experiment's
evaluation scores them (cut to speech, log-probabilities averaged over playback speeds), with clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from experiments import predict_digits, spoken_digits
from perceiver import builders
from perceiver.adapters import PatchAdapter
from perceiver.data.codecs import decode_audio
from perceiver.training.checkpoint import LATEST, save_checkpoint

SPEEDS = (0.9, 1.0, 1.1)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    adapter = spoken_digits.build_adapter(spoken_digits.parse_arguments(
        ["--n-mels", "16", "--max-duration", "0.8", "--embed-channels", "8", "--conv-channels", "8",
         "--num-bands", "2"]))
    return builders.classifier(adapter, num_classes=10, num_latents=4, num_latent_channels=16,
                               num_cross_attention_heads=1, num_self_attention_heads=2).eval()


def word(seed: int, seconds: float, rate: int) -> np.ndarray:
    """A burst of harmonic sound between silences: something the cut to speech finds, different for each seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = rng.uniform(90, 250)
    tone = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    envelope = np.exp(-((t - seconds / 2) / (0.12 + 0.1 * rng.random())) ** 2)
    return (0.3 * tone * envelope / 4 + 1e-4 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture()
def model_dir(tmp_path):
    directory = tmp_path / "run" / "model"
    tiny_model().save_pretrained(directory)
    return directory


@pytest.fixture()
def recordings(tmp_path):
    folder = tmp_path / "recordings"
    (folder / "speaker").mkdir(parents=True)
    files = {"3_anna_0.wav": (16000, 1.0), "7.wav": (8000, 1.5), "speaker/0_bo_1.flac": (22050, 0.6),
             "speaker/3_bo_2.wav": (16000, 2.5)}
    for seed, (name, (rate, seconds)) in enumerate(files.items()):
        soundfile.write(folder / name, word(seed, seconds, rate), rate)
    (folder / "notes.txt").write_text("not audio")
    return folder


def expected(model, path, *, speeds, margin):
    """The experiment's own scoring of one file alone: decode, cut to speech, plain and speed-averaged."""
    audio = torch.from_numpy(decode_audio(path.read_bytes(), sample_rate=spoken_digits.SAMPLE_RATE))[None]
    pad_mask = torch.zeros_like(audio, dtype=torch.bool)
    max_samples = model.input_adapter.max_samples
    audio, pad_mask = spoken_digits.cut_to_speech(audio, pad_mask, max_samples=max_samples, speech_margin=margin)
    with torch.no_grad():
        plain, averaged = spoken_digits.plain_and_speed_averaged_log_probs(model, audio, pad_mask, speeds=speeds,
                                                                           max_samples=max_samples)
    torch.testing.assert_close(plain, model(audio, pad_mask).log_softmax(dim=-1), rtol=0, atol=0)
    return plain[0], averaged[0]


def test_predictions_match_the_experiments_scoring_of_each_file_alone(model_dir, recordings, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    result = predict_digits.main([str(model_dir), str(recordings), "--speeds", *map(str, SPEEDS), "--batch-size",
                                  "3", "--json", str(out), "--threads", "1", "--device", "cpu"])
    assert json.loads(out.read_text()) == result
    files = sorted(p for p in recordings.rglob("*") if p.suffix in (".wav", ".flac"))
    assert [p["file"] for p in result["predictions"]] == [str(p) for p in files]  # the text file is not audio
    model = tiny_model()
    for prediction, path in zip(result["predictions"], files):
        plain, averaged = expected(model, path, speeds=SPEEDS, margin=spoken_digits.SPEECH_MARGIN)
        assert prediction["digit"] == int(averaged.argmax()) and prediction["plain_digit"] == int(plain.argmax())
        assert prediction["probability"] == pytest.approx(float(averaged.max().exp()), abs=1e-4)
        assert prediction["label"] == int(path.name[0])
    report = result["accuracy"]
    hits = sum(p["digit"] == p["label"] for p in result["predictions"])
    plain_hits = sum(p["plain_digit"] == p["label"] for p in result["predictions"])
    assert (report["files"], report["speed_averaged_hits"], report["plain_hits"]) == (4, hits, plain_hits)
    assert {digit: row["files"] for digit, row in report["per_digit"].items()} == {"0": 1, "3": 2, "7": 1}
    printed = capsys.readouterr().out
    assert f"accuracy over 4 files: {hits / 4:.1%}" in printed and str(files[0]) in printed


def test_unreadable_and_too_short_files_are_skipped_named_and_counted(model_dir, recordings, capsys):
    scored_alone = predict_digits.main([str(model_dir), str(recordings)])
    (recordings / "5_broken.wav").write_text("not audio")
    soundfile.write(recordings / "2_click.wav", np.zeros(100, dtype=np.float32), 16000)
    soundfile.write(recordings / "4_muted.wav", np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    capsys.readouterr()
    result = predict_digits.main([str(model_dir), str(recordings)])
    assert result["predictions"] == scored_alone["predictions"]  # the others scored as without the bad files
    assert result["accuracy"] == scored_alone["accuracy"]  # over the files scored: the skipped are in no figure
    skipped = {Path(row["file"]).name: row["reason"] for row in result["skipped"]}
    assert skipped.keys() == {"5_broken.wav", "2_click.wav", "4_muted.wav"}
    assert "could not read" in skipped["5_broken.wav"] and "BytesIO" not in skipped["5_broken.wav"]
    assert "at least 400 samples" in skipped["2_click.wav"] and "got 100" in skipped["2_click.wav"]
    assert "16000 samples that all hold 0 (digital silence)" in skipped["4_muted.wav"]  # 8 kHz, resampled to 16
    printed = capsys.readouterr()
    assert all(f"skipped: {reason}" in printed.err for reason in skipped.values())
    assert "skipped 3 of 7 files" in printed.out and "scored 4" in printed.out
    with pytest.raises(ValueError, match="none of the 3 files can be scored"):  # every file bad: an error
        predict_digits.main([str(model_dir)] + [str(recordings / name) for name in skipped])


def test_a_clip_scores_the_same_in_any_batch(model_dir, recordings):
    def scores(batch_size):
        model = tiny_model()
        paths = predict_digits.find_recordings([recordings])
        waveforms = [predict_digits.read_recording(p, spoken_digits.SAMPLE_RATE, 400) for p in paths]
        return predict_digits.classify(model, waveforms, speeds=SPEEDS, speech_margin=0.1, batch_size=batch_size)

    for one, four in zip(scores(1), scores(4)):
        torch.testing.assert_close(one, four, rtol=0, atol=1e-5)


def test_margin_and_speeds_come_from_the_training_run_unless_given(model_dir, recordings):
    alone = predict_digits.main([str(model_dir), str(recordings / "7.wav")])  # no run folder around the model
    assert alone["speech_margin"] == spoken_digits.SPEECH_MARGIN and alone["speeds"] == list(spoken_digits.EVAL_SPEEDS)
    save_checkpoint(model_dir.parent / LATEST, {"run_config": {"speech_margin": 0.25, "eval_speeds": [1.0, 1.2]}})
    from_run = predict_digits.main([str(model_dir), str(recordings / "7.wav")])
    assert from_run["speech_margin"] == 0.25 and from_run["speeds"] == [1.0, 1.2]
    given = predict_digits.main([str(model_dir), str(recordings / "7.wav"), "--speech-margin", "0", "--speeds", "1"])
    assert given["speech_margin"] == 0.0 and given["speeds"] == [1.0]
    assert given["predictions"][0]["digit"] == given["predictions"][0]["plain_digit"]  # one speed: the plain score


def test_no_accuracy_unless_every_name_begins_with_its_digit(model_dir, recordings, capsys):
    (recordings / "hello.wav").write_bytes((recordings / "7.wav").read_bytes())
    result = predict_digits.main([str(model_dir), str(recordings)])
    assert "accuracy" not in result and all("label" not in p for p in result["predictions"])
    assert "no accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("name, digit", [("7.wav", 7), ("7_jackson_12.wav", 7), ("0-a.flac", 0), ("12.wav", None),
                                         ("7a.wav", None), ("seven.wav", None)])
def test_digit_in_name(name, digit, tmp_path):
    assert predict_digits.digit_in_name(tmp_path / name) == digit


def test_bad_input_gets_errors_that_name_it(model_dir, recordings, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="recordings: .*does not exist"):
        predict_digits.main([str(model_dir), str(tmp_path / "missing.wav")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="recordings: no audio files"):
        predict_digits.main([str(model_dir), str(tmp_path / "empty")])
    (tmp_path / "fake.wav").write_text("not audio")
    with pytest.raises(ValueError, match="could not read .*fake.wav"):
        predict_digits.main([str(model_dir), str(tmp_path / "fake.wav")])
    soundfile.write(tmp_path / "1_click.wav", np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="at least 400 samples .* got 100"):
        predict_digits.main([str(model_dir), str(tmp_path / "1_click.wav")])
    image_model = builders.classifier(PatchAdapter(in_channels=1, max_size=(8, 8), patch_size=4, embed_channels=8,
                                                   num_bands=2), num_classes=10, num_latents=2,
                                      num_latent_channels=8, num_cross_attention_heads=1, num_self_attention_heads=1)
    image_model.save_pretrained(tmp_path / "image-model")
    with pytest.raises(ValueError, match="model: expected a spoken-digits model .* got a PatchAdapter"):
        predict_digits.main([str(tmp_path / "image-model"), str(recordings)])
    for flags, named in ((["--speeds", "1", "0"], "--speeds"), (["--speech-margin", "-1"], "--speech-margin"),
                         (["--batch-size", "0"], "--batch-size"), (["--device", "gpu7"], "--device"),
                         *([(["--device", "cuda"], "--device")] if not torch.cuda.is_available() else [])):
        with pytest.raises(SystemExit):
            predict_digits.main([str(model_dir), str(recordings), *flags])
        assert named in capsys.readouterr().err
