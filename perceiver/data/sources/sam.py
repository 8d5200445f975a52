"""Text → speech with SAM, the 1982 Software Automatic Mouth (PyPI ``samtts``, pure Python): speed, pitch, mouth
and throat, the parameters of SAM's own voice presets.

The renderer keeps state from one utterance to the next, so every utterance gets a fresh ``SamTTS``.
"""

from __future__ import annotations

import numpy as np

INSTALL = "pip install samtts"
SAMPLE_RATE = 22050


def speak(text: str, *, speed: int, pitch: int, mouth: int, throat: int) -> tuple[np.ndarray, int]:
    """int16 waveform (T,) at 22,050 Hz (SAM renders unsigned 8-bit samples)."""
    try:
        import samtts
    except ImportError:
        from perceiver.data.errors import DataSourceError

        raise DataSourceError("spoken-digits", "python package samtts is not installed", INSTALL) from None
    data = samtts.SamTTS().get_audio_data(text, speed=int(speed), pitch=int(pitch), mouth=int(mouth),
                                          throat=int(throat))
    if not data:
        raise RuntimeError(f"SAM produced no audio for {text!r}")
    unsigned = np.frombuffer(bytes(data), dtype=np.uint8)
    return ((unsigned.astype(np.int16) - 128) * 256).astype(np.int16), SAMPLE_RATE
