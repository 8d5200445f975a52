"""Input adapters, output query providers and output adapters.

Each keeps its constructor arguments in ``module.config``, from which ``perceiver.config.build_module`` rebuilds it.
"""

from perceiver.adapters.audio import LogMelSpectrogram, SpectrogramAdapter, SpectrogramConvAdapter, mel_filterbank
from perceiver.adapters.base import InputAdapter, OutputAdapter, QueryProvider
from perceiver.adapters.conv import ConvAdapter, ConvStem
from perceiver.adapters.classification import ClassificationOutput, ClassificationQuery, LabelAdapter
from perceiver.adapters.multimodal import MultimodalAdapter
from perceiver.adapters.patches import PatchAdapter
from perceiver.adapters.reconstruction import (
    ReconstructionOutput,
    ReconstructionQueries,
    gather_output_points,
    normalize_patches,
    sample_output_index,
)
from perceiver.adapters.text import CLS_ID, MASK_ID, PAD_ID, SEP_ID, VOCAB_SIZE, ByteAdapter
from perceiver.adapters.tokens import TokenOutput, TokenQueries

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "VOCAB_SIZE",
    "ByteAdapter",
    "ClassificationOutput",
    "ConvAdapter",
    "ConvStem",
    "ClassificationQuery",
    "InputAdapter",
    "LabelAdapter",
    "LogMelSpectrogram",
    "MultimodalAdapter",
    "OutputAdapter",
    "PatchAdapter",
    "QueryProvider",
    "ReconstructionOutput",
    "ReconstructionQueries",
    "SpectrogramAdapter",
    "SpectrogramConvAdapter",
    "TokenOutput",
    "TokenQueries",
    "gather_output_points",
    "mel_filterbank",
    "normalize_patches",
    "sample_output_index",
]
