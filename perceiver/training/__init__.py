"""A small training loop for the experiments: schedules, AMP, a moving average of the weights, atomic checkpoints, DDP,
wandb logging.

``train(model, config=TrainConfig(...), make_batches=..., loss_fn=..., evaluate=..., out_dir=...)`` is the whole
interface; ``perceiver/training/loop.py`` reads top to bottom.
"""

from perceiver.training.checkpoint import (
    LATEST,
    atomic_write_bytes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from perceiver.training.distributed import DistributedContext, cleanup_distributed, setup_distributed
from perceiver.training.ema import ema_model
from perceiver.training.loop import BatchStream, TrainConfig, TrainResult, clip_gradients, train
from perceiver.training.optim import Lamb, build_optimizer
from perceiver.training.schedule import WarmupCosine, warmup_cosine_scheduler
from perceiver.training.tracking import WANDB_MODES, Tracker, default_wandb_mode, default_wandb_project

__all__ = [
    "LATEST",
    "WANDB_MODES",
    "BatchStream",
    "DistributedContext",
    "Lamb",
    "TrainConfig",
    "TrainResult",
    "Tracker",
    "WarmupCosine",
    "atomic_write_bytes",
    "build_optimizer",
    "cleanup_distributed",
    "clip_gradients",
    "default_wandb_mode",
    "default_wandb_project",
    "ema_model",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "setup_distributed",
    "train",
    "warmup_cosine_scheduler",
]
