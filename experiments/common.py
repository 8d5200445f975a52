"""What the experiments share: the command-line contract, the steps around ``train``, the shards they read, and the
pieces of the experiments on one dataset (Fashion-MNIST images; audio-visual digits). No experiment imports another.

Every script accepts ``--out DIR``, ``--seed``, ``--max-steps`` (and ``--max-minutes``, a training-time budget),
``--wandb {online,offline,disabled}`` (absent: ``WANDB_MODE``, else online when ``WANDB_API_KEY`` is set, else
offline), ``--wandb-project``, ``--wandb-entity``, ``--batch-size``, ``--lr``,
``--resume``, ``--compile`` and the model size flags, and writes ``DIR/metrics.json`` (a flat JSON object of final metrics) with checkpoints in ``DIR``::

    parser = build_parser("what it does", name="my_task", defaults={"max_steps": 2000})
    args = parser.parse_args(argv)
    check_args(parser, args)                        # also fills in defaults that depend on other flags
    run = start_run(args, name="my_task")          # seeds, torchrun process group, output folder, wandb
    model = ...(**encoder_kwargs(args))
    result = train(model, config=train_config(args), ..., out_dir=run.out, tracker=run.tracker,
                   device=run.context.device, run_config=run.config)
    run.finish({"test_accuracy": ..., "steps": result.step})

Models come from ``perceiver.builders`` (``classifier`` and ``build_encoder`` here map the model size flags onto it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock

from perceiver import PerceiverEncoder, PerceiverIO, builders
from perceiver.adapters import PatchAdapter, SpectrogramAdapter
from perceiver.adapters.conv import DOWNSAMPLING
from perceiver.augment import add_white_noise, occlude_and_add_noise, shift_and_flip
from perceiver.data import MissingShardsError, build_dataset, find_shards, read_manifest
from perceiver.threads import set_threads
from perceiver.training import (
    LATEST,
    WANDB_MODES,
    DistributedContext,
    TrainConfig,
    Tracker,
    atomic_write_bytes,
    cleanup_distributed,
    default_wandb_mode,
    default_wandb_project,
    load_checkpoint,
    setup_distributed,
)
from perceiver.training import distributed
from perceiver.training.loop import PRECISIONS, TrainResult, train
from perceiver.training.optim import OPTIMIZERS

METRICS_FILE = "metrics.json"


def build_parser(description: str, *, name: str, defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The shared flags; ``defaults`` (keyed by attribute name, e.g. ``max_steps``) sets an experiment's own defaults.

    An experiment adds its own flags to the returned parser.
    """
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("runs") / name, help="output folder (checkpoints, metrics.json, wandb)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-steps", type=int, default=1000, help="optimizer steps in all")
    run.add_argument("--max-minutes", type=float, default=None,
                     help="training-time budget: stop when it is spent (or at --max-steps); the lr decays over it")
    run.add_argument("--wandb", choices=WANDB_MODES, default=None,
                     help="wandb mode; when absent: $WANDB_MODE, else online when $WANDB_API_KEY is set, else offline")
    run.add_argument("--wandb-project", default=None, help="when absent: $WANDB_PROJECT, else perceiver-triton")
    run.add_argument("--wandb-entity", default=None, help="wandb team or user; when absent: $WANDB_ENTITY, else yours")
    run.add_argument("--resume", action="store_true", help="continue from DIR/latest.pt if it exists")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--precision", choices=PRECISIONS, default="auto", help="autocast on CUDA; CPU runs in fp32")
    run.add_argument("--device", default=None, help="default: cuda (one GPU per torchrun process) if present, else cpu")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads per process; when absent: $OMP_NUM_THREADS, else the cores free at the start")
    run.add_argument("--no-progress", action="store_true",
                     help="no tqdm progress bar; a plain line per log step instead (for cluster logs)")

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--batch-size", type=int, default=64, help="per process")
    optimization.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    optimization.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    optimization.add_argument("--weight-decay", type=float, default=0.01)
    optimization.add_argument("--warmup-steps", type=int, default=None, help="default: a tenth of --max-steps")
    optimization.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (cosine decay)")
    optimization.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm; 0 = off")
    optimization.add_argument("--ema-decay", type=float, default=0.0,
                              help="evaluate and save a moving average of the weights with this decay; 0 = off")
    optimization.add_argument("--log-every", type=int, default=10)
    optimization.add_argument("--eval-every", type=int, default=0, help="0 = at the end only")
    optimization.add_argument("--checkpoint-every", type=int, default=0, help="0 = at the end only")

    model = parser.add_argument_group("model size")
    model.add_argument("--num-latents", type=int, default=128, help="N, the latent array's length")
    model.add_argument("--num-latent-channels", type=int, default=128, help="D, the latent array's width")
    model.add_argument("--num-cross-attention-heads", type=int, default=1)
    model.add_argument("--num-self-attention-heads", type=int, default=4)
    model.add_argument("--num-self-attention-layers", type=int, default=4, help="latent self-attention layers per block")
    model.add_argument("--num-self-attention-blocks", type=int, default=1, help="repeats of the (shared) block")
    model.add_argument("--dropout", type=float, default=0.0)
    if defaults:
        unknown = sorted(set(defaults) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"defaults: unknown option names {unknown}")
        parser.set_defaults(**defaults)
    return parser


def add_data_args(parser: argparse.ArgumentParser, dataset: str) -> None:
    """The flags of an experiment that reads shards: where they live, the size of an on-demand build, loader workers."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=Path("data"), help=f"shards live in DATA/{dataset}")
    data.add_argument("--limit", type=int, default=None,
                      help=f"build at most this many samples per split, in DATA/{dataset}-limitLIMIT")
    data.add_argument("--num-workers", type=int, default=1, help="data loader workers per process")


def ensure_shards(name: str, data_dir: str | Path, splits: tuple[str, ...], *, limit: int | None = None,
                  seed: int = 0) -> dict[str, list[str]]:
    """Shard paths per split of dataset ``name`` under ``shard_directory(data_dir, name, limit)``; missing splits are
    built (by rank 0).

    ``limit`` caps the samples per split of a build (tiny runs and tests), which lives in a folder of its own. Existing
    shards are used when their manifest (``NAME-{split}.json``) records the same limit; shards built with another limit
    (by hand, into the folder) are rebuilt, and the run says so. Shards without a manifest (built before manifests
    existed) are used as they are, with a note.
    """
    directory = shard_directory(data_dir, name, limit)
    shards = {}
    for split in splits:
        if distributed.rank() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            # Two runs started together on a fresh machine would write the same shard files at once (one of them
            # crashed renaming a file the other had renamed): the second waits here for the first's build, then
            # finds it done.
            with FileLock(directory / f".{name}-{split}.lock"):
                reason = _why_build(directory, name, split, limit)
                if reason:
                    print(f"building {name}/{split} shards in {directory}: {reason}")
                    build_dataset(name, directory, splits=[split], limit=limit, seed=seed)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other ranks wait for rank 0's check and build
        shards[split] = find_shards(directory, name, split)
    return shards


def shard_directory(data_dir: str | Path, name: str, limit: int | None = None) -> Path:
    """Where a run keeps dataset ``name``'s shards: ``data_dir/name``, or ``data_dir/name-limitN`` for a ``--limit N``
    build, so that a tiny run never replaces the whole dataset's shards (nor a whole run a tiny one's)."""
    return Path(data_dir) / (name if limit is None else f"{name}-limit{limit}")


def _asked(limit: int | None) -> str:
    return "all samples" if limit is None else f"--limit {limit}"


def _why_build(directory: Path, name: str, split: str, limit: int | None) -> str | None:
    """Why the split must be built now, or None when the shards there are the ones asked for."""
    try:
        find_shards(directory, name, split)
    except MissingShardsError:
        return "none there yet"
    manifest = read_manifest(directory, name, split)
    if manifest is None:
        print(f"note: {name}/{split} shards in {directory} have no manifest ({name}-{split}.json), so the limit they "
              f"were built with is unknown; using them as they are (rebuild: python -m perceiver.data build {name} "
              f"--out {directory} --split {split})")
        return None
    if manifest.get("limit") != limit:
        return (f"they were built with {_asked(manifest.get('limit'))} ({manifest.get('samples')} samples), this run "
                f"asks for {_asked(limit)}")
    return None


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject values no run can use, naming the flag; fill in defaults that depend on other flags."""
    for flag in ("max_steps", "batch_size", "num_latents", "num_latent_channels"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if not args.lr > 0:
        parser.error(f"--lr: expected a positive float, got {args.lr}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error(f"--max-minutes: expected a positive number, got {args.max_minutes}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay: expected a float in [0, 1) (0 = off), got {args.ema_decay}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected a positive int, got {args.threads}")
    if args.wandb is None:  # recorded in the run's config as the mode actually used
        try:
            args.wandb = default_wandb_mode()
        except ValueError as error:
            parser.error(f"--wandb is absent and {error}")
    if args.wandb_project is None:
        args.wandb_project = default_wandb_project()
    if args.wandb_entity is None:
        args.wandb_entity = os.environ.get("WANDB_ENTITY") or None
    if args.warmup_steps is None:
        args.warmup_steps = args.max_steps // 10
    if not 0 <= args.warmup_steps <= args.max_steps:
        parser.error(f"--warmup-steps: expected an int in [0, --max-steps={args.max_steps}], got {args.warmup_steps}")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        max_steps=args.max_steps, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip or None,
        precision=args.precision, compile=args.compile, log_every=args.log_every, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.no_progress,
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes, ema_decay=args.ema_decay,
    )


def encoder_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``PerceiverEncoder`` keyword arguments from the model size flags (``num_input_channels`` is the adapter's)."""
    return dict(
        num_latents=args.num_latents, num_latent_channels=args.num_latent_channels,
        num_cross_attention_heads=args.num_cross_attention_heads,
        num_self_attention_heads=args.num_self_attention_heads,
        num_self_attention_layers_per_block=args.num_self_attention_layers,
        num_self_attention_blocks=args.num_self_attention_blocks, dropout=args.dropout,
    )


def loader_batches(shards, *, batch_size: int, seed: int, mode: str = "epoch", num_workers: int = 0, **options):
    """``make_batches(epoch)`` for ``train`` over the data pipeline's ``perceiver.data.make_loader``.

    The loader is deterministic given (seed, epoch, world size, rank, num_workers), which is what lets the loop's
    resume replay an epoch up to its saved position.
    """

    def make_batches(epoch: int):
        from perceiver.data import make_loader

        return make_loader(shards, batch_size=batch_size, mode=mode, seed=seed, epoch=epoch,
                           num_workers=num_workers, **options)

    return make_batches


def build_encoder(args: argparse.Namespace, num_input_channels: int, *, widening_factor: int = 1,
                  init_scale: float | None = None) -> PerceiverEncoder:
    """A ``PerceiverEncoder`` from the model size flags; one widening factor for its cross- and self-attention MLPs."""
    return builders.encoder(num_input_channels, widening_factor=widening_factor, init_scale=init_scale,
                            **encoder_kwargs(args))


def train_on_shards(model: torch.nn.Module, args: argparse.Namespace, run: "Run", train_shards, *, loss_fn, evaluate,
                    **loader_options) -> TrainResult:
    """``train`` with the run's flags over ``train_shards`` (batches of ``--batch-size``, the last partial one dropped;
    ``loader_options`` go to ``make_loader``), checkpoints in the run's folder, metrics to its wandb run."""
    make_batches = loader_batches(train_shards, batch_size=args.batch_size, seed=args.seed,
                                  num_workers=args.num_workers, drop_last=True, **loader_options)
    return train(model, config=train_config(args), make_batches=make_batches, loss_fn=loss_fn, evaluate=evaluate,
                 out_dir=run.out, tracker=run.tracker, device=run.context.device, run_config=run.config)


# The experiments' decoders: an MLP of widening 1 and no dropout, whatever the encoder's (their results were measured so).
EXPERIMENT_DECODER = {"cross_attention_widening_factor": 1, "dropout": 0.0}


def classifier(adapter: torch.nn.Module, args: argparse.Namespace, *, num_classes: int, widening_factor: int = 1,
               init_scale: float | None = None) -> PerceiverIO:
    """A Perceiver IO classifier behind ``adapter`` (``perceiver.builders.classifier``): the encoder from the model
    size flags, one class query."""
    return builders.classifier(adapter, num_classes=num_classes, widening_factor=widening_factor,
                               init_scale=init_scale, decoder_kwargs=EXPERIMENT_DECODER, **encoder_kwargs(args))


def confusion_metrics(counts: torch.Tensor, class_names: list[str], *, figure: bool, prefix: str = "") -> dict[str, Any]:
    """Accuracy and sample count of a confusion matrix (rows: true class), and its figure when ``figure``."""
    seen = int(counts.sum())
    metrics: dict[str, Any] = {f"{prefix}accuracy": float(counts.diagonal().sum()) / max(1, seen),
                               f"{prefix}samples": seen}
    if figure:
        from perceiver.training.plots import confusion_matrix_figure  # matplotlib only where figures are drawn

        metrics[f"{prefix}confusion_matrix"] = confusion_matrix_figure(counts, class_names=class_names)
    return metrics


def run_summary(result, model: torch.nn.Module, run: "Run") -> dict[str, Any]:
    """The figures every experiment reports beside its own: steps, time, size, skipped samples, processes."""
    return {
        "final_train_loss": result.losses[-1][1] if result.losses else float("nan"),
        "steps": result.step,
        "train_seconds": round(result.train_seconds, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corrupt_samples": result.corrupt_samples,
        "world_size": run.context.world_size,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """An experiment's process: its arguments, output folder, place in the process group and wandb run."""

    args: argparse.Namespace
    out: Path
    context: DistributedContext
    tracker: Tracker
    config: dict[str, Any]

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write ``out/metrics.json`` and the wandb summary (main rank), close wandb and the process group."""
        metrics = {key: _plain(value) for key, value in metrics.items()}
        if self.context.is_main:
            write_metrics(self.out, metrics)
            print(json.dumps(metrics, indent=2))
        self.tracker.summary(metrics)
        self.tracker.finish()
        cleanup_distributed()
        return metrics


def start_run(args: argparse.Namespace, *, name: str) -> Run:
    """Join the process group, seed (model init identical on every rank, other draws per rank), open wandb.

    With ``--resume`` the wandb run of the checkpoint continues, so its curves stay in one run.
    """
    context = setup_distributed(device=args.device)
    threads, why = set_threads(args.threads)
    if context.is_main:
        print(f"CPU threads: {threads} ({why})")
    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    config.update(experiment=name, threads=threads, world_size=context.world_size, device=str(context.device),
                  torch_version=str(torch.__version__))
    run_id = None
    if args.resume and (out / LATEST).is_file() and context.is_main:
        run_id = load_checkpoint(out / LATEST).get("wandb_run_id")
    tracker = Tracker(out_dir=out, project=args.wandb_project, entity=args.wandb_entity, name=f"{name}-{out.name}",
                      config=config, mode=args.wandb, run_id=run_id, enabled=context.is_main)
    return Run(args=args, out=out, context=context, tracker=tracker, config=config)


def per_rank_seed(seed: int, rank: int) -> None:
    """Seed the global generators differently on each rank after the model is built (dropout masks then differ)."""
    seed_everything(seed + 1_000_003 * rank)


def write_metrics(out: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write ``out/metrics.json`` atomically: a flat JSON object of numbers, strings and booleans."""
    for key, value in metrics.items():
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"metrics[{key!r}]: expected a number, string or bool (flat JSON), got {type(value).__name__}")
    text = json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()},
                      indent=2)
    return atomic_write_bytes(Path(out) / METRICS_FILE, (text + "\n").encode())


def _plain(value: Any) -> Any:
    if torch.is_tensor(value) or isinstance(value, np.generic):
        return value.item()
    return value


# Fashion-MNIST images (fashion_mnist, masked_pretraining) ------------------------------------------------------------

FASHION_MNIST = "fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_MEAN, FASHION_STD = 0.286, 0.353  # of the training images' pixels
IMAGE_INPUTS = ("conv", "patches")


def add_image_model_args(parser: argparse.ArgumentParser, *, inputs: tuple[str, ...] = IMAGE_INPUTS,
                         max_shift: int = 2, conv_channels: tuple[int, ...] = (32, 64, 128),
                         conv_strides: tuple[int, ...] = (1, 2, 2), conv_downsample: str = "stride") -> None:
    """The input adapter's, model's and augmentation's flags, shared by the experiments on Fashion-MNIST images;
    ``inputs`` are the input adapters the experiment builds (the first is the default; the conv flags exist only
    where ``"conv"`` is one of them), and ``max_shift`` and the ``conv_*`` arguments are the experiment's defaults
    for their flags."""
    described = {"conv": "a convolutional stem (ConvAdapter)", "patches": "linear patch embeddings (PatchAdapter)"}
    parser.add_argument("--input", choices=inputs, default=inputs[0],
                        help="input adapter: " + " or ".join(described[name] for name in inputs))
    if "conv" in inputs:
        parser.add_argument("--conv-channels", type=int, nargs="+", default=list(conv_channels),
                            help="conv input: output channels of each 3×3 convolution")
        parser.add_argument("--conv-strides", type=int, nargs="+", default=list(conv_strides),
                            help="conv input: downsampling factor of each layer (their product divides 28)")
        parser.add_argument("--conv-downsample", choices=DOWNSAMPLING, default=conv_downsample,
                            help="conv input: downsample by strided convolutions or by max-pooling after each layer")
    parser.add_argument("--patch-size", type=int, default=4, help="patch input: side of the square patches (divides 28)")
    parser.add_argument("--embed-channels", type=int, default=128, help="patch input: width of the patch embedding")
    parser.add_argument("--num-bands", type=int, default=8, help="Fourier frequency bands per image axis")
    parser.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    parser.add_argument("--init-scale", type=float, default=None,
                        help="fixed std of the encoder's and decoder's initial weights (default: the package's "
                             "fan-in scaled initialisation)")
    parser.add_argument("--max-shift", type=int, default=max_shift, help="augmentation: largest random shift in pixels")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="augmentation: mirror half of the training images left to right")


def check_image_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_shift < 0:
        parser.error(f"--max-shift: expected a number of pixels >= 0, got {args.max_shift}")
    if args.input == "patches" and 28 % args.patch_size:
        parser.error(f"--patch-size: expected a divisor of 28, got {args.patch_size}")
    if args.input == "conv":
        if len(args.conv_channels) != len(args.conv_strides):
            parser.error(f"--conv-strides: expected one stride per --conv-channels entry "
                         f"({len(args.conv_channels)}), got {len(args.conv_strides)}")
        if 28 % math.prod(args.conv_strides):
            parser.error(f"--conv-strides: expected strides whose product divides 28, got {args.conv_strides}")


def normalize_fashion(images: torch.Tensor) -> torch.Tensor:
    return (images - FASHION_MEAN) / FASHION_STD


def shift_and_flip_images(images: torch.Tensor, max_shift: int, flip: bool) -> torch.Tensor:
    """The training augmentation of the image experiments; ``max_shift`` 0 without ``flip`` leaves the images as
    they are."""
    return shift_and_flip(images, max_shift=max_shift, flip=flip) if max_shift or flip else images


# Audio-visual digits (av_fusion, av_recovery, resampler_digits) -----------------------------------------------------
#
# A sample of ``av-digits`` is an MNIST image (1, 28, 28) in [0, 1] and a spoken digit of the same class (16 kHz
# waveform). The image becomes 4 × 4 pixel patches (``PatchAdapter``); the audio becomes one token per 40 ms of
# log-mel frames over all mel bins (``SpectrogramAdapter``, as in ``experiments.spoken_digits``).
#
# Degradations (``Degradation``) make each modality hard on its own, so that fusing them can matter: the image gets a
# uniform-noise square and Gaussian pixel noise (``perceiver.augment.occlude_and_add_noise``), the audio white noise
# at a fixed SNR over its real samples, silences included (``perceiver.augment.add_white_noise``). Training draws
# fresh degradations every step; evaluation draws them from a generator seeded by ``--seed`` with the test split read
# in a fixed order, so every model of a comparison sees the very same degraded test set.

AV_DIGITS = "av-digits"
AV_MODALITIES = ("image", "audio")
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))
SAMPLE_RATE = 16000
MNIST_SIZE = 28
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # MNIST's pixel statistics
EVAL_SEED_OFFSET = 7919  # the evaluation's degradations come from their own stream, never the training one's


def add_av_adapter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input adapters")
    group.add_argument("--patch-size", type=int, default=4, help="image: side of the square pixel patches (divides 28)")
    group.add_argument("--embed-channels", type=int, default=64, help="width of the linear patch embeddings")
    group.add_argument("--num-bands", type=int, default=6, help="Fourier frequency bands per axis")
    group.add_argument("--n-mels", type=int, default=32, help="audio: mel bins")
    group.add_argument("--f-max", type=float, default=4000.0, help="audio: highest filterbank frequency in Hz")
    group.add_argument("--patch-frames", type=int, default=4, help="audio: 10 ms frames per token")


def add_degradation_args(parser: argparse.ArgumentParser, *, image_noise: float, occlusion: int,
                         audio_snr_db: float | None) -> None:
    group = parser.add_argument_group("degradation (see experiments/common.py)")
    group.add_argument("--image-noise", type=float, default=image_noise, help="std of the Gaussian pixel noise")
    group.add_argument("--occlusion", type=int, default=occlusion, help="side in pixels of the noise square (0 = none)")
    group.add_argument("--audio-snr-db", type=float, default=audio_snr_db,
                       help="signal-to-noise ratio of the added white noise in dB (omit for clean audio)")


def check_av_adapter_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if MNIST_SIZE % args.patch_size:
        parser.error(f"--patch-size: expected a divisor of {MNIST_SIZE}, got {args.patch_size}")
    for flag in ("embed_channels", "n_mels", "patch_frames"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if getattr(args, "image_noise", 0.0) < 0:
        parser.error(f"--image-noise: expected a standard deviation >= 0, got {args.image_noise}")
    check_occlusion(parser, getattr(args, "occlusion", 0))


def check_occlusion(parser: argparse.ArgumentParser, occlusion: int) -> None:
    """``--occlusion``, the side of a square on a 28×28 image: 0 (none) to the whole image."""
    if not 0 <= occlusion <= MNIST_SIZE:
        parser.error(f"--occlusion: expected a side in [0, {MNIST_SIZE}] pixels, got {occlusion}")


def av_image_adapter(args: argparse.Namespace) -> PatchAdapter:
    return PatchAdapter(in_channels=1, max_size=(MNIST_SIZE, MNIST_SIZE), patch_size=args.patch_size,
                        embed_channels=args.embed_channels, num_bands=args.num_bands)


def av_audio_adapter(args: argparse.Namespace) -> SpectrogramAdapter:
    return SpectrogramAdapter(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=args.n_mels,
                              f_max=args.f_max, max_duration=1.0, patch_size=(args.patch_frames, args.n_mels),
                              embed_channels=args.embed_channels, num_bands=args.num_bands)


@dataclass(frozen=True)
class Degradation:
    image_noise: float = 0.0
    occlusion: int = 0
    audio_snr_db: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Degradation":
        return cls(image_noise=args.image_noise, occlusion=args.occlusion, audio_snr_db=args.audio_snr_db)

    def describe(self) -> str:
        audio = "clean" if self.audio_snr_db is None else f"white noise at {self.audio_snr_db:g} dB SNR"
        return (f"image: {self.occlusion}×{self.occlusion} noise square + Gaussian noise σ={self.image_noise:g}; "
                f"audio: {audio}")


def crop_audio(audio: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first second (the audio adapter's longest input); padding stays trailing."""
    return audio[:, :SAMPLE_RATE], pad_mask[:, :SAMPLE_RATE]


def av_model_inputs(batch: dict, modalities, device: torch.device, degradation: Degradation = Degradation(),
                    generator: torch.Generator | None = None) -> tuple[dict, dict]:
    """``(x, pad_masks)`` for the models: ``x = {name: input}`` for ``modalities``, degraded, on ``device``.

    Images are standardised after degrading (the noise is added in pixel space); audio is cropped to one second.
    Both modalities are always degraded in the same order, so the draws for one do not depend on which are asked for.
    """
    images = occlude_and_add_noise(batch["image"], noise_std=degradation.image_noise, occlusion=degradation.occlusion,
                                   generator=generator)
    audio, audio_pad = crop_audio(batch["audio"], batch["audio_pad_mask"])
    audio = add_white_noise(audio, audio_pad, snr_db=degradation.audio_snr_db, generator=generator)
    x, pad_masks = {}, {}
    if "image" in modalities:
        x["image"] = ((images - MNIST_MEAN) / MNIST_STD).to(device)
    if "audio" in modalities:
        x["audio"] = audio.to(device)
        pad_masks["audio"] = audio_pad.to(device)
    return x, pad_masks


def eval_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
