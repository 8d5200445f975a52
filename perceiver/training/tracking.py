"""wandb logging that never stops training: every call is guarded, and the first failure is warned about once.

Only the main rank logs (other ranks hold a disabled ``Tracker``). Values may be numbers, 0-d tensors, matplotlib
figures (logged as images, then closed) or anything wandb accepts (``wandb.Image``, tables).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

WANDB_MODES = ("online", "offline", "disabled")


def default_wandb_mode() -> str:
    """``online`` when an API key is set in the environment, ``offline`` otherwise (runs sync later)."""
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """A guarded wandb run. ``mode="disabled"`` or ``enabled=False`` makes every method a no-op.

    Args:
        out_dir: the experiment's output folder; wandb writes its run folder under ``out_dir/wandb``.
        project, name: the wandb project and run name.
        config: the full configuration of the run (hyperparameters, model sizes, data), saved with it.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``.
        run_id: resume this wandb run (a resumed training continues its curves in the same run).
        enabled: False on every rank but the main one.
    """

    def __init__(self, *, out_dir: str | os.PathLike, project: str, config: dict[str, Any], mode: str,
                 name: str | None = None, run_id: str | None = None, enabled: bool = True):
        if mode not in WANDB_MODES:
            raise ValueError(f"mode: expected one of {WANDB_MODES}, got {mode!r}")
        self.mode = mode
        self._wandb = None
        self._warned = False
        if not enabled or mode == "disabled":
            return
        try:
            import wandb

            directory = Path(out_dir)
            directory.mkdir(parents=True, exist_ok=True)
            wandb.init(project=project, name=name, config=config, dir=str(directory), mode=mode, id=run_id,
                       resume="allow" if run_id else None, settings=wandb.Settings(console="off"))
            self._wandb = wandb
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            self._failed("init", error)

    @property
    def active(self) -> bool:
        return self._wandb is not None

    @property
    def run_id(self) -> str | None:
        run = getattr(self._wandb, "run", None)
        return getattr(run, "id", None)

    def log(self, values: dict[str, Any], *, step: int) -> None:
        if not self.active or not values:
            _close_figures(values)
            return
        try:
            self._wandb.log({key: self._loggable(value) for key, value in values.items()}, step=step)
        except Exception as error:  # noqa: BLE001
            self._failed("log", error)
        finally:
            _close_figures(values)

    def summary(self, values: dict[str, Any]) -> None:
        if not self.active:
            return
        try:
            for key, value in values.items():
                self._wandb.run.summary[key] = value
        except Exception as error:  # noqa: BLE001
            self._failed("summary", error)

    def finish(self) -> None:
        if not self.active:
            return
        try:
            self._wandb.finish()
        except Exception as error:  # noqa: BLE001
            self._failed("finish", error)
        self._wandb = None

    def _loggable(self, value: Any) -> Any:
        if hasattr(value, "savefig"):  # a matplotlib figure
            return self._wandb.Image(value)
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            return value.item()
        return value

    def _failed(self, what: str, error: Exception) -> None:
        if not self._warned:
            warnings.warn(f"wandb {what} failed ({type(error).__name__}: {error}); training goes on, and further "
                          "wandb failures are ignored silently", RuntimeWarning, stacklevel=3)
            self._warned = True


def _close_figures(values: dict[str, Any]) -> None:
    for value in values.values():
        if hasattr(value, "savefig"):
            import matplotlib.pyplot as plt

            plt.close(value)
