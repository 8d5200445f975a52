"""Perceiver IO for multimodal deep learning.

Masks follow one convention throughout the package: a bool tensor (B, M), True where a token is padding (see
``perceiver.masks``).
"""

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
