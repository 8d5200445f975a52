"""wandb logging that never stops training: every call is guarded, and the first failure is warned about once.

Only the main rank logs (other ranks hold a disabled ``Tracker``). Values may be numbers, 0-d tensors, matplotlib
figures (logged as images, then closed) or anything wandb accepts (``wandb.Image``, tables). Every figure is also
written as a PNG under ``out_dir/figures/`` (the key with ``/`` as ``_``: ``eval/confusion_matrix`` →
``figures/eval_confusion_matrix.png``, the latest one logged), whatever the wandb mode, disabled included.

Where an argument is None, wandb's own environment variables decide, as they would for ``wandb.init``: ``WANDB_MODE``
(else ``online`` when ``WANDB_API_KEY`` is set, else ``offline``), ``WANDB_PROJECT`` (else ``perceiver-triton``),
``WANDB_ENTITY`` (else your default entity) and ``WANDB_DIR`` (else ``out_dir``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

WANDB_MODES = ("online", "offline", "disabled")
DEFAULT_PROJECT = "perceiver-triton"
# wandb's older names for its modes, as WANDB_MODE may still give them
_MODE_ALIASES = {"run": "online", "dryrun": "offline"}


def default_wandb_mode() -> str:
    """The mode when none is chosen: ``WANDB_MODE`` if set, else ``online`` when ``WANDB_API_KEY`` is set, else
    ``offline`` (runs sync later)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"WANDB_MODE: expected one of {WANDB_MODES}, got {os.environ['WANDB_MODE']!r}")
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def default_wandb_project() -> str:
    """``WANDB_PROJECT`` if set, else ``perceiver-triton``."""
    return os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


def figure_path(figures_dir: Path, key: str) -> Path:
    """Where the figure logged under ``key`` is written: ``figures_dir/<key with / as _>.png``."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key.replace("/", "_"))
    return figures_dir / f"{name}.png"


class Tracker:
    """A guarded wandb run. ``mode="disabled"`` or ``enabled=False`` makes every method a no-op.

    Figures are written under ``out_dir/figures`` in every mode (only ``enabled=False`` skips them).

    Args:
        out_dir: the experiment's output folder; wandb writes its run folder under ``out_dir/wandb`` (or under
            ``WANDB_DIR`` when that is set).
        project, entity, name: the wandb project, entity (team or user) and run name; None: ``WANDB_PROJECT`` (else
            ``perceiver-triton``) and ``WANDB_ENTITY`` (else wandb's default entity).
        config: the full configuration of the run (hyperparameters, model sizes, data), saved with it.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; None: ``default_wandb_mode()`` (``WANDB_MODE``, ...).
        run_id: resume this wandb run (a resumed training continues its curves in the same run).
        enabled: False on every rank but the main one.
    """

    def __init__(self, *, out_dir: str | os.PathLike, config: dict[str, Any], mode: str | None = None,
                 project: str | None = None, entity: str | None = None, name: str | None = None,
                 run_id: str | None = None, enabled: bool = True):
        mode = default_wandb_mode() if mode is None else mode
        if mode not in WANDB_MODES:
            raise ValueError(f"mode: expected one of {WANDB_MODES}, got {mode!r}")
        self.mode = mode
        self.figures_dir = Path(out_dir) / "figures" if enabled else None
        self._wandb = None
        self._warned = False
        if not enabled or mode == "disabled":
            return
        try:
            import wandb

            directory = Path(os.environ.get("WANDB_DIR") or out_dir)
            directory.mkdir(parents=True, exist_ok=True)
            wandb.init(project=project or default_wandb_project(), entity=entity or os.environ.get("WANDB_ENTITY"),
                       name=name, config=config, dir=str(directory), mode=mode, id=run_id,
                       resume="allow" if run_id else None, settings=wandb.Settings(console="off"))
            self._wandb = wandb
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            self._failed("wandb init", error)

    @property
    def active(self) -> bool:
        return self._wandb is not None

    @property
    def run_id(self) -> str | None:
        run = getattr(self._wandb, "run", None)
        return getattr(run, "id", None)

    @property
    def saves_figures(self) -> bool:
        """Whether figures given to ``log`` are kept (as PNG files, and in wandb when it is active)."""
        return self.figures_dir is not None

    def log(self, values: dict[str, Any], *, step: int) -> None:
        self._save_figures(values)
        if not self.active or not values:
            _close_figures(values)
            return
        try:
            self._wandb.log({key: self._loggable(value) for key, value in values.items()}, step=step)
        except Exception as error:  # noqa: BLE001
            self._failed("wandb log", error)
        finally:
            _close_figures(values)

    def summary(self, values: dict[str, Any]) -> None:
        if not self.active:
            return
        try:
            for key, value in values.items():
                self._wandb.run.summary[key] = value
        except Exception as error:  # noqa: BLE001
            self._failed("wandb summary", error)

    def finish(self) -> None:
        if not self.active:
            return
        try:
            self._wandb.finish()
        except Exception as error:  # noqa: BLE001
            self._failed("wandb finish", error)
        self._wandb = None

    def _save_figures(self, values: dict[str, Any]) -> None:
        if self.figures_dir is None:
            return
        for key, value in values.items():
            if hasattr(value, "savefig"):
                try:
                    self.figures_dir.mkdir(parents=True, exist_ok=True)
                    value.savefig(figure_path(self.figures_dir, key), dpi=120)
                except Exception as error:  # noqa: BLE001 - a figure must never stop training
                    self._failed(f"saving the figure {key!r}", error)

    def _loggable(self, value: Any) -> Any:
        if hasattr(value, "savefig"):  # a matplotlib figure
            return self._wandb.Image(value)
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            return value.item()
        return value

    def _failed(self, what: str, error: Exception) -> None:
        if not self._warned:
            warnings.warn(f"{what} failed ({type(error).__name__}: {error}); training goes on, and further "
                          "logging failures are ignored silently", RuntimeWarning, stacklevel=3)
            self._warned = True


def _close_figures(values: dict[str, Any]) -> None:
    for value in values.values():
        if hasattr(value, "savefig"):
            import matplotlib.pyplot as plt

            plt.close(value)
