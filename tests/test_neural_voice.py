"""benchmarks.neural_voice: Piper's joe voice says each digit in seeded ways that repeat, and every model scores the
folder exactly as experiments.predict_digits scores recordings."""

import json
from pathlib import Path

import pytest
import soundfile

from benchmarks import neural_voice
from experiments import predict_digits
from tests.test_predict_digits import tiny_model


def test_each_digit_is_said_the_seeded_ways_again_and_named_by_its_digit(tmp_path):
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    for folder in (first, again, other):
        folder.mkdir()
    clips = neural_voice.synthesize(first, per_digit=2, seed=0)
    assert neural_voice.synthesize(again, per_digit=2, seed=0) == clips
    assert [c["file"] for c in clips] == [f"{d}_joe_{k:03d}.wav" for d in range(10) for k in range(2)]
    for clip in clips:
        assert predict_digits.digit_in_name(first / clip["file"]) == int(clip["file"][0])
        assert clip["text"].rstrip(".!?").lower() == neural_voice.CLASSES[int(clip["file"][0])]
        assert neural_voice.LENGTH_SCALE[0] <= clip["length_scale"] <= neural_voice.LENGTH_SCALE[1]
        assert neural_voice.NOISE_SCALE[0] <= clip["noise_scale"] <= neural_voice.NOISE_SCALE[1]
        audio, rate = soundfile.read(first / clip["file"], dtype="float32")
        assert rate == 22050 and 0.15 < len(audio) / rate < 2.0 and abs(audio).max() > 0.1  # a word, not silence
        # the same seed writes the very same samples: the voice's own noise is seeded too
        assert (audio == soundfile.read(again / clip["file"], dtype="float32")[0]).all()
    assert neural_voice.synthesize(other, per_digit=2, seed=1) != clips


def test_the_table_is_predict_digits_scoring_of_the_utterances(tmp_path):
    model_dir = tmp_path / "run" / "model"
    tiny_model().save_pretrained(model_dir)
    out = tmp_path / "results" / "neural"
    words = tmp_path / "words"
    report = neural_voice.main([str(model_dir), "--per-digit", "1", "--words-dir", str(words), "--threads", "1",
                                "--out", str(out)])
    alone = predict_digits.main([str(model_dir), str(words), "--threads", "1"])
    (row,) = report["models"]
    assert row["digits"] == "".join(str(p["digit"]) for p in alone["predictions"])
    assert row["plain_digits"] == "".join(str(p["plain_digit"]) for p in alone["predictions"])
    assert row["accuracy"] == alone["accuracy"] and len(row["digits"]) == len(report["clips"]) == 10
    assert [Path(p["file"]).name for p in alone["predictions"]] == [c["file"] for c in report["clips"]]  # one order
    assert json.loads(out.with_suffix(".json").read_text()) == report
    hits = alone["accuracy"]["speed_averaged_hits"]
    assert f"| {model_dir} | {hits / 10:.1%} |" in out.with_suffix(".md").read_text()


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    with pytest.raises(SystemExit):
        neural_voice.main([str(model_dir), "--per-digit", "0"])
    assert "--per-digit: expected a positive number of utterances, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        neural_voice.main([str(tmp_path)])
    assert "models: expected a saved model folder" in capsys.readouterr().err
