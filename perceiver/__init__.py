"""Perceiver IO for multimodal deep learning.

Masks follow one convention throughout the package: a bool tensor (B, M), True where a token is padding (see
``perceiver.masks``).
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

from perceiver.ar import PerceiverAR
from perceiver.attention import MultiHeadAttention, attend, attention_backend, record_attention
from perceiver.config import Pretrained, build_module, capture_config, load_model, module_spec, save_model
from perceiver.decoder import PerceiverDecoder
from perceiver.encoder import PerceiverEncoder
from perceiver.layers import CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer
from perceiver.masks import pad_mask_from_lengths
from perceiver.model import PerceiverIO

__version__ = "0.1.0"

__all__ = [
    "CrossAttentionLayer",
    "MultiHeadAttention",
    "PerceiverDecoder",
    "PerceiverEncoder",
    "PerceiverAR",
    "PerceiverIO",
    "Pretrained",
    "SelfAttentionBlock",
    "SelfAttentionLayer",
    "attend",
    "attention_backend",
    "build_module",
    "capture_config",
    "load_model",
    "module_spec",
    "pad_mask_from_lengths",
    "record_attention",
    "save_model",
]


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    """Finds ``perceiver.kernels`` in ``kernels/`` beside this package when it runs from a source checkout.

    An installed wheel holds the kernels as ``perceiver/kernels``; a checkout keeps them at the top level of the
    repository. ``python -m experiments.NAME`` in a checkout imports the checkout's ``perceiver`` even when the
    package is installed, so without this finder the kernels would be missing there (and CUDA would silently fall
    back to PyTorch attention).
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != "perceiver.kernels":
            return None
        return importlib.util.spec_from_file_location(name, self.folder / "__init__.py",
                                                      submodule_search_locations=[str(self.folder)])


_checkout_kernels = Path(__file__).resolve().parent.parent / "kernels"
if not (Path(__file__).resolve().parent / "kernels").is_dir() and (_checkout_kernels / "__init__.py").is_file():
    sys.meta_path.append(_CheckoutKernels(_checkout_kernels))
