"""Text → speech with SVOX Pico (PyPI ``ttspico``, which bundles the en-US and en-GB voices), with its
``<speed>`` and ``<pitch>`` markup.

The engine keeps state from one utterance to the next, so every utterance gets a fresh engine (about 4 ms).
"""

from __future__ import annotations

import numpy as np

INSTALL = "pip install ttspico"
SAMPLE_RATE = 16000
LANGUAGES = ("en-GB", "en-US")


def speak(text: str, *, language: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """int16 waveform (T,) at 16 kHz; ``speed`` and ``pitch`` are percentages of the voice's own (100)."""
    try:
        import ttspico
    except ImportError:
        from perceiver.data.errors import DataSourceError

        raise DataSourceError("spoken-digits", "python package ttspico is not installed", INSTALL) from None
    if language not in LANGUAGES:
        raise ValueError(f"language: expected one of {LANGUAGES}, got {language!r}")
    markup = f"<speed level='{int(speed)}'><pitch level='{int(pitch)}'>{text}</pitch></speed>"
    data = ttspico.TtsEngine(language).speak(markup)
    if not data:
        raise RuntimeError(f"pico ({language}) produced no audio for {text!r}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16), SAMPLE_RATE
