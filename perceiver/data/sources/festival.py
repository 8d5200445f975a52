"""Text → speech with Festival (Debian ``festival`` and its ``festvox-*`` voices): rate and pitch per utterance.

Diphone voices take their pitch from the ``int_lr_params`` target mean, which is scaled; HTS voices generate it
from their model, which is shifted by ``-fm`` half-tones (their rate is ``-r``). Each call is a fresh ``festival``
process, so an utterance never depends on what was synthesized before it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

INSTALL = ("apt-get install -y --no-install-recommends festival festvox-kallpc16k festvox-kdlpc16k "
           "festvox-us-slt-hts")
VOICE_ROOT = Path("/usr/share/festival/voices")


def _festival() -> str:
    path = shutil.which("festival")
    if path is None:
        from perceiver.data.errors import DataSourceError

        raise DataSourceError("spoken-digits", "the festival command is not on PATH", INSTALL)
    return path


def voices() -> list[str]:
    """Installed voices (``/usr/share/festival/voices/<language>/<voice>``)."""
    return sorted(path.name for path in VOICE_ROOT.glob("*/*") if (path / "festvox").is_dir())


def _script(text: str, voice: str, stretch: float, semitones: float, out: Path) -> str:
    if voice.endswith("_hts"):
        setup = (f"(set! hts_engine_params (append {voice}::hts_engine_params "
                 f"'((\"-r\" {1 / stretch:.4f}) (\"-fm\" {semitones:.3f}))))")
    else:
        factor = 2 ** (semitones / 12)
        setup = (f"(Parameter.set 'Duration_Stretch {stretch:.4f})\n"
                 f"(set! int_lr_params (cons (list 'target_f0_mean (* {factor:.4f} "
                 f"(car (cdr (assoc 'target_f0_mean int_lr_params))))) int_lr_params))")
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return (f"(voice_{voice})\n{setup}\n"
            f"(utt.save.wave (utt.synth (Utterance Text \"{quoted}\")) \"{out}\" 'riff)\n")


def speak(text: str, *, voice: str, stretch: float, semitones: float) -> tuple[np.ndarray, int]:
    """int16 waveform (T,) and its sample rate; ``stretch`` scales durations, ``semitones`` shifts the pitch."""
    import soundfile

    with tempfile.TemporaryDirectory() as folder:
        out, script = Path(folder) / "out.wav", Path(folder) / "say.scm"
        script.write_text(_script(text, voice, stretch, semitones, out))
        done = subprocess.run([_festival(), "-b", str(script)], capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"festival voice {voice} failed with status {done.returncode}: {done.stderr.strip()}")
        waveform, rate = soundfile.read(out, dtype="int16")
    return waveform, rate
