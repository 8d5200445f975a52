"""Spoken digits: classify spoken 0–9 with a Perceiver IO over a log-mel spectrogram, trained on synthetic voices.

The shards (``perceiver.data``'s spoken-digits) are built under ``--data`` when absent: speech from espeak-ng,
flite, Festival and SAM, plus SVOX Pico and Asterisk's recorded digits. The model trains on spoken-digits-accented
(``--voices accented``, the default), whose training set adds eight Festival voices of other languages reading the
digits respelled, so speakers with accents (ahead on held-out voices and on both stand-ins for real speakers in three
draws, docs/exps.md); ``--voices plain`` trains on spoken-digits' voices alone. Three evaluations:

- ``test``: voices held out of training, of the four training engines (speakers never heard);
- ``engine``: every utterance of SVOX Pico, an engine never heard in training: the measure of domain shift that
  chooses settings, since the real recordings are too few to choose by;
- ``real``: ten recordings of one human speaker (8 kHz telephone audio), never used to choose anything alone.

Each reports its plain accuracy and, beside it, ``speed_averaged_accuracy``: every clip scored on its mean
log-probabilities over the playback speeds of ``--eval-speeds`` (``plain_and_speed_averaged_log_probs``).

Every clip, in training and evaluation alike, is freed of any constant offset (``perceiver.augment.remove_dc``) and
cut to where it speaks (``perceiver.augment.crop_to_speech``), so long silences and tight trims reach the model
alike; the log-mel spectrogram stops at ``--f-max`` (4 kHz, the band of telephone audio) and is standardised per
utterance, so the level does not matter. Training augments each batch of waveforms with a random playback speed,
level and spectral tilt, a synthetic room, a leading silence, a tight trim around the word, white, pink or brown
noise, mains hum, clipping and a telephone line (``benchmarks/recording_conditions.py`` scores a model under such
conditions); ``--warp``, ``--time-masks`` and ``--freq-masks`` add a vocal tract length warp and SpecAugment masks
to the spectrogram (``LogMelSpectrogram``'s options, active in training mode only; off by default, as they slowed
learning in a short probe and ended behind in two full runs, docs/exps.md). ``--input``
picks the adapter: a convolutional stem (``conv``, ``SpectrogramConvAdapter``, the default: ahead of the others in a
side-by-side probe), one linear token per 4 full-band frames (``time-frames``), or time × frequency tiles
(``patches``). The stem (``--conv``) is two 3×3 convolutions over the (time, mel) plane, stride 2 each, one token
per 4 frames holding every mel cell's channels (``time-mel-frames``, the default: the kernels are shared across
frequency, so another speaker's formants, a few bins higher or lower, meet the same filters; in two draws of four
seeds 9 to 11 points ahead of the 1-D stem on a neural voice learned from a real man's recordings,
``benchmarks/neural_voice.py``, and 0.7 points behind on the held-out synthetic voices, docs/exps.md) or one token
per cell (``time-mel``), or two 3-tap convolutions over time with the mel bins as channels (``time``, Whisper's
front end and the default before). ``--members N`` trains N models
(seeds ``--seed`` to ``--seed`` + N − 1, each a run of its own in ``OUT/member-k``; on a CPU one per thread at once,
each in a process of its own, ``--members-at-once``) and scores the mean of their log-probabilities as one model
(``perceiver.ensemble.EnsembleClassifier``, saved in ``OUT/model``, which ``experiments.predict_digits`` reads as
it reads one model). Given several stems, ``--conv`` makes an ensemble that mixes them: member k trains the k-th
in turn (``member_stem``); ``--floor-db`` mixes floors under the log-mel the same way (``member_floor``), and
``--voices`` training sets (``member_voices``)::

    python -m experiments.spoken_digits --out runs/spoken-digits
    python -m experiments.spoken_digits --out runs/spoken-digits-frames --input time-frames
    python -m experiments.spoken_digits --out runs/spoken-digits-pair --members 2
    python -m experiments.spoken_digits --out runs/spoken-digits-mixed --members 4 --conv time time-mel-frames
    torchrun --nproc_per_node=2 -m experiments.spoken_digits --out runs/spoken-digits-ddp
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from experiments.common import (add_data_args, build_parser, check_args, classifier, confusion_metrics, ensure_shards,
                                per_rank_seed, run_summary, start_run, train_on_shards)
from experiments.members import (add_member_args, check_member_args, load_ensemble, record_ensemble,
                                 train_members)
from perceiver import PerceiverIO
from perceiver.adapters import SpectrogramAdapter, SpectrogramConvAdapter
from perceiver.adapters.audio import SPECTROGRAM_CONVS
from perceiver.augment import (NOISE_COLORS, add_hum, add_noise, change_speed, clip_peaks, crop, crop_to_speech, delay,
                               gain_and_tilt, remove_dc, reverberate, telephone_band, trim_to_speech)
from perceiver.data import make_loader
from perceiver.data.sources.spoken_digits import AccentedSpokenDigits
from perceiver.files import atomic_write_text
from perceiver.training.distributed import all_reduce_sum
from perceiver.training.plots import confusion_matrix

NAME = "spoken_digits"
DATASET = "spoken-digits"
# What --voices picks: the dataset a model trains on (their test, engine and real splits are the same clips).
VOICES = {"plain": DATASET, "accented": AccentedSpokenDigits.name}
DEFAULT_VOICES = "accented"
# Where benchmarks read the evaluation splits by default: the default's training set, the one the README's command
# builds. Its test, engine and real splits hold the same clips as spoken-digits' (tested), so a model scores alike
# on either.
EVAL_DATASET = VOICES[DEFAULT_VOICES]
CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16000
# Every engine a training split may hold (spoken-digits-accented adds Festival's accented voices to spoken-digits').
TRAIN_ENGINES = AccentedSpokenDigits.split_engines["train"]
# Seconds of speech the model hears (longer speech is cut) and kept either side of the speech that the cut finds.
MAX_DURATION = 1.2
SPEECH_MARGIN = 0.1
# The test-time playback speeds: the ends and the middle of the training's default --speed range.
EVAL_SPEEDS = (0.85, 0.9, 1.0, 1.1, 1.15)
# Evaluations: split, metric prefix.
EVALUATIONS = (("test", ""), ("engine", "engine_"), ("real", "real_"))
# What --input picks: "time-frames" makes one token of each group of --patch-frames frames over all mel bins;
# "patches" cuts time × frequency tiles; "conv" runs a convolutional stem (--conv picks which, member_stem).
INPUTS = ("time-frames", "patches", "conv")
# Each conv stem's width when --conv-channels is not given. The 2-D stem that keeps one token per frame holds every
# mel cell's channels in it, so 32 channels give it the 1-D stem's size (815 k parameters against 835 k).
STEM_CHANNELS = {"time": 128, "time-mel": 128, "time-mel-frames": 32}


def build_adapter(args) -> SpectrogramAdapter | SpectrogramConvAdapter:
    spectrogram = dict(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=args.n_mels, f_max=args.f_max,
                       max_duration=args.max_duration, normalize=args.normalize, floor_db=member_floor(args),
                       num_bands=args.num_bands, warp=args.warp, time_masks=args.time_masks,
                       time_mask_frames=args.time_mask_frames, freq_masks=args.freq_masks,
                       freq_mask_bins=args.freq_mask_bins)
    if args.input == "conv":
        conv, width = member_stem(args)
        return SpectrogramConvAdapter(**spectrogram, conv=conv, channels=[width] * 2,
                                      strides=args.conv_strides)
    patch_size = (args.patch_frames, args.n_mels if args.input == "time-frames" else args.patch_mels)
    return SpectrogramAdapter(**spectrogram, patch_size=patch_size, embed_channels=args.embed_channels)


def member_stem(args, member: int = 0) -> tuple[str, int]:
    """The conv stem and its width that ensemble member ``member`` trains: the stems of ``--conv`` in turn, each with
    its ``--conv-channels`` (one width for all, one per stem, or the stem's own); one model has one stem."""
    conv = args.conv[member % len(args.conv)]
    if args.conv_channels is None:
        return conv, STEM_CHANNELS[conv]
    return conv, args.conv_channels[member % len(args.conv) % len(args.conv_channels)]


def member_floor(args, member: int = 0) -> float | None:
    """The floor under the log-mel that ensemble member ``member`` trains with: the values of ``--floor-db`` in turn
    (None: the absolute floor); one model takes the first."""
    return args.floor_db[member % len(args.floor_db)]


def member_voices(args, member: int = 0) -> str:
    """The training voices (a key of ``VOICES``) of ensemble member ``member``: the values of ``--voices`` in turn;
    one model takes the first."""
    return args.voices[member % len(args.voices)]


def member_flags(args, member: int) -> dict:
    """What member ``member``'s run changes in the ensemble's flags: its one stem (``member_stem``), its one floor
    (``member_floor``) and its one training set (``member_voices``)."""
    conv, width = member_stem(args, member)
    return {"conv": [conv], "conv_channels": [width], "floor_db": [member_floor(args, member)],
            "voices": [member_voices(args, member)]}


def floor_db_value(text: str) -> float | None:
    """A value of ``--floor-db``: dB > 0, or ``none`` for the absolute floor."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected dB > 0 or none, got {text!r}")
    return value


def build_model(args) -> PerceiverIO:
    return classifier(build_adapter(args), args, num_classes=len(CLASSES), widening_factor=args.widening_factor)


def cut_to_speech(audio: torch.Tensor, pad_mask: torch.Tensor, *, max_samples: int,
                  speech_margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip cut to where it speaks, at most ``max_samples`` long, with ``speech_margin`` seconds kept either
    side: the same in training, evaluation and ``experiments.predict_digits``. A wider margin keeps more of the weak
    onsets and endings (the f of "four", the th of "three") that lie up to 55 dB below a word's loudest frame, where
    the 40 dB threshold alone cuts them. A constant offset is removed first (``remove_dc``): with one, every frame
    looks loud and nothing is cut."""
    return crop_to_speech(remove_dc(audio, pad_mask), pad_mask, max_samples=max_samples, frame=SAMPLE_RATE // 100,
                          margin=round(speech_margin * 100))  # frames of 10 ms


def augment_waveforms(audio: torch.Tensor, pad_mask: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The training augmentation of waveforms cut to speech, in the order sound meets them: the speaker (speed),
    the microphone (level, tilt), the room (reverberation), a leading silence, a tight trim of the word, background
    noise, mains hum, an input driven into clipping, the phone line. The trim comes before the noise, as a microphone's
    hiss covers a whole recording, so that a trimmed clip is tight however noisy."""
    if tuple(args.speed) != (1.0, 1.0):
        audio, pad_mask = change_speed(audio, pad_mask, speeds=args.speed)
    if args.gain_tilt:
        audio = gain_and_tilt(audio, pad_mask, tilt=(-args.tilt, args.tilt))
    if args.reverb > 0:
        audio = reverberate(audio, pad_mask, sample_rate=SAMPLE_RATE, rt60=args.rt60, probability=args.reverb)
    audio, pad_mask = delay(audio, pad_mask, max_shift=round(args.max_shift * SAMPLE_RATE))
    if args.trim > 0:
        audio, pad_mask = trim_to_speech(audio, pad_mask, probability=args.trim, frame=SAMPLE_RATE // 100)
    if not args.no_noise:
        audio = add_noise(audio, pad_mask, snr_db=args.snr_db, colors=args.noise_colors)
    if args.hum > 0:
        audio = add_hum(audio, pad_mask, sample_rate=SAMPLE_RATE, probability=args.hum)
    if args.clip > 0:
        audio = clip_peaks(audio, pad_mask, probability=args.clip)
    if args.telephone > 0:
        audio = telephone_band(audio, pad_mask, sample_rate=SAMPLE_RATE, probability=args.telephone)
    return audio, pad_mask


def plain_and_speed_averaged_log_probs(model: nn.Module, audio: torch.Tensor, pad_mask: torch.Tensor, *,
                                       speeds: tuple[float, ...],
                                       max_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class log-probabilities (B, classes) of the clips as they are, and averaged over the clips played at each of
    ``speeds``, each cut to ``max_samples``: the test-time counterpart of the training's speed augmentation, so that
    one speaker's rate and vocal tract length weigh less in a prediction. The clips as they are stand for speed 1
    (scored once). The clips are moved to the model's device after the resampling."""
    device = next(model.parameters()).device

    def log_probs(clips: torch.Tensor, clips_mask: torch.Tensor) -> torch.Tensor:
        clips, clips_mask = crop(clips, clips_mask, max_samples)
        logits = model(clips.to(device), clips_mask.to(device))
        return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=-1)

    plain = log_probs(audio, pad_mask)
    per_speed = [plain if speed == 1.0 else log_probs(*change_speed(audio, pad_mask, speeds=(speed, speed)))
                 for speed in speeds]
    # The mean of log-probabilities (a product of the speeds' distributions), normalised again.
    return plain, torch.stack(per_speed).mean(dim=0).log_softmax(dim=-1)


def add_arguments(parser) -> None:
    add_data_args(parser, DATASET)
    model = parser.add_argument_group("input")
    model.add_argument("--input", choices=INPUTS, default="conv",
                       help="input adapter: full-band frame groups, time × frequency patches or a conv stem")
    model.add_argument("--n-mels", type=int, default=32, help="mel bins")
    model.add_argument("--f-max", type=float, default=4000.0, help="highest filterbank frequency in Hz")
    model.add_argument("--normalize", choices=("utterance", "band"), default="utterance",
                       help="standardise each clip's log-mel by one mean or by one mean per mel bin (cepstral mean "
                            "normalisation, which removes a fixed colouring of the microphone or room; behind on the "
                            "held-out engine and the real recordings in two seeds, docs/exps.md)")
    model.add_argument("--floor-db", type=floor_db_value, nargs="+", default=[None],
                       help="the floor under the log-mel this many dB below each clip's mean mel power, so that what "
                            "lies further below (silence, hiss) reads the same, or none: an absolute floor of 1e-6 "
                            "(the default); with --members, member k takes the k-th value modulo their number (30 put "
                            "two seeds ahead on the held-out engine but four of them at 98.8%% on held-out voices; "
                            "none 30, mixed, reached 99.5%% but 91.3%% on the engine; docs/exps.md)")
    model.add_argument("--max-duration", type=float, default=MAX_DURATION,
                       help="longer speech is cut, in seconds")
    model.add_argument("--speech-margin", type=float, default=SPEECH_MARGIN,
                       help="seconds kept before and after the speech that the cut to speech finds")
    model.add_argument("--patch-frames", type=int, default=4, help="frames (10 ms each) per patch")
    model.add_argument("--patch-mels", type=int, default=8, help="mel bins per patch (divides --n-mels)")
    model.add_argument("--conv", choices=SPECTROGRAM_CONVS, nargs="+", default=["time-mel-frames"],
                       help="--input conv: 3×3 convolutions over the (time, mel) plane with one token per frame "
                            "holding every mel cell (the default: kernels shared across frequency, 9-11 points ahead "
                            "on a neural voice learned from a real speaker, docs/exps.md) or per cell, or 3-tap "
                            "convolutions over time with the mel bins as channels (SpectrogramConvAdapter); several "
                            "stems, with --members, are trained in turn: member k the k-th modulo their number (an "
                            "ensemble that mixes stems)")
    model.add_argument("--conv-channels", type=int, nargs="+", default=None,
                       help="--input conv: output channels of both convolutions, one width for every --conv stem or "
                            "one per stem; unset, each stem's own: " + ", ".join(
                                f"{conv} {width}" for conv, width in STEM_CHANNELS.items()))
    model.add_argument("--conv-strides", type=int, nargs=2, default=(2, 2), help="--input conv: the two strides")
    model.add_argument("--embed-channels", type=int, default=128, help="--input patches, time-frames: width of the "
                                                                       "patch embedding")
    model.add_argument("--num-bands", type=int, default=8, help="Fourier frequency bands per patch-grid axis")
    model.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    model.add_argument("--label-smoothing", type=float, default=0.1)
    data = parser.add_argument_group("training data and augmentation")
    data.add_argument("--voices", choices=tuple(VOICES), nargs="+", default=[DEFAULT_VOICES],
                      help=f"the training set: accented ({AccentedSpokenDigits.name}: {DATASET}'s voices and eight "
                           "Festival voices of other languages reading the digits respelled; the default, "
                           f"docs/exps.md) or plain ({DATASET}); with --members, member k trains on the k-th value "
                           "modulo their number")
    data.add_argument("--engines", nargs="+", choices=TRAIN_ENGINES, default=list(TRAIN_ENGINES),
                      help="train on the utterances of these engines only")
    data.add_argument("--speed", type=float, nargs=2, default=(0.85, 1.15), metavar=("LOW", "HIGH"),
                      help="range of the playback speed factor (1 1 = off)")
    data.add_argument("--gain-tilt", action=argparse.BooleanOptionalAction, default=True,
                      help="random level and spectral tilt")
    data.add_argument("--tilt", type=float, default=0.6, help="largest |a| of the tilt filter x[t] - a x[t-1]")
    data.add_argument("--reverb", type=float, default=0.5, help="fraction of clips played in a synthetic room")
    data.add_argument("--rt60", type=float, nargs=2, default=(0.1, 0.7), metavar=("LOW", "HIGH"),
                      help="range of the rooms' reverberation time in seconds")
    data.add_argument("--max-shift", type=float, default=0.2, help="longest leading silence, seconds")
    data.add_argument("--snr-db", type=float, nargs=2, default=(5.0, 40.0), metavar=("LOW", "HIGH"),
                      help="range of the added noise's signal-to-noise ratio in dB")
    data.add_argument("--noise-colors", nargs="+", choices=tuple(NOISE_COLORS), default=list(NOISE_COLORS),
                      help="colours of the added noise, one drawn per clip")
    data.add_argument("--no-noise", action="store_true", help="add no noise")
    data.add_argument("--trim", type=float, default=0.5,
                      help="fraction of clips trimmed tight around the word (0 to 0.1 s left, cut at 20-40 dB), as "
                           "recordings collected by others often come")
    data.add_argument("--hum", type=float, default=0.25,
                      help="fraction of clips with mains hum (50 or 60 Hz and harmonics, 10-40 dB below the speech)")
    data.add_argument("--clip", type=float, default=0.25,
                      help="fraction of clips hard-clipped 0-20 dB below their peak, as a recording made too loud")
    data.add_argument("--telephone", type=float, default=0.5, help="fraction of clips sent down a telephone line")
    data.add_argument("--warp", type=float, default=0.0, help="vocal tract length warp: factors 1 ± WARP")
    data.add_argument("--time-masks", type=int, default=0, help="SpecAugment time masks per clip")
    data.add_argument("--time-mask-frames", type=int, default=10, help="widest time mask in frames")
    data.add_argument("--freq-masks", type=int, default=0, help="SpecAugment frequency masks per clip")
    data.add_argument("--freq-mask-bins", type=int, default=4, help="widest frequency mask in mel bins")
    evaluation = parser.add_argument_group("evaluation")
    add_member_args(evaluation)
    evaluation.add_argument("--eval-speeds", type=float, nargs="+", default=EVAL_SPEEDS,
                            help="each evaluation also scores every clip on its mean log-probabilities over these "
                                 "playback speeds (reported beside the plain accuracy as *speed_averaged_accuracy)")


def check_arguments(parser, args) -> None:
    check_args(parser, args)
    if args.input == "patches" and args.n_mels % args.patch_mels:
        parser.error(f"--patch-mels: expected a divisor of --n-mels={args.n_mels}, got {args.patch_mels}")
    if not 0 < args.f_max <= SAMPLE_RATE / 2:
        parser.error(f"--f-max: expected a frequency in (0, {SAMPLE_RATE // 2}] Hz, got {args.f_max}")
    for flag in ("reverb", "trim", "hum", "clip", "telephone"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag}: expected a fraction in [0, 1], got {getattr(args, flag)}")
    if not 0.0 <= args.tilt < 1.0:
        parser.error(f"--tilt: expected a number in [0, 1), got {args.tilt}")
    if args.speech_margin < 0:
        parser.error(f"--speech-margin: expected seconds >= 0, got {args.speech_margin}")
    check_member_args(parser, args)
    if args.conv_channels is not None and len(args.conv_channels) not in (1, len(args.conv)):
        parser.error(f"--conv-channels: expected one width or one per --conv stem ({len(args.conv)}), got "
                     f"{len(args.conv_channels)}: {args.conv_channels}")
    if len(args.conv) > 1 and (args.members < len(args.conv) or args.input != "conv"):
        parser.error(f"--conv: several stems ({' '.join(args.conv)}) are trained one per ensemble member, in turn: "
                     f"expected --input conv and --members >= {len(args.conv)}, got --input {args.input} and "
                     f"--members {args.members}")
    if len(args.voices) > args.members:
        parser.error(f"--voices: each member trains on one training set, in turn: expected at most --members "
                     f"{args.members} values, got {len(args.voices)}: {' '.join(args.voices)}")
    if min(args.eval_speeds) <= 0:
        parser.error(f"--eval-speeds: expected positive speed factors, got {list(args.eval_speeds)}")
    if args.max_shift < 0 or not 0 < min(args.speed) <= max(args.speed):
        parser.error(f"--max-shift, --speed: expected seconds >= 0 and positive factors, got {args.max_shift}, "
                     f"{tuple(args.speed)}")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The experiment's flags, checked (``argv`` None: the command line)."""
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=3000, batch_size=64, lr=2e-3, weight_decay=0.05, num_latents=32, num_latent_channels=128,
        num_self_attention_heads=4, num_self_attention_layers=4, eval_every=1000, checkpoint_every=500))
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def split_counts(model: nn.Module, args, shards: dict, split: str, device: torch.device
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The split's confusion matrix, one per engine (the test split mixes four), and the hits of the predictions
    averaged over ``--eval-speeds``."""
    max_samples = round(args.max_duration * SAMPLE_RATE)
    counts = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64, device=device)
    per_engine = {name: counts.clone() for name in TRAIN_ENGINES}
    speed_hits = torch.zeros((), dtype=torch.int64, device=device)
    for batch in make_loader(shards[split], batch_size=100, mode="epoch", shuffle=False, num_workers=args.num_workers):
        audio, pad_mask = cut_to_speech(batch["audio"], batch["audio_pad_mask"], max_samples=max_samples,
                                        speech_margin=args.speech_margin)
        plain, averaged = plain_and_speed_averaged_log_probs(model, audio, pad_mask, speeds=args.eval_speeds,
                                                             max_samples=max_samples)
        predictions = plain.argmax(dim=1)
        labels = batch["label"].to(device)
        counts += confusion_matrix(predictions, labels, num_classes=len(CLASSES))
        speed_hits += (averaged.argmax(dim=1) == labels).sum()
        engine_of = [meta["speech"] for meta in batch["meta"]]
        for name, engine_counts in per_engine.items():
            rows = torch.tensor([found == name for found in engine_of], device=device)
            if rows.any():
                engine_counts += confusion_matrix(predictions[rows], labels[rows], num_classes=len(CLASSES))
    # Every rank reduces every engine's matrix (a collective must be called alike on all ranks), then drops the
    # engines the split does not have.
    per_engine = {name: all_reduce_sum(engine_counts) for name, engine_counts in per_engine.items()}
    return (all_reduce_sum(counts), {name: c for name, c in per_engine.items() if c.sum() > 0},
            all_reduce_sum(speed_hits))


@torch.no_grad()
def evaluate_splits(model: nn.Module, args, shards: dict, device: torch.device, *,
                    figures: bool) -> tuple[dict, dict[str, list]]:
    """The metrics of every evaluation split (test, engine, real) and their confusion matrices."""
    metrics, matrices = {}, {}
    for split, prefix in EVALUATIONS:
        counts, per_engine, speed_hits = split_counts(model, args, shards, split, device)
        matrices[split] = counts.tolist()
        metrics.update(confusion_metrics(counts, list(CLASSES), figure=figures, prefix=prefix))
        # Beside the plain accuracy, never in its place.
        metrics[f"{prefix}speed_averaged_accuracy"] = int(speed_hits) / max(1, int(counts.sum()))
        if split == "test":
            for name, engine_counts in per_engine.items():
                metrics[f"test_accuracy_{name}"] = float(engine_counts.diagonal().sum() / engine_counts.sum())
    return metrics, matrices


def reported(found: dict, matrices: dict[str, list]) -> dict:
    """What a run reports of its last evaluation (``evaluate_splits``' metrics and matrices)."""
    return {
        "test_accuracy": found.get("accuracy", float("nan")),
        "test_samples": int(found.get("samples", 0)),
        **{key: value for key, value in found.items() if key.startswith("test_accuracy_")},
        "engine_accuracy": found.get("engine_accuracy", float("nan")),
        "engine_samples": int(found.get("engine_samples", 0)),
        "real_accuracy": found.get("real_accuracy", float("nan")),
        "real_samples": int(found.get("real_samples", 0)),
        **{f"{split}_speed_averaged_accuracy": found.get(f"{prefix}speed_averaged_accuracy", float("nan"))
           for split, prefix in EVALUATIONS},
        # What each real recording (one per digit, 0 to 9) was taken for: the ten-sample confusion matrix in a word.
        "real_predictions": "".join(str(row.index(max(row))) if sum(row) else "-" for row in matrices.get("real", [])),
    }


def add_eval_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data`` and ``--dataset``: where a benchmark reads the evaluation splits' shards (DATA/DATASET)."""
    parser.add_argument("--data", type=Path, default=Path("data"), help="holds the shards in DATA/DATASET")
    parser.add_argument("--dataset", choices=tuple(VOICES.values()), default=EVAL_DATASET,
                        help=f"whose evaluation splits to read: the same clips in each (default: {EVAL_DATASET}, "
                             "which the default training builds)")


def run_shards(args, member: int = 0) -> dict:
    """The shards of member ``member``'s training set (``member_voices``; one model: the first)."""
    return ensure_shards(VOICES[member_voices(args, member)], args.data,
                         ("train",) + tuple(split for split, _ in EVALUATIONS), limit=args.limit, seed=args.seed)


def train_one(args) -> dict:
    """One model: trained, scored on every evaluation split, saved in ``OUT/model``."""
    run = start_run(args, name=NAME)
    shards = run_shards(args)
    model = build_model(args)
    per_rank_seed(args.seed, run.context.rank)
    device = run.context.device
    max_samples = round(args.max_duration * SAMPLE_RATE)
    engines = set(args.engines)

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        audio, pad_mask, labels = batch["audio"].cpu(), batch["audio_pad_mask"].cpu(), batch["label"]
        if engines != set(TRAIN_ENGINES):  # a smaller batch rather than a second set of shards
            keep = torch.tensor([meta["speech"] in engines for meta in batch["meta"]])
            if not keep.any():  # nothing of the chosen engines in this batch: a zero loss that still reaches DDP
                return sum(parameter.sum() for parameter in model.parameters()) * 0.0, {}
            audio, pad_mask, labels = audio[keep], pad_mask[keep], labels[keep]
        audio, pad_mask = cut_to_speech(audio, pad_mask, max_samples=max_samples, speech_margin=args.speech_margin)
        audio, pad_mask = augment_waveforms(audio, pad_mask, args)
        audio, pad_mask = crop(audio, pad_mask, max_samples)
        logits = model(audio.to(device), pad_mask.to(device)).float()
        labels = labels.to(device)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        return loss, {"accuracy": (logits.argmax(dim=1) == labels).float().mean()}

    matrices: dict[str, list] = {}

    def evaluate(model: nn.Module) -> dict:
        metrics, found = evaluate_splits(model, args, shards, device, figures=run.tracker.saves_figures)
        matrices.update(found)
        return metrics

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate)
    if run.context.is_main:
        model.save_pretrained(run.out / "model")
        atomic_write_text(run.out / "confusion_matrices.json", json.dumps(matrices) + "\n")
    return run.finish({**reported(result.eval_metrics, matrices), **run_summary(result, model, run)})


# The figures of each member that an ensemble's metrics repeat, as member{k}_{name}.
MEMBER_FIGURES = ("test_accuracy", "engine_accuracy", "real_accuracy", "test_speed_averaged_accuracy",
                  "engine_speed_averaged_accuracy", "real_speed_averaged_accuracy", "real_predictions",
                  "final_train_loss")


def describe_member(found: dict) -> str:
    """A member's figures in a line, as it finishes."""
    return (f"held-out voices {found['test_accuracy']:.2%}, engine {found['engine_accuracy']:.2%}, real recordings "
            f"taken for {found['real_predictions']}")


def train_ensemble(args) -> dict:
    """``--members N``: N models (the k-th with seed ``--seed`` + k, in ``OUT/member-k``, each a run of its own that
    ``--resume`` continues or, finished, keeps), trained ``--members-at-once`` at a time, then their ensemble scored
    as one model and saved in ``OUT/model``."""
    # Built (when missing) with the ensemble's seed before any member runs, so that every member finds these shards
    # rather than building its own from its own seed; the ensemble is scored on the first member's evaluation splits
    # (every training set's are the same clips).
    shards = run_shards(args)
    for member in range(1, min(args.members, len(args.voices))):
        run_shards(args, member)
    members, at_once = train_members(train_one, args, describe=describe_member, flags=member_flags)
    ensemble = load_ensemble(args)
    run = start_run(args, name=NAME)
    ensemble = ensemble.to(run.context.device).eval()
    metrics, matrices = evaluate_splits(ensemble, args, shards, run.context.device, figures=run.tracker.saves_figures)
    atomic_write_text(run.out / "confusion_matrices.json", json.dumps(matrices) + "\n")
    return run.finish({**reported(metrics, matrices),
                       **record_ensemble(run, ensemble, metrics, members, at_once, MEMBER_FIGURES)})


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    return train_ensemble(args) if args.members > 1 else train_one(args)


if __name__ == "__main__":
    main()
