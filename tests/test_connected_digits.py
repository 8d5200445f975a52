"""benchmarks.connected_digits: the digit words of pocketsphinx's test recordings are cut where WORDS says, named by
their digit, and scored as experiments.predict_digits scores recordings."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from benchmarks import connected_digits
from experiments import predict_digits
from tests.test_predict_digits import tiny_model, word

ROOT = "pocketsphinx-5.1.1"


@pytest.fixture()
def sdist(tmp_path):
    """A stand-in for the sdist: each recording WORDS names, as the real one stores it (raw 16-bit or WAV), with
    sound of its own; the recordings are 3 s long, longer than any span."""
    path = tmp_path / connected_digits.SDIST
    with tarfile.open(path, "w:gz") as tar:
        for seed, name in enumerate(sorted({name for name, *_ in connected_digits.WORDS})):
            samples = np.concatenate([word(seed * 10 + k, 0.5, 16000) for k in range(6)])
            if name.endswith(".raw"):
                data = (samples * 32768).astype("<i2").tobytes()
            else:
                buffer = io.BytesIO()
                soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
                data = buffer.getvalue()
            info = tarfile.TarInfo(f"{ROOT}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo(f"{ROOT}/README.md")
        tar.addfile(readme, io.BytesIO(b""))
    return path


def test_each_word_is_its_span_with_context_named_by_its_digit(sdist, tmp_path):
    paths = connected_digits.cut_words(sdist, tmp_path)
    assert len(paths) == len(connected_digits.WORDS) == 12
    with tarfile.open(sdist) as tar:
        for path, (name, spoken, start, end) in zip(paths, connected_digits.WORDS):
            assert predict_digits.digit_in_name(path) == connected_digits.CLASSES.index(spoken)
            source, rate = connected_digits.read_recording(tar.extractfile(f"{ROOT}/{name}").read(), name)
            cut, cut_rate = soundfile.read(path, dtype="float32")
            context = connected_digits.CONTEXT
            np.testing.assert_array_equal(cut, source[round((start - context) * rate):round((end + context) * rate)])
            assert cut_rate == rate == 16000


def test_the_table_is_predict_digits_scoring_of_the_cut_words(sdist, tmp_path):
    model_dir = tmp_path / "run" / "model"
    tiny_model().save_pretrained(model_dir)
    out = tmp_path / "results" / "connected"
    words = tmp_path / "words"
    report = connected_digits.main([str(model_dir), "--sdist", str(sdist), "--words-dir", str(words),
                                    "--threads", "1", "--out", str(out)])
    alone = predict_digits.main([str(model_dir), str(words), "--threads", "1"])
    assert report["models"][0]["predictions"] == [{**p, "file": str(Path(p["file"]).relative_to(words))}
                                                  for p in alone["predictions"]]
    assert all(not Path(p["file"]).is_absolute() for p in report["models"][0]["predictions"])  # no scratch paths
    accuracy = alone["accuracy"]
    names = connected_digits.CLASSES
    missed = ", ".join(f"{names[p['label']]} → {names[p['digit']]}" for p in alone["predictions"]
                       if p["digit"] != p["label"]) or "none"
    table = out.with_suffix(".md").read_text()
    assert f"| {accuracy['speed_averaged_hits']} of 12 | {accuracy['plain_hits']} of 12 | {missed} |" in table
    assert out.with_suffix(".json").is_file()


def test_a_missing_sdist_names_the_flag_and_the_fetch(tmp_path, capsys):
    with pytest.raises(SystemExit):
        connected_digits.main([str(tmp_path / "model"), "--sdist", str(tmp_path / "absent.tar.gz")])
    error = capsys.readouterr().err
    assert "--sdist" in error and "pip download --no-deps --no-binary pocketsphinx pocketsphinx==5.1.1 -d" in error
