"""The training loop: read it top to bottom in ``train``.

What the loop needs from a task is three callables:

- ``make_batches(epoch)`` → an iterable of batch dicts for that epoch. It must be deterministic given the epoch (seed
  it from the run's seed and the epoch; split by rank and worker inside), so that resume can replay an epoch and skip
  the batches already trained on. An epoch may be finite (the loop moves on to ``epoch + 1``) or endless.
- ``loss_fn(model, batch)`` → ``(loss, metrics)``: a scalar loss tensor and a dict of scalar metrics (e.g. accuracy).
- ``evaluate(model)`` → a dict of metrics. Numbers are averaged over ranks; other values (matplotlib figures,
  ``wandb.Image``) go to wandb from the main rank as they are.

The data position is (epoch, batches consumed in the epoch); a batch's ``"corrupt"`` entry (samples the data pipeline
skipped) is summed over ranks and logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from perceiver.training import distributed
from perceiver.training.checkpoint import LATEST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from perceiver.training.ema import ema_model
from perceiver.training.optim import build_optimizer
from perceiver.training.schedule import warmup_cosine_scheduler
from perceiver.training.tracking import Tracker

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

Batch = dict[str, Any]


@dataclass
class TrainConfig:
    """Hyperparameters of one run; saved in every checkpoint and in the wandb config.

    ``eval_every`` / ``checkpoint_every`` of 0 mean: only once, after the last step. ``precision="auto"`` is bf16
    autocast on a GPU that supports it (fp16 with loss scaling on older ones) and fp32 on CPU. ``max_seconds``: a
    training-time budget; the run stops after the first step that reaches it (or at ``max_steps``, whichever comes
    first) and the cosine decays over the budget instead of the steps. The time counted is the steps' (data,
    forward, backward, update), not evaluations or checkpoints. ``ema_decay`` > 0 keeps an exponential moving average
    of the weights (``perceiver.training.ema``), which is what evaluations score and what the model holds when
    ``train`` returns; the checkpoints keep both, the trained weights under ``"model"`` and the average under
    ``"ema"``.
    """

    max_steps: int
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    precision: str = "auto"
    compile: bool = False
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True
    max_seconds: float | None = None
    ema_decay: float = 0.0

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {self.max_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds: expected a positive float or None, got {self.max_seconds}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a float in [0, 1) (0 = no average), got {self.ema_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip: expected a positive float or None, got {self.grad_clip}")


@dataclass
class TrainResult:
    """What a run did: its final step, the logged (step, loss) pairs of this process's run, the last evaluation."""

    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    corrupt_samples: int = 0


class BatchStream:
    """Batches in order over epochs, tracking the data position (epoch, batches consumed in that epoch)."""

    def __init__(self, make_batches: Callable[[int], Iterable[Batch]], *, epoch: int = 0, consumed: int = 0):
        self.make_batches = make_batches
        self.epoch = epoch
        self.consumed = 0
        self._batches = iter(make_batches(epoch))
        for _ in range(consumed):  # fast-forward: the epoch is replayed deterministically
            self._next_in_epoch(f"resume position (epoch {epoch}, batch {consumed})")

    def _next_in_epoch(self, why: str) -> Batch:
        try:
            batch = next(self._batches)
        except StopIteration:
            raise ValueError(f"make_batches({self.epoch}): ran out after {self.consumed} batches before the {why}; "
                             "make_batches must be deterministic given the epoch") from None
        self.consumed += 1
        return batch

    def __next__(self) -> Batch:
        try:
            batch = next(self._batches)
            self.consumed += 1
            return batch
        except StopIteration:
            self.epoch, self.consumed = self.epoch + 1, 0
            self._batches = iter(self.make_batches(self.epoch))
            return self._next_in_epoch("first batch (an epoch must not be empty)")

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.consumed}


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


def batch_size_of(batch: Batch) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"batch: expected at least one tensor with a batch dimension, got keys {sorted(batch)}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (always on CPU, so that CPU runs are exact and reproducible)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm`` (None: leave them); returns the norm before."""
    return nn.utils.clip_grad_norm_(list(parameters), math.inf if max_norm is None else max_norm)


def adopt_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, config: TrainConfig, step: int) -> str | None:
    """After a resume: give the restored schedule this run's length (``max_steps``, ``max_seconds``), warm-up and
    floor, and set the optimizer's lr for ``step`` from it; returns what changed, or None when nothing did.

    Without this, ``--resume`` with a larger ``--max-steps`` would train the extension at the old schedule's floor.
    The schedule becomes the one a run started with this run's settings would have: the lr at ``step`` rises from
    the old schedule's value to the new one's, then follows the new cosine to its floor at the new end.
    """
    schedule = scheduler.lr_lambdas[0]
    wanted = {"max_steps": config.max_steps, "warmup_steps": config.warmup_steps,
              "min_lr_ratio": config.min_lr_ratio, "max_seconds": config.max_seconds}
    before = {name: getattr(schedule, name) for name in wanted}
    if before == wanted:
        return None
    old_lr = scheduler.get_last_lr()[0]
    for name, value in wanted.items():
        setattr(schedule, name, value)  # elapsed_seconds, the clock of a time budget, is kept
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * schedule(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    changes = ", ".join(f"{name} {before[name]} -> {wanted[name]}" for name in wanted if before[name] != wanted[name])
    return (f"resume: the lr schedule changes ({changes}); it now follows the schedule of these settings: lr at step "
            f"{step} {old_lr:.3e} -> {scheduler.get_last_lr()[0]:.3e}")


def reduce_numbers(values: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Average the numeric entries over ranks (one all-reduce); non-numeric entries are dropped."""
    names = [k for k, v in values.items() if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)]
    if not names:
        return {}
    stacked = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=device)
    reduced = distributed.all_reduce_sum(stacked) / distributed.world_size()
    return dict(zip(names, reduced.tolist()))


def train(
    model: nn.Module,
    *,
    config: TrainConfig,
    make_batches: Callable[[int], Iterable[Batch]],
    loss_fn: Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, Any]]],
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    device: torch.device | str | None = None,
    run_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.max_steps`` optimizer steps; checkpoints go to ``out_dir/latest.pt``.

    Under ``torchrun`` (after ``setup_distributed``) the model is wrapped in DDP; every rank must call ``train``.
    ``run_config`` (the experiment's full configuration) is stored in each checkpoint beside ``config``.
    """
    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    is_main, world = distributed.rank() == 0, distributed.world_size()
    tracker = tracker or Tracker(out_dir=out_dir, project="perceiver", config={}, mode="disabled")
    model.to(device)

    optimizer = build_optimizer(model, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                betas=config.betas, eps=config.eps)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=config.warmup_steps, max_steps=config.max_steps,
                                        min_lr_ratio=config.min_lr_ratio, max_seconds=config.max_seconds)
    schedule = scheduler.lr_lambdas[0]
    amp_dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ema_model(model, config.ema_decay) if config.ema_decay else None
    evaluated = ema.module if ema is not None else model

    # Resume: weights, optimizer, schedule and loss scale now; the RNG states only after the data stream has been
    # fast-forwarded, so that whatever the replay draws cannot shift them.
    step, position, corrupt_total, saved_rng = 0, {"epoch": 0, "batches": 0}, 0, None
    checkpoint_path = out_dir / LATEST
    if config.resume and checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path, map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint["scaler"]:  # empty when saved without fp16 loss scaling
            scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            if "ema" not in checkpoint:
                raise ValueError(f"checkpoint {checkpoint_path}: saved without a weight average; resume it with "
                                 f"ema_decay 0 (it was given {config.ema_decay})")
            ema.load_state_dict(checkpoint["ema"])
        step, position, corrupt_total = checkpoint["step"], checkpoint["data_position"], checkpoint["corrupt_samples"]
        saved_rng = checkpoint["rng"]
        if is_main:
            print(f"resuming from {checkpoint_path} at step {step} (epoch {position['epoch']}, "
                  f"batch {position['batches']})")
        change = adopt_schedule(scheduler, config, step)
        if change and is_main:
            print(change)
    batches = BatchStream(make_batches, epoch=position["epoch"], consumed=position["batches"])
    if saved_rng is not None:
        if len(saved_rng) != world:
            raise ValueError(f"checkpoint: saved by {len(saved_rng)} processes, resumed by {world}; exact resume "
                             "needs the same world size")
        set_rng_state(saved_rng[distributed.rank()])

    forward_model = model
    if config.compile:
        forward_model = torch.compile(forward_model)
    if world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        forward_model = nn.parallel.DistributedDataParallel(forward_model, **ddp_kwargs)

    # Plain JSON data only, so that checkpoints load with torch.load(weights_only=True).
    plain_config = json.loads(json.dumps(run_config or {}, default=str))

    def write_checkpoint() -> None:
        states = distributed.all_gather_objects(rng_state())  # every rank's generators, so each resumes exactly
        if is_main:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "data_position": batches.position(), "corrupt_samples": corrupt_total, "rng": states,
                "config": dataclasses.asdict(config), "run_config": plain_config, "wandb_run_id": tracker.run_id,
                **({"ema": ema.state_dict()} if ema is not None else {}),
            })

    def run_evaluation() -> dict[str, Any]:
        if evaluate is None:
            return {}
        evaluated.eval()
        with torch.no_grad(), autocast(device, amp_dtype):
            values = evaluate(evaluated)
        evaluated.train()
        numbers = reduce_numbers(values, device)
        extras = {k: v for k, v in values.items() if k not in numbers}
        if is_main:  # tqdm.write: on a line of its own, above the progress bar
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
        tracker.log({f"eval/{k}": v for k, v in {**numbers, **extras}.items()}, step=step)
        return numbers

    result = TrainResult(step=step)
    show_bar = is_main and config.progress
    progress = tqdm(total=config.max_steps, initial=step, desc="training", unit="step", disable=not show_bar)
    # Sums since the last log, kept on the device so that logging, not every step, synchronises with the GPU.
    loss_sum, samples, corrupt = torch.zeros((), device=device, dtype=torch.float64), 0, 0
    metric_sums: dict[str, torch.Tensor] = {}
    window_steps, window_start, started = 0, time.perf_counter(), time.perf_counter()
    out_of_time = config.max_seconds is not None and schedule.elapsed_seconds >= config.max_seconds
    model.train()
    while step < config.max_steps and not out_of_time:
        step_start = time.perf_counter()
        batch = next(batches)
        corrupt += int(batch.get("corrupt", 0))
        samples += batch_size_of(batch)
        batch = to_device(batch, device)

        with autocast(device, amp_dtype):
            loss, metrics = loss_fn(forward_model, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        lr = scheduler.get_last_lr()[0]
        if config.max_seconds is not None:
            # The schedule's clock (restored with it on resume); averaged over ranks so that all stop together.
            seconds = torch.tensor(time.perf_counter() - step_start, dtype=torch.float64, device=device)
            schedule.elapsed_seconds += float(distributed.all_reduce_sum(seconds)) / world
            out_of_time = schedule.elapsed_seconds >= config.max_seconds
        scheduler.step()
        step += 1
        window_steps += 1
        loss_sum += loss.detach().double()
        for name, value in metrics.items():
            metric_sums[name] = metric_sums.get(name, 0.0) + torch.as_tensor(value, device=device).detach().double()
        if show_bar:  # the mean loss since the last log step, so the bar moves every step (one sync a step)
            progress.set_postfix(loss=f"{float(loss_sum) / window_steps:.4f}", lr=f"{lr:.2e}", refresh=False)
        progress.update(1)

        last = step == config.max_steps or out_of_time
        if (config.log_every and step % config.log_every == 0) or last:
            elapsed = time.perf_counter() - window_start
            local = {"loss": loss_sum / window_steps, **{k: v / window_steps for k, v in metric_sums.items()}}
            reduced = reduce_numbers(local, device)
            totals = distributed.all_reduce_sum(torch.tensor([samples, corrupt], dtype=torch.float64, device=device))
            corrupt_total += int(totals[1])
            result.losses.append((step, reduced["loss"]))
            if is_main and not config.progress:  # no bar (e.g. cluster logs): one plain line per log step
                tqdm.write(f"step {step}/{config.max_steps}: loss {reduced['loss']:.4f}, lr {lr:.2e}, "
                           f"{window_steps / max(elapsed, 1e-9):.2f} steps/s")
            tracker.log({**{f"train/{k}": v for k, v in reduced.items()}, "train/lr": lr,
                         "train/grad_norm": grad_norm.item(), "train/samples_per_second": float(totals[0]) / elapsed,
                         "data/corrupt_samples": corrupt_total}, step=step)
            loss_sum.zero_()
            metric_sums, samples, corrupt, window_steps, window_start = {}, 0, 0, 0, time.perf_counter()

        if (config.eval_every and step % config.eval_every == 0) or last:
            result.eval_metrics = run_evaluation()
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or last:
            if window_steps:  # unlogged corrupt counts would be lost from the checkpoint: fold them in first
                corrupt_total += int(distributed.all_reduce_sum(torch.tensor(float(corrupt), device=device)))
                corrupt = 0
            write_checkpoint()
    progress.close()
    finished = step == config.max_steps or out_of_time
    if not result.eval_metrics and evaluate is not None and finished and not result.losses:
        result.eval_metrics = run_evaluation()  # resumed a finished run: report its evaluation again

    if ema is not None:  # the caller saves and uses what was evaluated
        model.load_state_dict(ema.module.state_dict())
    result.step = step
    result.train_seconds = time.perf_counter() - started
    result.corrupt_samples = corrupt_total
    return result


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
