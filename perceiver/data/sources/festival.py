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

# The Debian package of each voice the datasets use.
PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
            "cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "pc_diphone": "festvox-itapc16k",
            "lp_diphone": "festvox-italp16k", "czech_dita": "festvox-czech-dita", "czech_krb": "festvox-czech-krb",
            "czech_machac": "festvox-czech-machac", "czech_ph": "festvox-czech-ph",
            "suo_fi_lj_diphone": "festvox-suopuhe-lj", "hy_fi_mv_diphone": "festvox-suopuhe-mv"}
INSTALL = "apt-get install -y --no-install-recommends festival " + " ".join(PACKAGES.values())
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


def _script(text: str, voice: str, stretch: float, semitones: float | None, out: Path) -> str:
    if semitones is None:  # the voice's own intonation model sets its pitch
        setup = f"(Parameter.set 'Duration_Stretch {stretch:.4f})"
    elif voice.endswith("_hts"):
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


def speak(text: str, *, voice: str, stretch: float, semitones: float | None = None) -> tuple[np.ndarray, int]:
    """int16 waveform (T,) and its sample rate; ``stretch`` scales durations, ``semitones`` shifts the pitch of the
    English voices (the voices of other languages set it by their own intonation models, which ignore it)."""
    import soundfile

    festival = _festival()
    if voice not in voices():
        from perceiver.data.errors import DataSourceError

        raise DataSourceError("spoken-digits", f"festival voice {voice} is not installed",
                              f"apt-get install -y --no-install-recommends {PACKAGES.get(voice, 'festvox-*')}")
    with tempfile.TemporaryDirectory() as folder:
        out, script = Path(folder) / "out.wav", Path(folder) / "say.scm"
        script.write_text(_script(text, voice, stretch, semitones, out))
        done = subprocess.run([festival, "-b", str(script)], capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"festival voice {voice} failed with status {done.returncode}: {done.stderr.strip()}")
        waveform, rate = soundfile.read(out, dtype="int16")
    return waveform, rate
