"""Text → speech with the libespeak-ng that PyPI ``espeakng-loader`` bundles, driven through ctypes.

espeak-ng keeps global state (one voice, one callback), so one process-wide synthesizer serves all calls; builds
are single-threaded. Synthesis is deterministic: the same text, voice, rate and pitch give the same samples.
"""

from __future__ import annotations

import ctypes
import pathlib

import numpy as np

from perceiver.data.errors import DataSourceError

INSTALL = "pip install espeakng-loader"
_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH = 1, 3  # espeak_PARAMETER ids
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Synthesizer:
    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise DataSourceError("espeak-ng", "python package espeakng-loader is not installed", INSTALL) from None
        self.data_path = pathlib.Path(espeakng_loader.get_data_path())
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sample_rate = self.lib.espeak_Initialize(_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with {self.sample_rate}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: espeak calls it after this returns
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def variants(self) -> list[str]:
        """Voice variants (``voices/!v``): speaker characters that combine with any language."""
        return sorted(path.name for path in (self.data_path / "voices" / "!v").iterdir() if path.is_file())

    def english_dialects(self) -> list[str]:
        return sorted(path.name for path in (self.data_path / "lang" / "gmw").iterdir() if path.name.startswith("en"))

    def speak(self, text: str, *, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 waveform (T,) at ``self.sample_rate``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: espeak-ng does not know {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks.clear()
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
        if status != 0 or not self._chunks:
            raise RuntimeError(f"espeak_Synth({text!r}, voice={voice!r}) failed with status {status}")
        return np.concatenate(self._chunks)


_synthesizer: Synthesizer | None = None


def synthesizer() -> Synthesizer:
    global _synthesizer
    if _synthesizer is None:
        _synthesizer = Synthesizer()
    return _synthesizer
