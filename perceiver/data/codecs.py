"""Bytes ↔ arrays for the fields of a sample, one function per direction and modality.

Field names follow webdataset's extension convention: ``png``/``npy`` images, ``flac``/``wav``/``ogg`` audio,
``txt`` text, ``cls`` integer labels, ``json`` metadata. Encoders are deterministic (same array → same bytes), so a
build with the same seed writes identical shards.
"""

from __future__ import annotations

import io
import json
from math import gcd

import numpy as np

IMAGE_FIELDS = ("png", "jpg", "jpeg", "npy")
AUDIO_FIELDS = ("flac", "wav", "ogg")


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, C) with C in {1, 3, 4} → PNG bytes."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image: expected uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_image(data: bytes, field: str) -> np.ndarray:
    """Image bytes → float32 (C, H, W) in [0, 1]. Raises on bytes that do not decode."""
    if field == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(f"npy image: expected (C, H, W) or (H, W), got shape {array.shape}")
        return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode now, so that broken pixel data raises here and not later in a collate
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / 255.0


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    """float waveform (T,) in [-1, 1] → 16-bit FLAC bytes (lossless for the 16-bit values)."""
    import soundfile

    if waveform.ndim != 1:
        raise ValueError(f"waveform: expected a 1-D array (T,), got shape {waveform.shape}")
    buffer = io.BytesIO()
    soundfile.write(buffer, to_pcm16(waveform), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """The int16 values a 16-bit file stores for a float waveform (clipped to [-1, 1))."""
    if waveform.dtype == np.int16:
        return waveform
    return np.clip(np.round(np.asarray(waveform, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def decode_audio(data: bytes, *, sample_rate: int) -> np.ndarray:
    """Audio bytes (any format libsndfile reads) → float32 mono waveform (T,) at ``sample_rate``."""
    import soundfile

    waveform, file_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if waveform.shape[0] == 0:
        raise ValueError("audio: the file holds no samples")
    return resample(waveform.mean(axis=1), file_rate, sample_rate)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's anti-aliased ``resample_poly``); a no-op when the rates agree."""
    if from_rate == to_rate:
        return np.ascontiguousarray(waveform, dtype=np.float32)
    from scipy.signal import resample_poly

    divisor = gcd(int(from_rate), int(to_rate))
    return resample_poly(waveform, to_rate // divisor, from_rate // divisor).astype(np.float32)


def encode_text(text: str) -> bytes:
    return text.encode("utf-8")


def decode_text(data: bytes) -> np.ndarray:
    """UTF-8 bytes → their byte values as uint8 (L,); invalid UTF-8 raises (the sample counts as corrupt)."""
    data.decode("utf-8")
    return np.frombuffer(data, dtype=np.uint8).copy()


def encode_label(label: int) -> bytes:
    return str(int(label)).encode("ascii")


def decode_label(data: bytes) -> int:
    return int(data.decode("ascii").strip())


def encode_json(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def decode_json(data: bytes) -> dict:
    return json.loads(data.decode("utf-8"))
