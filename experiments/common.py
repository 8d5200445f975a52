"""The command-line contract every experiment shares, and the few steps every experiment takes around ``train``.

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

from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO
from perceiver.adapters import ClassificationOutput, ClassificationQuery
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
    data.add_argument("--limit", type=int, default=None, help="build at most this many samples per split")
    data.add_argument("--num-workers", type=int, default=1, help="data loader workers per process")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject values no run can use, naming the flag; fill in defaults that depend on other flags."""
    for flag in ("max_steps", "batch_size", "num_latents", "num_latent_channels"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if not args.lr > 0:
        parser.error(f"--lr: expected a positive float, got {args.lr}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error(f"--max-minutes: expected a positive number, got {args.max_minutes}")
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
        max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes,
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
    return PerceiverEncoder(num_input_channels=num_input_channels, **encoder_kwargs(args),
                            cross_attention_widening_factor=widening_factor,
                            self_attention_widening_factor=widening_factor, init_scale=init_scale)


def train_on_shards(model: torch.nn.Module, args: argparse.Namespace, run: "Run", train_shards, *, loss_fn, evaluate,
                    **loader_options) -> TrainResult:
    """``train`` with the run's flags over ``train_shards`` (batches of ``--batch-size``, the last partial one dropped;
    ``loader_options`` go to ``make_loader``), checkpoints in the run's folder, metrics to its wandb run."""
    make_batches = loader_batches(train_shards, batch_size=args.batch_size, seed=args.seed,
                                  num_workers=args.num_workers, drop_last=True, **loader_options)
    return train(model, config=train_config(args), make_batches=make_batches, loss_fn=loss_fn, evaluate=evaluate,
                 out_dir=run.out, tracker=run.tracker, device=run.context.device, run_config=run.config)


def classifier(adapter: torch.nn.Module, args: argparse.Namespace, *, num_classes: int, widening_factor: int = 1,
               init_scale: float | None = None) -> PerceiverIO:
    """A Perceiver IO classifier behind ``adapter``: the encoder from the model size flags, one class query."""
    channels = args.num_latent_channels
    return PerceiverIO(
        input_adapter=adapter,
        encoder=build_encoder(args, adapter.num_channels, widening_factor=widening_factor, init_scale=init_scale),
        decoder=PerceiverDecoder(
            query_provider=ClassificationQuery(num_channels=channels),
            output_adapter=ClassificationOutput(num_channels=channels, num_classes=num_classes),
            num_latent_channels=channels,
            init_scale=init_scale,
        ),
    )


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
