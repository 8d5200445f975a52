"""The experiment scripts end to end: tiny shards built on demand, a tiny model, a few steps, metrics and wandb.

Also the pieces of the experiments that carry their own logic: the spoken-digit adapters and augmentation flags and
the masked-byte windows, corruption and scores (the augmentations themselves are tested in test_augment.py).
"""

import json
import math

import pytest
import soundfile
import torch

from experiments import fashion_mnist, predict_digits, shakespeare_mlm, spoken_digits
from experiments import members as member_runs
from experiments.common import shard_directory, shift_and_flip_images
from perceiver import builders, load_model
from perceiver.adapters import MASK_ID, PAD_ID
from perceiver.data import make_loader
from perceiver.ensemble import EnsembleClassifier

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
                                "--num-bands", "2", "--occlusion", "7")
    assert metrics["test_samples"] == 40 and 0.0 <= metrics["test_accuracy"] <= 1.0
    mirrored_hits = metrics["test_accuracy_with_mirror"] * 40  # a whole number of the 40 test images
    assert 0.0 <= mirrored_hits <= 40 and abs(mirrored_hits - round(mirrored_hits)) < 1e-6


def test_fashion_mnist_members_are_scored_as_their_ensemble(tmp_path, data, monkeypatch, capsys):
    """``--members 2``: two runs (seeds 0 and 1) and the test accuracy of the mean of their log-probabilities; trained
    in turns, they share the clock budget."""
    out = tmp_path / "run"
    budgets, train_one = [], fashion_mnist.train_one
    monkeypatch.setattr(fashion_mnist, "train_one", lambda args: budgets.append(args.max_minutes) or train_one(args))
    returned = fashion_mnist.main(["--out", str(out), "--data", str(data), "--wandb", "offline", *TINY_RUN, "--limit",
                                   "40", "--patch-size", "7", "--num-bands", "2", "--members", "2",
                                   "--members-at-once", "1", "--max-minutes", "10"])
    assert budgets == [5.0, 5.0] and "2 turns of 5 min (--max-minutes 10 shared)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned and metrics["members"] == 2 and metrics["test_samples"] == 40
    members = [json.loads((out / f"member-{k}" / "metrics.json").read_text()) for k in range(2)]
    for k, found in enumerate(members):
        assert metrics[f"member{k}_test_accuracy"] == found["test_accuracy"]
    saved = [load_model(out / f"member-{k}" / "model").eval() for k in range(2)]
    assert any(not torch.equal(a, b) for a, b in zip(*(m.state_dict().values() for m in saved)))  # seeds 0 and 1
    assert isinstance(load_model(out / "model"), EnsembleClassifier)
    test_shards = sorted(shard_directory(data, "fashion-mnist", 40).glob("fashion-mnist-test-*.tar"))
    batch = next(iter(make_loader(test_shards, batch_size=40, mode="epoch", shuffle=False)))
    images = fashion_mnist.normalize_fashion(batch["image"])
    with torch.no_grad():
        log_probs = [m(images).log_softmax(-1) for m in saved]
        mirrored = [m(images.flip(-1)).log_softmax(-1) for m in saved]
    mean = torch.stack(log_probs).mean(0)
    assert metrics["test_accuracy"] == pytest.approx((mean.argmax(1) == batch["label"]).float().mean().item())
    # the mirror: the ensemble's output (a normalised mean of log-probabilities) summed over the image and its mirror
    both = mean.log_softmax(-1) + torch.stack(mirrored).mean(0).log_softmax(-1)
    assert metrics["test_accuracy_with_mirror"] == pytest.approx((both.argmax(1) == batch["label"]).float().mean().item())


def test_image_augmentation_flags_choose_shifts_and_flips_apart():
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert shift_and_flip_images(images, 0, False) is images  # no augmentation at all
    torch.manual_seed(0)
    flipped_only = shift_and_flip_images(images, 0, True)
    mirrored = torch.tensor([torch.equal(out, image.flip(-1)) for out, image in zip(flipped_only, images)])
    kept = torch.tensor([torch.equal(out, image) for out, image in zip(flipped_only, images)])
    assert torch.all(mirrored ^ kept) and 16 <= int(mirrored.sum()) <= 48  # each image mirrored or not, about half
    torch.manual_seed(0)
    shifted_only = shift_and_flip_images(images, 2, False)
    assert not any(torch.equal(out, image.flip(-1)) for out, image in zip(shifted_only, images))
    assert not torch.equal(shifted_only, images)


def test_spoken_digits_tiny_run_reports_held_out_voices_engine_and_real_speech(tmp_path, data):
    metrics, wandb_run = run_experiment(spoken_digits, tmp_path / "run", data, "--limit", "20", "--num-bands", "2")
    assert metrics["test_samples"] == 20 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["engine_samples"] == 20 and 0.0 <= metrics["engine_accuracy"] <= 1.0
    assert metrics["real_samples"] == 10 and 0.0 <= metrics["real_accuracy"] <= 1.0  # all ten real recordings
    assert len(metrics["real_predictions"]) == 10 and set(metrics["real_predictions"]) <= set("0123456789")
    real_hits = sum(int(p) == digit for digit, p in enumerate(metrics["real_predictions"]))
    assert real_hits == round(10 * metrics["real_accuracy"])
    for split, samples in (("test", 20), ("engine", 20), ("real", 10)):  # whole numbers of clips right
        hits = metrics[f"{split}_speed_averaged_accuracy"] * samples
        assert 0.0 <= hits <= samples and abs(hits - round(hits)) < 1e-6
    per_engine = [key for key in metrics if key.startswith("test_accuracy_")]
    assert per_engine and all(0.0 <= metrics[key] <= 1.0 for key in per_engine)
    matrices = json.loads((tmp_path / "run" / "confusion_matrices.json").read_text())
    assert {split: sum(map(sum, m)) for split, m in matrices.items()} == {"test": 20, "engine": 20, "real": 10}
    images = {path.name.rsplit("_", 2)[0] for path in wandb_run.rglob("*.png")}
    assert {"confusion_matrix", "engine_confusion_matrix", "real_confusion_matrix"} <= images


@pytest.mark.parametrize("flag, dataset", [([], "spoken-digits-accented"), (["--voices", "plain"], "spoken-digits")])
def test_spoken_digits_voices_pick_their_own_shards(tmp_path, monkeypatch, flag, dataset):
    asked = []
    monkeypatch.setattr(spoken_digits, "ensure_shards", lambda name, *rest, **kwargs: asked.append(name) or {})
    args = spoken_digits.parse_arguments(["--out", str(tmp_path / "run"), *flag])
    spoken_digits.run_shards(args)
    assert asked == [dataset] and "festival-accented" in args.engines


def test_spoken_digits_members_take_the_voices_in_turn(tmp_path, monkeypatch, capsys):
    args = spoken_digits.parse_arguments(["--out", str(tmp_path / "run"), "--members", "3", "--voices", "plain",
                                          "accented"])
    assert [spoken_digits.member_voices(args, k) for k in range(3)] == ["plain", "accented", "plain"]
    member = member_runs.member_arguments(args, 1, **spoken_digits.member_flags(args, 1))
    assert spoken_digits.member_voices(member) == "accented" and member.seed == 1
    asked = []
    monkeypatch.setattr(spoken_digits, "ensure_shards", lambda name, *rest, **kwargs: asked.append(name) or {})
    spoken_digits.run_shards(member)
    assert asked == ["spoken-digits-accented"]
    # The ensemble builds every member's training set before any member runs, then trains none here.
    monkeypatch.setattr(spoken_digits, "train_members", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    asked.clear()
    with pytest.raises(RuntimeError, match="stop"):
        spoken_digits.train_ensemble(args)
    assert asked == ["spoken-digits", "spoken-digits-accented"]
    with pytest.raises(SystemExit):
        spoken_digits.parse_arguments(["--voices", "plain", "accented"])
    assert "--voices: each member trains on one training set, in turn: expected at most --members 1 values, got 2" \
        in capsys.readouterr().err


def test_spoken_digits_members_train_apart_and_are_scored_as_their_ensemble(tmp_path, data, capsys):
    out = tmp_path / "run"
    argv = ["--out", str(out), "--data", str(data), "--wandb", "offline", *TINY_RUN, "--limit", "20", "--num-bands",
            "2", "--members", "2", "--eval-speeds", "1", "--conv", "time", "time-mel-frames", "--conv-channels", "8",
            "--floor-db", "none", "30"]
    returned = spoken_digits.main(argv)
    printed = capsys.readouterr().out
    assert ("member 1 of 2: seed 1, --conv time-mel-frames --conv-channels 8 --floor-db 30.0 --voices accented, in"
            in printed)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned and metrics["members"] == 2 and metrics["test_samples"] == 20
    members = [json.loads((out / f"member-{k}" / "metrics.json").read_text()) for k in range(2)]
    assert [found["steps"] for found in members] == [3, 3] and metrics["steps"] == 3
    assert metrics["train_seconds"] == pytest.approx(sum(found["train_seconds"] for found in members), abs=0.02)
    for k, found in enumerate(members):
        assert metrics[f"member{k}_test_accuracy"] == found["test_accuracy"]
        assert metrics[f"member{k}_real_predictions"] == found["real_predictions"]
    ensemble = load_model(out / "model").eval()
    assert isinstance(ensemble, EnsembleClassifier) and len(ensemble.models) == 2
    assert [member.input_adapter.frontend.floor_db for member in ensemble.models] == [None, 30.0]
    assert [m.input_adapter.config["conv"] for m in ensemble.models] == ["time", "time-mel-frames"]  # one stem each
    saved = [load_model(out / f"member-{k}" / "model").eval() for k in range(2)]
    for member, inside in zip(saved, ensemble.models):
        assert all(torch.equal(a, b) for a, b in zip(member.state_dict().values(), inside.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(*(m.state_dict().values() for m in saved)))  # two stems
    # The ensemble's answer for each real recording (one per digit, in order): the mean of the members' log-probs.
    max_samples = ensemble.input_adapter.max_samples
    dataset = "spoken-digits-accented"  # the default --voices
    real_shards = sorted(shard_directory(data, dataset, 20).glob(f"{dataset}-real-*.tar"))
    batch = next(iter(make_loader(real_shards, batch_size=10, mode="epoch", shuffle=False)))
    order = batch["label"].argsort()
    audio, pad_mask = spoken_digits.cut_to_speech(batch["audio"][order], batch["audio_pad_mask"][order],
                                                  max_samples=max_samples, speech_margin=spoken_digits.SPEECH_MARGIN)
    with torch.no_grad():
        mean = torch.stack([m(audio, pad_mask).log_softmax(-1) for m in saved]).mean(0)
    assert metrics["real_predictions"] == "".join(str(int(d)) for d in mean.argmax(1))
    # predict_digits reads an ensemble's folder like a model's, with the settings of its members' runs
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for digit, (clip, mask) in enumerate(zip(batch["audio"][order], batch["audio_pad_mask"][order])):
        soundfile.write(recordings / f"{digit}.wav", clip[~mask].numpy(), spoken_digits.SAMPLE_RATE, subtype="FLOAT")
    predicted = predict_digits.main([str(out / "model"), str(recordings)])
    assert predicted["speeds"] == [1.0]  # the members' --eval-speeds, not the default five
    assert "".join(str(p["plain_digit"]) for p in predicted["predictions"]) == metrics["real_predictions"]
    # --resume keeps finished members and scores their ensemble again
    capsys.readouterr()
    assert spoken_digits.main([*argv, "--resume"])["real_predictions"] == metrics["real_predictions"]
    printed = capsys.readouterr().out
    assert "member 0: finished" in printed and "member 1: finished" in printed


def test_spoken_digits_members_side_by_side_train_as_one_after_another(tmp_path, data, capsys, monkeypatch):
    """Two members at once, each in a process of its own on one thread, end with the weights that one after another
    on one thread give; each writes its output to its own log."""
    argv = ["--data", str(data), "--wandb", "offline", *TINY_RUN, "--limit", "20", "--num-bands", "2", "--members",
            "2", "--eval-speeds", "1", "--conv", "time", "time-mel-frames", "--conv-channels", "8"]
    apart = spoken_digits.main(["--out", str(tmp_path / "apart"), *argv, "--threads", "1"])
    capsys.readouterr()
    monkeypatch.setattr(member_runs, "STATUS_SECONDS", 0.0)  # --no-progress (TINY_RUN): a status line every poll
    together = spoken_digits.main(["--out", str(tmp_path / "together"), *argv, "--threads", "2", "--members-at-once",
                                   "2"])
    printed = capsys.readouterr().out
    assert apart["members_at_once"] == 1 and together["members_at_once"] == 2
    for k in range(2):
        log = tmp_path / "together" / f"member-{k}" / "train.log"
        assert f"output in {log}" in printed and f"member {k}: finished" in printed
        assert member_runs.logged_step(log) == 3 and "CPU threads: 1 (as asked (--threads))" in log.read_text()
        assert f"{k} at step 3/3" in printed  # the last poll before the member ended read its last step
        one, other = (load_model(tmp_path / run / f"member-{k}" / "model").state_dict()
                      for run in ("apart", "together"))
        assert all(torch.equal(one[name], other[name]) for name in one)
    assert together["real_predictions"] == apart["real_predictions"]
    assert together["test_accuracy"] == apart["test_accuracy"]


def test_a_member_that_fails_leaves_the_others_trained_and_names_its_log(tmp_path, data):
    out = tmp_path / "run"
    (out / "member-1").mkdir(parents=True)
    (out / "member-1" / "latest.pt").write_bytes(b"not a checkpoint")  # --resume cannot read it: member 1 fails
    argv = ["--out", str(out), "--data", str(data), "--wandb", "offline", *TINY_RUN, "--limit", "20", "--num-bands",
            "2", "--members", "2", "--eval-speeds", "1", "--threads", "2", "--members-at-once", "2", "--resume"]
    with pytest.raises(RuntimeError, match=r"(?s)members failed: member 1 \(.*its log: .*member-1/train\.log\)$"):
        spoken_digits.main(argv)
    assert json.loads((out / "member-0" / "metrics.json").read_text())["steps"] == 3  # the other member finished
    assert not (out / "member-1" / "metrics.json").exists() and not (out / "model").exists()
    assert "Traceback" in (out / "member-1" / "train.log").read_text()


def test_members_at_once_defaults_to_one_member_per_thread_on_a_cpu():
    args = spoken_digits.parse_arguments(["--members", "4", "--threads", "2", "--device", "cpu"])
    assert member_runs.members_at_once(args, pending=4) == (2, 1)
    assert member_runs.members_at_once(args, pending=1) == (1, 2)  # one left: it gets both threads
    args = spoken_digits.parse_arguments(["--members", "4", "--threads", "4", "--members-at-once", "3"])
    assert member_runs.members_at_once(args, pending=4) == (3, 1)
    with pytest.raises(SystemExit):
        spoken_digits.parse_arguments(["--members-at-once", "0"])


def test_spoken_digits_members_under_torchrun_are_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        spoken_digits.parse_arguments(["--members", "2"])
    assert "--members: expected 1 under torchrun" in capsys.readouterr().err


def test_spoken_digits_trains_on_chosen_engines_with_time_frames_and_no_augmentation(tmp_path, data):
    metrics, _ = run_experiment(spoken_digits, tmp_path / "run", data, "--limit", "20", "--num-bands", "2",
                                "--input", "time-frames", "--engines", "espeak-ng", "sam", "--speed", "1", "1",
                                "--no-gain-tilt", "--reverb", "0", "--telephone", "0", "--no-noise",
                                "--warp", "0", "--time-masks", "0", "--freq-masks", "0")
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_spoken_digits_input_flag_swaps_the_adapter():
    # 1.2 s at 16 kHz: 118 frames (n_fft 400, hop 160); 30 time patches of 4 frames, 30 conv cells at stride 4.
    flags = ["--embed-channels", "8", "--conv-channels", "8", "--num-bands", "2", "--normalize", "band", "--warp", "0.1",
             "--time-masks", "2", "--freq-masks", "2", "--floor-db", "30"]
    audio, pad_mask = torch.randn(2, 19200), torch.zeros(2, 19200, dtype=torch.bool)
    for name, tokens in (("patches", 30 * 4), ("time-frames", 30), ("conv", 30)):
        adapter = spoken_digits.build_adapter(spoken_digits.parse_arguments(["--input", name, *flags])).eval()
        assert adapter.config["warp"] == 0.1 and adapter.config["time_masks"] == 2
        assert adapter.config["normalize"] == "band" and adapter.frontend.floor_db == 30.0
        out, out_mask = adapter(audio, pad_mask)
        assert out.shape[:2] == (2, tokens) and out_mask.shape == (2, tokens)
    fourier = 2 * 2 + 1  # the time axis: its position, 2 sines, 2 cosines
    for conv, channels in (("time-mel-frames", 8 * 32 // 4), ("time", 8)):  # 32 mel bins: 8 mel cells at stride 4
        adapter = spoken_digits.build_adapter(spoken_digits.parse_arguments(["--conv", conv, *flags]))
        assert adapter.config["conv"] == conv and adapter.config["channels"] == [8, 8]
        assert adapter.num_channels == channels + fourier
    defaults = spoken_digits.parse_arguments([])
    assert spoken_digits.member_stem(defaults) == ("time-mel-frames", 32)  # the stem of the README's command
    assert spoken_digits.build_adapter(defaults).frontend.floor_db is None  # and their absolute floor


def test_spoken_digits_members_take_the_conv_stems_in_turn(capsys):
    stems = ["--conv", "time", "time-mel-frames"]
    args = spoken_digits.parse_arguments(["--members", "5", *stems])
    assert [spoken_digits.member_stem(args, k) for k in range(5)] == [
        ("time", 128), ("time-mel-frames", 32), ("time", 128), ("time-mel-frames", 32), ("time", 128)]
    args = spoken_digits.parse_arguments(["--members", "2", *stems, "--conv-channels", "16"])
    assert [spoken_digits.member_stem(args, k) for k in range(2)] == [("time", 16), ("time-mel-frames", 16)]
    args = spoken_digits.parse_arguments(["--members", "2", *stems, "--conv-channels", "16", "8"])
    assert spoken_digits.member_flags(args, 1) == {"conv": ["time-mel-frames"], "conv_channels": [8],
                                                   "floor_db": [None], "voices": ["accented"]}
    member = member_runs.member_arguments(args, 1, **spoken_digits.member_flags(args, 1))
    assert spoken_digits.member_stem(member) == ("time-mel-frames", 8) and member.seed == 1
    args = spoken_digits.parse_arguments(["--members", "3", "--floor-db", "none", "30"])
    assert [spoken_digits.member_floor(args, k) for k in range(3)] == [None, 30.0, None]
    member = member_runs.member_arguments(args, 1, **spoken_digits.member_flags(args, 1))
    assert spoken_digits.build_adapter(member).frontend.floor_db == 30.0
    assert spoken_digits.build_adapter(args).frontend.floor_db is None  # one model (and member 0): the first
    for value in ("0", "-5", "loud"):
        with pytest.raises(SystemExit):
            spoken_digits.parse_arguments(["--floor-db", "30", value])
        assert f"--floor-db: expected dB > 0 or none, got '{value}'" in capsys.readouterr().err
    for argv, message in ((["--members", "2", *stems, "--conv-channels", "1", "2", "3"],
                           "--conv-channels: expected one width or one per --conv stem (2), got 3"),
                          (stems, "expected --input conv and --members >= 2, got --input conv and --members 1"),
                          (["--members", "2", "--input", "patches", *stems], "got --input patches")):
        with pytest.raises(SystemExit):
            spoken_digits.parse_arguments(argv)
        assert message in capsys.readouterr().err


def test_speed_averaged_log_probs_keep_each_clip_alone_or_padded_in_a_batch():
    torch.manual_seed(0)
    adapter = spoken_digits.build_adapter(spoken_digits.parse_arguments(
        ["--n-mels", "16", "--max-duration", "0.4", "--embed-channels", "8", "--conv-channels", "8",
         "--num-bands", "2"]))
    model = builders.classifier(adapter, num_classes=10, num_latents=4, num_latent_channels=16,
                                num_cross_attention_heads=1, num_self_attention_heads=2).double().eval()
    max_samples = 6400
    audio = torch.randn(2, 6000, dtype=torch.float64)
    pad_mask = torch.zeros(2, 6000, dtype=torch.bool)
    pad_mask[0, 3500:] = True  # the first clip is shorter: padded in the batch
    audio[0, 3500:] = 123.0  # padding holds garbage that must not reach the prediction
    speeds = (0.85, 1.0, 1.15)
    score = spoken_digits.plain_and_speed_averaged_log_probs
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        plain, batched = score(model, audio, pad_mask, speeds=speeds, max_samples=max_samples)
        assert len(calls) == len(speeds)  # the clips as they are, scored once for the plain and for speed 1
        _, alone = score(model, audio[:1, :3500], pad_mask[:1, :3500], speeds=speeds, max_samples=max_samples)
        plain_again, only_plain = score(model, audio, pad_mask, speeds=(1.0,), max_samples=max_samples)
        expected_plain = model(audio, pad_mask).log_softmax(dim=-1)
    assert batched.shape == (2, 10) and torch.allclose(batched.exp().sum(dim=-1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(alone[0], batched[0], rtol=0, atol=1e-10)
    for found in (plain, plain_again, only_plain):
        torch.testing.assert_close(found, expected_plain, rtol=0, atol=1e-12)
    assert not torch.allclose(batched, plain, atol=1e-4)  # the other speeds change the prediction


@pytest.mark.parametrize("module, flags, named", [
    (spoken_digits, ["--eval-speeds", "1", "0"], "--eval-speeds"),
    (spoken_digits, ["--reverb", "1.5"], "--reverb"), (spoken_digits, ["--tilt", "1"], "--tilt"),
    (spoken_digits, ["--speed", "0", "1"], "--speed"), (fashion_mnist, ["--max-shift", "-1"], "--max-shift"),
    (fashion_mnist, ["--occlusion", "29"], "--occlusion")])
def test_experiments_reject_bad_augmentation_flags_by_name(tmp_path, capsys, module, flags, named):
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), *flags])
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("options", [[], ["--span", "3", "--query-context", "-1", "--decode", "all"]])
def test_shakespeare_mlm_tiny_run_reports_model_and_unigram_scores(tmp_path, data, options):
    metrics, _ = run_experiment(shakespeare_mlm, tmp_path / "run", data, "--limit", "24", "--window", "64", *options)
    assert metrics["test_masked_bytes"] > 0
    assert 0.0 <= metrics["test_masked_accuracy"] <= 1.0 and 0.0 <= metrics["unigram_masked_accuracy"] <= 1.0
    # A near-uniform untrained model costs about log2(256) = 8 bits; the unigram baseline far less.
    assert 6.0 < metrics["test_bits_per_byte"] < 10.0
    assert 2.0 < metrics["unigram_bits_per_byte"] < 6.0


# ---------------------------------------------------------------------------------------------------- pieces


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


@pytest.mark.parametrize("span", [1, 3, 8])
def test_span_masking_keeps_the_mask_rate_and_never_masks_padding(span):
    generator = torch.Generator().manual_seed(0)
    pad_mask = torch.zeros(256, 400, dtype=torch.bool)
    pad_mask[:, 300:] = True
    chosen = shakespeare_mlm.choose_spans(pad_mask, rate=0.15, span=span, generator=generator)
    assert not (chosen & pad_mask).any()
    assert abs(float(chosen[:, :300].float().mean()) - 0.15) < 0.005
    # Every position is chosen equally often, the first and last of the real bytes included.
    per_position = chosen[:, :300].float().mean(dim=0)
    assert abs(float(per_position[:span].mean()) - 0.15) < 0.03
    assert abs(float(per_position[-span:].mean()) - 0.15) < 0.03
    # Chosen bytes come in runs of at least ``span`` (merged when spans overlap), except where padding cuts one.
    runs = []
    for row in chosen[:, :300].tolist():
        length = 0
        for position, value in enumerate(row + [False]):
            if value:
                length += 1
            elif length:
                if position - length > 0 and position < 300:  # a run that neither the start nor the end cuts
                    runs.append(length)
                length = 0
    assert min(runs) >= span


def test_mask_bytes_with_spans_corrupts_the_chosen_bytes_only():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (256, 200), generator=generator)
    pad_mask = torch.zeros_like(ids, dtype=torch.bool)
    pad_mask[:, 150:] = True
    corrupted, chosen = shakespeare_mlm.mask_bytes(ids, pad_mask, rate=0.3, span=4, generator=generator)
    assert not (chosen & pad_mask).any() and abs(float(chosen[:, :150].float().mean()) - 0.3) < 0.02
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_chosen_index_lists_each_rows_chosen_positions():
    chosen = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    index, filler = shakespeare_mlm.chosen_index(chosen)
    assert index.tolist() == [[1, 3, 0], [0, 0, 0], [0, 1, 2]]
    assert filler.tolist() == [[False, False, True], [True, True, True], [False, False, False]]


def test_only_the_masked_positions_are_decoded_with_the_same_logits():
    namespace = shakespeare_mlm.parse_arguments([
        "--window", "32", "--embed-channels", "16", "--positions", "learned", "--num-bands", "4", "--num-latents", "4",
        "--num-latent-channels", "16", "--num-cross-attention-heads", "1", "--num-self-attention-heads", "2",
        "--num-self-attention-layers", "1", "--query-context", "2"])
    model = shakespeare_mlm.build_model(namespace).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, 32), generator=generator)
    pad_mask = torch.zeros_like(ids, dtype=torch.bool)
    pad_mask[2, 20:] = True
    corrupted, chosen = shakespeare_mlm.mask_bytes(ids, pad_mask, rate=0.2, span=2, generator=generator)
    index, filler = shakespeare_mlm.chosen_index(chosen)
    with torch.no_grad():
        every = model(corrupted, pad_mask)
        some = model(corrupted, pad_mask, index=index, index_pad_mask=filler)
    assert some.shape[:2] == index.shape and index.shape[1] < 32
    torch.testing.assert_close(some[~filler], every[chosen])
