"""Text → speech with the ``flite`` command (Debian ``flite``): its built-in voices, rate and mean pitch.

Each call is a fresh process, so an utterance never depends on what was synthesized before it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

INSTALL = "apt-get install -y --no-install-recommends flite"
# awb_time is a limited-domain talking clock: it cannot say arbitrary words.
LIMITED_DOMAIN = ("awb_time",)


def _flite() -> str:
    path = shutil.which("flite")
    if path is None:
        from perceiver.data.errors import DataSourceError

        raise DataSourceError("spoken-digits", "the flite command is not on PATH", INSTALL)
    return path


def voices() -> list[str]:
    """The built-in general-domain voices (``flite -lv``)."""
    listed = subprocess.run([_flite(), "-lv"], capture_output=True, text=True, check=True).stdout
    return sorted(name for name in listed.split(":", 1)[-1].split() if name not in LIMITED_DOMAIN)


def speak(text: str, *, voice: str, stretch: float, f0_mean: float) -> tuple[np.ndarray, int]:
    """int16 waveform (T,) and its sample rate; ``stretch`` scales durations, ``f0_mean`` is the target mean
    pitch in Hz."""
    import soundfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.wav"
        command = [_flite(), "-voice", voice, "-t", text, "--setf", f"duration_stretch={stretch:.4f}",
                   "--setf", f"int_f0_target_mean={f0_mean:.2f}", "-o", str(path)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not path.exists():
            raise RuntimeError(f"flite -voice {voice} failed with status {done.returncode}: {done.stderr.strip()}")
        waveform, rate = soundfile.read(path, dtype="int16")
    return waveform, rate
