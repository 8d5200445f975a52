"""Save a model's configuration beside its weights and rebuild it.

Every public module of the package records its constructor's keyword arguments one way: ``self.config =
capture_config(locals())`` first thing in ``__init__`` (submodules included, as objects). ``module_spec`` turns such a
module into plain JSON: ``{"type": "package.module.Class", "config": {...}}`` with submodules nested the same way;
``build_module`` reverses it by importing the class, so a user's own adapter rebuilds as well as ours, as long as it
keeps ``self.config`` too. ``Pretrained`` gives a module ``save_pretrained`` (config.json + model.safetensors) and
``from_pretrained``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from perceiver.files import atomic_write

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# Constructor arguments renamed since configs were first stored: old name -> new name.
RENAMED_ARGUMENTS = {"init_std": "init_scale"}


def capture_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments from its ``locals()``, called first thing in ``__init__``.

    Only the constructor's parameters are kept (not other local names); the entries of a ``**kwargs`` parameter are
    merged in, so that the config rebuilds the module as ``Class(**config)``.
    """
    code = sys._getframe(1).f_code
    count = code.co_argcount + code.co_kwonlyargcount
    names = code.co_varnames[:count]
    config = {name: arguments[name] for name in names if name not in ("self", "__class__") and name in arguments}
    if code.co_flags & inspect.CO_VARKEYWORDS:
        config.update(arguments[code.co_varnames[count + bool(code.co_flags & inspect.CO_VARARGS)]])
    return config


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
        cls = _import_class(spec["type"])
        return cls(**_renamed(cls, build_module(spec["config"])))
    if isinstance(spec, dict):
        return {key: build_module(item) for key, item in spec.items()}
    if isinstance(spec, list):
        return [build_module(item) for item in spec]
    return spec


def _renamed(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with arguments renamed since it was written (e.g. ``init_std``) under their new names."""
    parameters = inspect.signature(cls).parameters
    for old, new in RENAMED_ARGUMENTS.items():
        if old in config and old not in parameters and new in parameters and new not in config:
            config = {(new if key == old else key): value for key, value in config.items()}
    return config


def _import_class(path: str) -> type[nn.Module]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"spec['type']: expected an importable nn.Module class such as 'package.module.Class', got {path!r}")
    return cls


class Pretrained:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` that keeps ``self.config``."""

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors, from which ``from_pretrained`` rebuilds this module."""
        return save_model(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str = "cpu"):
        """Rebuild a module saved by ``save_pretrained``; it must be an instance of the class this is called on."""
        model = load_model(directory, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"directory: expected a saved {cls.__name__}, found a {type(model).__name__}")
        return model


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
