"""benchmarks.recording_conditions: every condition keeps the clips' padding right, and each cell of its table is the
experiment's own scoring of the conditioned clips, end to end from shards and a saved model."""

import json

import numpy as np
import pytest
import torch

from benchmarks import recording_conditions
from experiments import spoken_digits
from perceiver.data.build import encode_sample
from perceiver.data.errors import MissingShardsError
from perceiver.data.shards import ShardWriter
from perceiver.data.sources.base import stored_audio
from perceiver.masks import pad_mask_from_lengths
from tests.test_predict_digits import tiny_model, word

CLIPS = 6


@pytest.mark.parametrize("name", list(recording_conditions.CONDITIONS))
def test_each_condition_keeps_padding_trailing_and_silent_and_draws_from_its_generator(name):
    lengths = torch.tensor([16000, 9000, 12000])
    audio = torch.stack([torch.from_numpy(np.pad(word(seed, n / 16000, 16000), (0, 16000 - n)))
                         for seed, n in enumerate(lengths.tolist())])
    pad_mask = pad_mask_from_lengths(lengths, 16000)
    condition = recording_conditions.CONDITIONS[name][1]
    out, out_mask = condition(audio, pad_mask, torch.Generator().manual_seed(1))
    again, _ = condition(audio, pad_mask, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert out.shape == out_mask.shape and torch.all(out[out_mask] == 0)
    assert torch.equal(out_mask, pad_mask_from_lengths((~out_mask).sum(dim=1), out.shape[1]))
    changed = not (out.shape == audio.shape and torch.equal(out, audio))
    assert changed == (name != "clean")


@pytest.fixture()
def shards(tmp_path):
    return write_engine_shards(tmp_path / "data")


def write_engine_shards(data, dataset=spoken_digits.EVAL_DATASET):
    """An ``engine`` split of ``dataset`` in ``data``: clips labelled with the tiny model's own plain prediction, so
    that hits are not all zero."""
    model = tiny_model()
    with ShardWriter(data / dataset, dataset, "engine", shard_size=4) as writer:
        for i in range(CLIPS):
            waveform = np.pad(word(i, 0.6, 16000), (1600 * (i % 3), 800))  # silences of 0-0.2 s before
            audio, pad_mask = spoken_digits.cut_to_speech(
                torch.from_numpy(waveform)[None], torch.zeros(1, len(waveform), dtype=torch.bool),
                max_samples=model.input_adapter.max_samples, speech_margin=spoken_digits.SPEECH_MARGIN)
            with torch.no_grad():
                label = int(model(audio, pad_mask).argmax())
            writer.write(encode_sample({"key": f"clip_{i}", **stored_audio(waveform, 16000), "label": label,
                                        "meta": {"voice": "tone", "speech": "test"}}))
    return data


def test_each_cell_is_the_experiments_scoring_of_the_conditioned_clips(shards, tmp_path):
    model_dir = tmp_path / "run" / "model"
    tiny_model().save_pretrained(model_dir)
    out = tmp_path / "conditions"
    conditions = ["clean", "trimmed", "offset", "hum"]
    report = recording_conditions.main([str(model_dir), "--data", str(shards), "--splits", "engine", "--limit", "5",
                                        "--batch-size", "2", "--conditions", *conditions, "--threads", "1",
                                        "--out", str(out)])
    assert json.loads(out.with_suffix(".json").read_text()) == report
    assert "| model | split | clips | clean | trimmed | offset | hum |" in out.with_suffix(".md").read_text()
    (row,) = report["rows"]
    model = tiny_model()
    batches = list(recording_conditions.batches_of(
        sorted(str(p) for p in (shards / spoken_digits.EVAL_DATASET).glob("*.tar")), 5, 2))
    assert [len(b["label"]) for b in batches] == [2, 2, 1]  # the limit, in batches of two
    for name in conditions:
        plain_hits = averaged_hits = 0
        for index, batch in enumerate(batches):
            generator = torch.Generator().manual_seed(index)
            audio, pad_mask = recording_conditions.CONDITIONS[name][1](batch["audio"], batch["audio_pad_mask"],
                                                                       generator)
            audio, pad_mask = spoken_digits.cut_to_speech(audio, pad_mask, max_samples=model.input_adapter.max_samples,
                                                          speech_margin=spoken_digits.SPEECH_MARGIN)
            with torch.no_grad():
                plain, averaged = spoken_digits.plain_and_speed_averaged_log_probs(
                    model, audio, pad_mask, speeds=spoken_digits.EVAL_SPEEDS,
                    max_samples=model.input_adapter.max_samples)
            plain_hits += int((plain.argmax(1) == batch["label"]).sum())
            averaged_hits += int((averaged.argmax(1) == batch["label"]).sum())
        assert row[name] == {"clips": 5, "plain": plain_hits, "speed_averaged": averaged_hits}
    assert row["clean"]["plain"] >= 4  # the labels are the model's own predictions (the stored clips are 16-bit)


def test_dataset_picks_whose_evaluation_clips_are_read(tmp_path):
    """By default the shards of the default training set, which the README's command builds; --dataset names the
    other, and a set not built is an error with its build command."""
    assert spoken_digits.EVAL_DATASET == spoken_digits.VOICES[spoken_digits.DEFAULT_VOICES] == "spoken-digits-accented"
    model_dir = tmp_path / "run" / "model"
    tiny_model().save_pretrained(model_dir)
    data = write_engine_shards(tmp_path / "data", spoken_digits.DATASET)
    flags = [str(model_dir), "--data", str(data), "--splits", "engine", "--limit", "3", "--conditions", "clean",
             "--threads", "1"]
    report = recording_conditions.main(flags + ["--dataset", spoken_digits.DATASET])
    assert report["dataset"] == spoken_digits.DATASET and report["rows"][0]["clean"]["clips"] == 3
    assert f"- clips: {spoken_digits.DATASET}'s evaluation splits" in recording_conditions.markdown(report)
    with pytest.raises(MissingShardsError, match=f"python -m perceiver.data build {spoken_digits.EVAL_DATASET} "):
        recording_conditions.main(flags)


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        recording_conditions.main([str(tmp_path), "--limit", "5"])
    assert "models: expected a saved model folder" in capsys.readouterr().err
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    with pytest.raises(SystemExit):
        recording_conditions.main([str(model_dir), "--limit", "0"])
    assert "--limit: expected a positive number of clips, got 0" in capsys.readouterr().err
