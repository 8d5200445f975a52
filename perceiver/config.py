"""Save a model's configuration beside its weights and rebuild it.

Every configurable module of the package keeps its constructor's keyword arguments in ``self.config`` (submodules
included, as objects). ``module_spec`` turns such a module into plain JSON: ``{"type": "package.module.Class",
"config": {...}}`` with submodules nested the same way; ``build_module`` reverses it by importing the class, so a user's
own adapter rebuilds as well as ours, as long as it keeps ``self.config`` too.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from perceiver.files import atomic_write

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def capture_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments from ``locals()`` called first thing in ``__init__``."""
    return {name: value for name, value in arguments.items() if name not in ("self", "__class__")}


def module_spec(value: Any) -> Any:
    """JSON-ready description of a module (recursively), or of a value holding modules."""
    if isinstance(value, nn.Module):
        if not hasattr(value, "config"):
            raise TypeError(
                f"{type(value).__name__} has no `config` attribute: keep the constructor's keyword arguments in "
                "self.config (see perceiver.config.capture_config) so that the model can be rebuilt"
            )
        cls = type(value)
        return {"type": f"{cls.__module__}.{cls.__qualname__}", "config": module_spec(value.config)}
    if isinstance(value, dict):
        return {key: module_spec(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [module_spec(item) for item in value]
    return value


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"type", "config"} and isinstance(value["type"], str)


def build_module(spec: Any) -> Any:
    """Rebuild what ``module_spec`` described."""
    if _is_spec(spec):
        return _import_class(spec["type"])(**build_module(spec["config"]))
    if isinstance(spec, dict):
        return {key: build_module(item) for key, item in spec.items()}
    if isinstance(spec, list):
        return [build_module(item) for item in spec]
    return spec


def _import_class(path: str) -> type[nn.Module]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"spec['type']: expected an importable nn.Module class such as 'package.module.Class', got {path!r}")
    return cls


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; each file appears whole or not at all."""
    from safetensors.torch import save_model as save_weights

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(module_spec(model), indent=2)
    atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(config_text))
    # save_model (not save_file) keeps tied weights, e.g. an output layer that shares the input embedding.
    atomic_write(directory / WEIGHTS_FILE, lambda path: save_weights(model, path))
    return directory


def load_model(directory: str | os.PathLike, *, device: str = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save_model`` and load its weights."""
    from safetensors.torch import load_model as load_weights

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"directory: expected {directory / name} (written by perceiver.save_model)")
    model = build_module(json.loads((directory / CONFIG_FILE).read_text()))
    load_weights(model, directory / WEIGHTS_FILE, device=device)
    return model.to(device)
