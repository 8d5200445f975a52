"""Text → speech with the libespeak-ng that PyPI ``espeakng-loader`` bundles, driven through ctypes.

libespeak-ng carries state from one utterance to the next (the same request gives slightly different samples
depending on what was said before it) and has no call that resets it. So every utterance is synthesized in a fresh
fork of a process that has only initialized the library: each starts from the same state, and the same text,
voice, rate and pitch always give the same samples, whatever was built before. The noise that breathy variants mix
in comes from the library's own generator, which initialization seeds from the clock; each fork seeds it from its
request instead, so a build on another day gives the same samples too. The forking is done by a small
server, this file run as a script (no torch: forking a process that has torch loaded costs ~60 ms, this ~5 ms).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import pathlib
import subprocess
import sys
import zlib

import numpy as np

INSTALL = "pip install espeakng-loader"
_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH = 1, 3  # espeak_PARAMETER ids
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _loader():
    try:
        import espeakng_loader
    except ImportError:
        from perceiver.data.errors import DataSourceError

        raise DataSourceError("spoken-digits", "python package espeakng-loader is not installed", INSTALL) from None
    return espeakng_loader


class _Engine:
    """The library itself, used only inside the server and its forks."""

    def __init__(self):
        loader = _loader()
        self.lib = ctypes.CDLL(loader.get_library_path())
        self.sample_rate = self.lib.espeak_Initialize(_OUTPUT_SYNCHRONOUS, 0, loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with {self.sample_rate}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: espeak-ng does not know {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
        if status != 0 or not self._chunks:
            raise RuntimeError(f"espeak_Synth({text!r}, voice={voice!r}) failed with status {status}")
        return np.concatenate(self._chunks).astype("<i2")


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def _serve() -> None:
    """Server loop: a JSON request per stdin line → a JSON header line and the int16 samples on stdout."""
    engine = _Engine()
    _write(json.dumps({"sample_rate": engine.sample_rate}).encode() + b"\n")
    for line in sys.stdin.buffer:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            status = 0
            try:
                # The noise of breathy variants (whisper, Demonic, f3, ...): from the request, not the clock.
                engine.lib.espeak_ng_SetRandSeed(ctypes.c_long(zlib.crc32(line)))
                samples = engine.speak(request["text"], request["voice"], request["rate"], request["pitch"]).tobytes()
                _write(json.dumps({"bytes": len(samples)}).encode() + b"\n" + samples)
            except Exception as error:  # reported to the client, which raises it
                _write(json.dumps({"error": f"{type(error).__name__}: {error}"}).encode() + b"\n")
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        _, status = os.waitpid(child, 0)
        if status != 0:
            _write(json.dumps({"error": f"synthesis process died with status {status}"}).encode() + b"\n")


class Synthesizer:
    """Client of the synthesis server; see the module docstring."""

    def __init__(self):
        self.data_path = pathlib.Path(_loader().get_data_path())
        # -P: the script's folder (which holds modules such as emoji.py) must not shadow installed packages.
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        self._server = subprocess.Popen([sys.executable, *safe_path, __file__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
        atexit.register(self.close)
        self.sample_rate = int(self._header()["sample_rate"])

    def _header(self) -> dict:
        line = self._server.stdout.readline()
        if not line:
            raise RuntimeError(f"the espeak-ng synthesis server exited with status {self._server.wait()}")
        header = json.loads(line)
        if "error" in header:
            raise RuntimeError(f"espeak-ng: {header['error']}")
        return header

    def variants(self) -> list[str]:
        """Voice variants (``voices/!v``): speaker characters that combine with any language."""
        return sorted(path.name for path in (self.data_path / "voices" / "!v").iterdir() if path.is_file())

    def english_dialects(self) -> list[str]:
        return sorted(path.name for path in (self.data_path / "lang" / "gmw").iterdir() if path.name.startswith("en"))

    def speak(self, text: str, *, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 waveform (T,) at ``self.sample_rate``; the same arguments always give the same samples."""
        request = {"text": text, "voice": voice, "rate": int(rate), "pitch": int(pitch)}
        self._server.stdin.write(json.dumps(request).encode() + b"\n")
        self._server.stdin.flush()
        size = self._header()["bytes"]
        data = self._server.stdout.read(size)
        if len(data) != size:
            raise RuntimeError(f"espeak-ng: expected {size} bytes of samples, got {len(data)}")
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def close(self) -> None:
        if self._server.poll() is None:
            self._server.stdin.close()  # end of input: the server exits
            self._server.wait()
        self._server.stdout.close()


_synthesizer: Synthesizer | None = None


def synthesizer() -> Synthesizer:
    global _synthesizer
    if _synthesizer is None:
        _synthesizer = Synthesizer()
    return _synthesizer


if __name__ == "__main__":
    _serve()
