"""Training utilities: schedule, clipping, LAMB, atomic checkpoints, exact resume, DDP, the demo experiment, wandb."""

import gc
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO
from perceiver.adapters import ByteAdapter, ClassificationOutput, ClassificationQuery
from perceiver.training import (
    LATEST,
    Lamb,
    TrainConfig,
    Tracker,
    WarmupCosine,
    build_optimizer,
    clip_gradients,
    load_checkpoint,
    save_checkpoint,
    train,
    warmup_cosine_scheduler,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- helpers


def tiny_model(*, dropout: float = 0.0, seed: int = 0) -> PerceiverIO:
    torch.manual_seed(seed)
    adapter = ByteAdapter(max_length=32, embed_channels=16)
    return PerceiverIO(
        input_adapter=adapter,
        encoder=PerceiverEncoder(num_input_channels=16, num_latents=4, num_latent_channels=16,
                                 num_self_attention_heads=2, num_self_attention_layers_per_block=1, dropout=dropout),
        decoder=PerceiverDecoder(query_provider=ClassificationQuery(num_channels=16),
                                 output_adapter=ClassificationOutput(num_channels=16, num_classes=3),
                                 num_latent_channels=16),
    )


def byte_batch(generator: torch.Generator, batch_size: int) -> dict:
    """A batch in the data pipeline's format; the label is the count of byte 7 in the text, modulo 3."""
    ids = torch.randint(0, 16, (batch_size, 12), generator=generator)
    lengths = torch.randint(4, 13, (batch_size,), generator=generator)
    pad_mask = torch.arange(12)[None, :] >= lengths[:, None]
    labels = ((ids == 7) & ~pad_mask).sum(dim=1) % 3
    return {"text": ids, "text_pad_mask": pad_mask, "label": labels, "key": [f"k{i}" for i in range(batch_size)],
            "corrupt": 1}


def epoch_batches(*, batches_per_epoch: int, batch_size: int = 6, crash_after: int | None = None, seed: int = 0):
    """``make_batches`` over finite epochs, seeded by the epoch; optionally raise after ``crash_after`` batches."""
    served = 0

    def make_batches(epoch: int):
        nonlocal served
        generator = torch.Generator().manual_seed(1000 * seed + epoch)
        for _ in range(batches_per_epoch):
            if crash_after is not None and served == crash_after:
                raise RuntimeError("simulated crash")
            served += 1
            yield byte_batch(generator, batch_size)

    return make_batches


def classification_loss(model, batch):
    logits = model(batch["text"], batch["text_pad_mask"])
    loss = nn.functional.cross_entropy(logits, batch["label"])
    return loss, {"accuracy": (logits.argmax(dim=1) == batch["label"]).float().mean()}


def quiet_config(**overrides) -> TrainConfig:
    settings = dict(max_steps=8, lr=3e-3, warmup_steps=2, log_every=1, progress=False)
    settings.update(overrides)
    return TrainConfig(**settings)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- schedule


def test_warmup_cosine_factor_values():
    factor = WarmupCosine(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(4) == pytest.approx(1.0)  # the cosine starts at its peak
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert factor(9) == pytest.approx(0.55)
    assert factor(14) == pytest.approx(0.1)
    assert factor(20) == pytest.approx(0.1)  # past the end: the floor
    decay = [factor(s) for s in range(4, 15)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_scheduler_sets_the_optimizer_learning_rate_step_by_step():
    parameter = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=0.5)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=2, max_steps=6, min_lr_ratio=0.0)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.25, 0.5] + [0.5 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert seen == pytest.approx(expected)


def test_warmup_cosine_over_a_time_budget_follows_the_elapsed_time():
    factor = WarmupCosine(warmup_steps=2, max_steps=10**6, min_lr_ratio=0.1, max_seconds=100.0)
    assert [factor(0), factor(1)] == pytest.approx([0.5, 1.0])  # warm-up still counts steps
    factor.elapsed_seconds = 50.0
    assert factor(5) == pytest.approx(0.55) and factor(500) == pytest.approx(0.55)  # the step no longer matters
    factor.elapsed_seconds = 100.0
    assert factor(6) == pytest.approx(0.1)


def test_warmup_cosine_with_both_budgets_follows_the_one_nearer_its_end():
    factor = WarmupCosine(warmup_steps=0, max_steps=10, min_lr_ratio=0.1, max_seconds=1000.0)
    factor.elapsed_seconds = 1.0  # the clock has barely started: the 10 steps lead
    assert factor(5) == pytest.approx(0.55) and factor(10) == pytest.approx(0.1)
    factor.elapsed_seconds = 1000.0  # the time is spent: the floor, whatever the step
    assert factor(1) == pytest.approx(0.1)


def test_training_stops_when_its_time_budget_is_spent(tmp_path):
    import time

    def slow_loss(model, batch):
        time.sleep(0.05)
        return classification_loss(model, batch)

    evaluations = []
    result = train(tiny_model(), config=quiet_config(max_steps=1000, max_seconds=0.3, warmup_steps=1, min_lr_ratio=0.1),
                   make_batches=epoch_batches(batches_per_epoch=5), loss_fn=slow_loss,
                   evaluate=lambda model: evaluations.append(1) or {"x": 1.0}, out_dir=tmp_path)
    # 0.3 s of 0.05 s steps: at most 6 of them, fewer when a loaded machine makes each step slower (but at least one)
    assert 1 <= result.step <= 8
    assert evaluations == [1] and (tmp_path / LATEST).is_file()  # the budget's last step is the run's last
    checkpoint = load_checkpoint(tmp_path / LATEST)
    assert checkpoint["scheduler"]["lr_lambdas"][0]["elapsed_seconds"] >= 0.3
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 3e-3)  # the schedule's floor


@pytest.mark.parametrize("kwargs", [dict(warmup_steps=5, max_steps=4), dict(warmup_steps=0, max_steps=0),
                                    dict(warmup_steps=0, max_steps=3, min_lr_ratio=1.5),
                                    dict(warmup_steps=0, max_steps=3, max_seconds=0.0)])
def test_warmup_cosine_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="expected"):
        WarmupCosine(**kwargs)


# ---------------------------------------------------------------------------------------------------- clipping, LAMB


def test_clip_gradients_scales_to_the_max_norm_and_returns_the_norm_before():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global norm 5
    norm = clip_gradients([a, b], 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.0])) and torch.allclose(b.grad, torch.tensor([0.8]))
    a.grad, b.grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])
    assert float(clip_gradients([a, b], 1.0)) == pytest.approx(0.5)
    assert torch.allclose(a.grad, torch.tensor([0.3, 0.0]))  # under the limit: untouched
    a.grad = torch.tensor([30.0, 40.0])
    assert float(clip_gradients([a], None)) == pytest.approx(50.0)
    assert torch.equal(a.grad, torch.tensor([30.0, 40.0]))  # None: measured, not clipped


def test_the_loop_clips_gradients_before_the_optimizer_step(tmp_path):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def huge_loss(model, batch):
        loss, metrics = classification_loss(model, batch)
        return 1e4 * loss, metrics

    handle = register_optimizer_step_pre_hook(record)
    try:
        train(tiny_model(), config=quiet_config(max_steps=3, grad_clip=0.5), make_batches=epoch_batches(batches_per_epoch=5),
              loss_fn=huge_loss, out_dir=tmp_path)
    finally:
        handle.remove()
    assert len(norms) == 3
    assert all(n == pytest.approx(0.5, rel=1e-4) for n in norms)  # clipped: the raw norms are in the hundreds


def test_without_a_progress_bar_each_log_step_prints_a_plain_line(tmp_path, capsys):
    train(tiny_model(), config=quiet_config(max_steps=4, log_every=2), out_dir=tmp_path,
          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss,
          evaluate=lambda model: {"accuracy": 0.5})
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4", "step 4"]
    assert re.fullmatch(r"step 2/4: loss \d+\.\d{4}, lr \d\.\d\de[-+]\d+, \d+\.\d\d steps/s", lines[0])
    assert lines[2] == "step 4: accuracy 0.5000" and err == ""


def test_with_a_progress_bar_the_eval_line_stands_alone_and_the_bar_shows_the_loss(tmp_path, capsys):
    train(tiny_model(), config=quiet_config(max_steps=3, log_every=100, progress=True), out_dir=tmp_path,
          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss,
          evaluate=lambda model: {"accuracy": 0.5})
    out, err = capsys.readouterr()
    assert out == "step 3: accuracy 0.5000\n"      # a line of its own (tqdm.write), no per-step lines beside a bar
    assert re.search(r"loss=\d+\.\d{4}", err)       # the bar's postfix


def test_lamb_matches_a_float64_reference():
    torch.manual_seed(0)
    start = torch.randn(5, 3, dtype=torch.float64)
    grads = [torch.randn(5, 3, dtype=torch.float64) for _ in range(3)]
    weight = nn.Parameter(start.clone())
    optimizer = Lamb([weight], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    expected, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for t, grad in enumerate(grads, start=1):
        weight.grad = grad.clone()
        optimizer.step()
        m = 0.9 * m + 0.1 * grad
        v = 0.99 * v + 0.01 * grad**2
        update = (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-6) + 0.01 * expected
        expected = expected - 0.1 * (expected.norm() / update.norm()) * update
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-12, atol=1e-12)


def test_lamb_without_adaptation_takes_adams_step():
    torch.manual_seed(0)
    grads = [torch.randn(4, dtype=torch.float64) for _ in range(3)]
    bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = Lamb([{"params": [bias], "adapt": False}], lr=0.1, betas=(0.9, 0.99), eps=1e-6)
    expected, m, v = (torch.zeros(4, dtype=torch.float64) for _ in range(3))
    for t, grad in enumerate(grads, start=1):
        bias.grad = grad.clone()
        optimizer.step()
        m = 0.9 * m + 0.1 * grad
        v = 0.99 * v + 0.01 * grad**2
        expected = expected - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-6)
    torch.testing.assert_close(bias.detach(), expected, rtol=1e-12, atol=1e-12)


def test_lamb_from_build_optimizer_keeps_zero_biases_moving():
    # With the trust ratio, a bias that starts at zero moves by lr once and then by about lr² a step.
    model = nn.Linear(8, 8)
    nn.init.zeros_(model.bias)
    optimizer = build_optimizer(model, name="lamb", lr=0.01)
    assert [group.get("adapt", True) for group in optimizer.param_groups] == [True, False]
    for _ in range(5):
        model.bias.grad, model.weight.grad = torch.ones(8), torch.ones(8, 8)
        optimizer.step()
    torch.testing.assert_close(model.bias.detach(), torch.full((8,), -0.05), rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    state = {"step": 3, "weights": torch.arange(6.0), "position": {"epoch": 1, "batches": 2}}
    save_checkpoint(tmp_path / LATEST, state)
    loaded = load_checkpoint(tmp_path / LATEST)
    assert loaded["step"] == 3 and loaded["position"] == {"epoch": 1, "batches": 2}
    assert torch.equal(loaded["weights"], torch.arange(6.0))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_files_follow_the_umask(tmp_path, umask):
    from experiments.common import write_metrics

    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / LATEST, {"step": 1})
        tiny_model().save_pretrained(tmp_path / "model")
        write_metrics(tmp_path, {"steps": 1})
    finally:
        os.umask(previous)
    saved = [tmp_path / LATEST, tmp_path / "model" / "config.json", tmp_path / "model" / "model.safetensors",
             tmp_path / "metrics.json"]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in saved} == {
        path.name: oct(0o666 & ~umask) for path in saved}


def test_benchmark_results_are_a_table_and_its_figures_side_by_side(tmp_path, monkeypatch):
    from perceiver.files import write_results

    out = tmp_path / "results" / "conditions"
    write_results(out, "| a |\n| --- |\n", {"rows": [1.5]})
    write_results(out, "| b |\n| --- |", {"rows": [2.5]})  # written again: replaced whole, one final newline
    assert out.with_suffix(".md").read_text() == "| b |\n| --- |\n"
    assert json.loads(out.with_suffix(".json").read_text()) == {"rows": [2.5]}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("perceiver.files.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_results(out, "| c |", {"rows": [3.5]})
    monkeypatch.undo()
    assert out.with_suffix(".md").read_text() == "| b |\n| --- |\n"
    assert sorted(path.name for path in out.parent.iterdir()) == ["conditions.json", "conditions.md"]


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_a_crash_mid_write_keeps_the_previous_latest(tmp_path, monkeypatch, crash_in):
    path = tmp_path / LATEST
    save_checkpoint(path, {"step": 1, "weights": torch.ones(1000)})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    # fsync: the new bytes are in a temporary file, not yet durable; replace: about to be renamed over `latest`.
    monkeypatch.setattr(f"perceiver.files.os.{crash_in}", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "weights": torch.full((1000,), 2.0)})
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]  # the temporary file is cleaned up


def test_a_process_killed_in_the_middle_of_a_write_keeps_the_previous_latest(tmp_path):
    """A file-size limit makes the kernel kill the writer (SIGXFSZ) exactly when its write passes 1 MB."""
    script = textwrap.dedent(f"""
        import resource, signal
        import torch
        from perceiver.training import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it (then write raises); the default kills
        save_checkpoint({str(tmp_path / LATEST)!r}, {{"step": 1, "weights": torch.ones(1000)}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        save_checkpoint({str(tmp_path / LATEST)!r}, {{"step": 2, "weights": torch.full((1_000_000,), 2.0)}})
        print("not killed")
    """)
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == -signal.SIGXFSZ, finished.stderr
    loaded = load_checkpoint(tmp_path / LATEST)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.ones(1000))
    leftovers = [p for p in tmp_path.iterdir() if p.name != LATEST]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1 << 20  # the torn write went to a temporary file
    save_checkpoint(tmp_path / LATEST, {"step": 3})  # the next write removes what the killed one left
    assert [p.name for p in tmp_path.iterdir()] == [LATEST]


# ---------------------------------------------------------------------------------------------------- exact resume


@pytest.fixture
def one_thread():
    """CPU kernels in one thread sum in one fixed order in every run (and cost little on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_continues_bitwise_with_dropout(tmp_path, one_thread):
    """Crash after 4 steps (checkpoint at 3), resume: steps 4..8 equal the uninterrupted run's, bit for bit.

    Epochs of 5 batches, so the checkpoint is mid-epoch and the run crosses into epoch 1 after resuming. Dropout
    is on, so the losses depend on the restored RNG state.
    """
    uninterrupted = train(tiny_model(dropout=0.2), config=quiet_config(), out_dir=tmp_path / "a",
                          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)

    config = quiet_config(checkpoint_every=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_model(dropout=0.2), config=config, out_dir=tmp_path / "b",
              make_batches=epoch_batches(batches_per_epoch=5, crash_after=4), loss_fn=classification_loss)
    checkpoint = load_checkpoint(tmp_path / "b" / LATEST)
    assert checkpoint["step"] == 3 and checkpoint["data_position"] == {"epoch": 0, "batches": 3}
    assert checkpoint["corrupt_samples"] == 3  # each batch reports one skipped sample

    torch.manual_seed(12345)  # a resumed process starts with other RNG states; the checkpoint must restore them
    resumed = train(tiny_model(dropout=0.2, seed=99), config=quiet_config(resume=True), out_dir=tmp_path / "b",
                    make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    assert [s for s, _ in resumed.losses] == [4, 5, 6, 7, 8]
    assert resumed.losses == uninterrupted.losses[3:]  # exact float equality
    assert resumed.corrupt_samples == uninterrupted.corrupt_samples == 8

    # The comparison can fail: without the restored RNG state, dropout draws other masks and the losses differ.
    model = tiny_model(dropout=0.2)
    torch.manual_seed(12345)
    other = train(model, config=quiet_config(max_steps=2), out_dir=tmp_path / "c",
                  make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    assert other.losses != uninterrupted.losses[:2]


class LrRecorder(Tracker):
    def __init__(self, out_dir):
        super().__init__(out_dir=out_dir, config={}, mode="disabled")
        self.lrs = {}

    def log(self, values, *, step):
        if "train/lr" in values:
            self.lrs[step] = values["train/lr"]


def test_resume_with_more_steps_follows_the_longer_schedule(tmp_path, capsys):
    """A finished 8-step run resumed with --max-steps 16 trains steps 9..16 at the lr of a 16-step run, not at the
    8-step schedule's floor."""
    fresh = LrRecorder(tmp_path / "fresh")
    train(tiny_model(), config=quiet_config(max_steps=16), out_dir=tmp_path / "fresh", tracker=fresh,
          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    train(tiny_model(), config=quiet_config(max_steps=8), out_dir=tmp_path / "run",
          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    capsys.readouterr()
    extended = LrRecorder(tmp_path / "run")
    result = train(tiny_model(), config=quiet_config(max_steps=16, resume=True), out_dir=tmp_path / "run",
                   tracker=extended, make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    assert result.step == 16 and sorted(extended.lrs) == list(range(9, 17))
    assert extended.lrs == pytest.approx({step: fresh.lrs[step] for step in range(9, 17)}, rel=1e-12)
    assert extended.lrs[9] > 3 * quiet_config().lr * quiet_config().min_lr_ratio  # far above the old floor
    printed = capsys.readouterr().out
    assert "resume: the lr schedule changes (max_steps 8 -> 16)" in printed and "lr at step 8 3.000e-04 -> " in printed
    # the same settings again: nothing to change, nothing printed
    train(tiny_model(), config=quiet_config(max_steps=16, resume=True), out_dir=tmp_path / "run",
          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    assert "lr schedule changes" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, port: int, out_dir: str, combined: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    from perceiver.training import cleanup_distributed, setup_distributed

    context = setup_distributed(device="cpu")
    half = {k: v[rank * 4:(rank + 1) * 4] for k, v in combined.items()}
    result = train(tiny_model(), config=DDP_CONFIG, out_dir=out_dir, make_batches=lambda epoch: [half] * 2,
                   loss_fn=classification_loss, device=context.device)
    if context.is_main:
        torch.save(result.losses, Path(out_dir) / "losses.pt")
    group = weakref.ref(torch.distributed.distributed_c10d._get_default_group())
    cleanup_distributed()
    gc.collect()
    # a group that outlives cleanup keeps its gloo threads until interpreter shutdown, where they can abort the rank
    assert group() is None, "the default process group outlived cleanup_distributed"


# Adam's first step is about lr · sign(g); an eps well above fp32 rounding in tiny gradients keeps that step from
# turning last-bit differences (two half-batch means vs one mean) into ±lr differences.
DDP_CONFIG = TrainConfig(max_steps=1, lr=1e-2, eps=1e-3, warmup_steps=0, grad_clip=None, log_every=1, progress=False)


def test_two_process_gloo_ddp_equals_one_process_on_the_combined_batch(tmp_path):
    combined = {k: v for k, v in byte_batch(torch.Generator().manual_seed(5), 8).items() if torch.is_tensor(v)}
    torch.multiprocessing.spawn(_ddp_worker, args=(free_port(), str(tmp_path / "ddp"), combined), nprocs=2)
    single = train(tiny_model(), config=DDP_CONFIG, out_dir=tmp_path / "single",
                   make_batches=lambda epoch: [combined] * 2, loss_fn=classification_loss)

    ddp_state = load_checkpoint(tmp_path / "ddp" / LATEST)["model"]
    single_state = load_checkpoint(tmp_path / "single" / LATEST)["model"]
    initial = tiny_model().state_dict()
    assert any(not torch.equal(single_state[k], initial[k]) for k in initial)  # the step changed the weights
    for name, value in single_state.items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    (ddp_step, ddp_loss), = torch.load(tmp_path / "ddp" / "losses.pt")
    assert ddp_step == 1 and ddp_loss == pytest.approx(single.losses[0][1], rel=1e-6)  # loss averaged over ranks


def _ddp_resume_worker(rank: int, port: int, out_dir: str, phase: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    from perceiver.training import cleanup_distributed, setup_distributed

    setup_distributed(device="cpu")
    model = tiny_model(dropout=0.2)
    torch.manual_seed(100 + rank if phase != "resume" else 999)  # each rank its own dropout stream
    crash_after = 4 if phase == "crash" else None
    make_batches = epoch_batches(batches_per_epoch=5, seed=rank, crash_after=crash_after)  # each rank its own data
    config = quiet_config(checkpoint_every=3, resume=phase == "resume")
    peers_arrive = True  # both ranks finish, or both hit the simulated crash at the same batch
    try:
        result = train(model, config=config, out_dir=Path(out_dir) / phase.replace("crash", "resume"),
                       make_batches=make_batches, loss_fn=classification_loss)
        if rank == 0:
            torch.save(result.losses, Path(out_dir) / f"{phase}.pt")
    except RuntimeError as error:
        if phase != "crash" or "simulated crash" not in str(error):
            peers_arrive = False
            raise
    finally:
        cleanup_distributed(wait_for_peers=peers_arrive)


@pytest.mark.slow
def test_two_process_resume_continues_bitwise(tmp_path):
    """Each rank has its own data and dropout masks; the checkpoint holds both ranks' RNG states."""
    for phase in ("full", "crash", "resume"):
        torch.multiprocessing.spawn(_ddp_resume_worker, args=(free_port(), str(tmp_path), phase), nprocs=2)
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resume.pt")
    assert [s for s, _ in resumed] == [4, 5, 6, 7, 8]
    assert resumed == full[3:]
    assert len(load_checkpoint(tmp_path / "resume" / LATEST)["rng"]) == 2


# ---------------------------------------------------------------------------------------------------- experiment, wandb

TINY_DEMO = ["--max-steps", "4", "--batch-size", "4", "--num-latents", "4", "--num-latent-channels", "16",
             "--embed-channels", "16", "--num-self-attention-layers", "1", "--num-self-attention-heads", "2",
             "--max-filler", "8", "--eval-batches", "1", "--eval-every", "2", "--checkpoint-every", "2",
             "--warmup-steps", "1", "--log-every", "1", "--no-progress"]


def test_synthetic_experiment_writes_metrics_and_an_offline_wandb_run(tmp_path, monkeypatch):
    from experiments import synthetic_demo

    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "demo"
    returned = synthetic_demo.main(["--out", str(out), "--wandb", "offline", *TINY_DEMO])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert metrics["steps"] == 4 and metrics["corrupt_samples"] == 0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    assert all(isinstance(v, (int, float, str, bool)) for v in metrics.values())  # flat
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    images = {p.name.split("_")[0] for p in runs[0].rglob("*.png")}
    assert {"confusion", "attention"} <= images
    assert load_checkpoint(out / LATEST)["step"] == 4
    assert (out / "model" / "config.json").is_file()


def test_synthetic_experiment_resumes_from_its_checkpoint(tmp_path, capsys):
    from experiments import synthetic_demo

    out = tmp_path / "demo"
    args = ["--out", str(out), "--wandb", "disabled", *TINY_DEMO]
    first = synthetic_demo.main([*args, "--max-steps", "2"])  # stops at 2 of 2 steps (the schedule's end)
    assert first["steps"] == 2
    resumed = synthetic_demo.main([*args, "--max-steps", "2", "--resume"])
    assert "at step 2 (epoch 0, batch 2)" in capsys.readouterr().out
    assert resumed["steps"] == 2 and resumed["test_accuracy"] == first["test_accuracy"]  # evaluated again, same weights
    assert not (out / "wandb").exists()  # disabled means nothing written to wandb
    # ... but the figures are kept whatever the wandb mode
    assert {p.name for p in (out / "figures").iterdir()} == {"eval_confusion_matrix.png", "eval_attention_map.png"}
    assert (out / "figures" / "eval_confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tracker_writes_figures_in_every_mode_but_only_on_the_main_rank(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = Tracker(out_dir=tmp_path / "main", config={}, mode="disabled")
    other = Tracker(out_dir=tmp_path / "other", config={}, mode="disabled", enabled=False)
    assert main.saves_figures and not other.saves_figures
    figures = [plt.figure(), plt.figure()]
    for tracker, figure in zip((main, other), figures):
        tracker.log({"eval/both/confusion matrix": figure, "eval/loss": 1.0}, step=3)
    assert [p.name for p in (tmp_path / "main" / "figures").iterdir()] == ["eval_both_confusion_matrix.png"]
    assert not (tmp_path / "other").exists()
    assert not any(plt.fignum_exists(figure.number) for figure in figures)  # logged figures are closed


def test_wandb_settings_follow_its_environment_when_the_flags_are_absent(monkeypatch, capsys):
    from experiments.common import build_parser, check_args

    parser = build_parser("test", name="test")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    args = parser.parse_args([])
    check_args(parser, args)
    assert (args.wandb, args.wandb_project, args.wandb_entity) == ("offline", "perceiver-triton", None)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_PROJECT", "theirs")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    args = parser.parse_args([])
    check_args(parser, args)
    assert (args.wandb, args.wandb_project, args.wandb_entity) == ("disabled", "theirs", "team")
    args = parser.parse_args(["--wandb", "online", "--wandb-project", "mine", "--wandb-entity", "me"])
    check_args(parser, args)
    assert (args.wandb, args.wandb_project, args.wandb_entity) == ("online", "mine", "me")  # the flags win
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(SystemExit) as exit_:
        check_args(parser, parser.parse_args([]))
    assert exit_.value.code == 2
    assert "WANDB_MODE: expected one of ('online', 'offline', 'disabled'), got 'sometimes'" in capsys.readouterr().err


def test_tracker_passes_wandb_its_entity_project_and_dir(tmp_path, monkeypatch):
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("WANDB_PROJECT", "theirs")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-here"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    Tracker(out_dir=tmp_path / "out", config={})
    assert calls[-1]["mode"] == "offline" and calls[-1]["project"] == "theirs" and calls[-1]["entity"] == "team"
    assert calls[-1]["dir"] == str(tmp_path / "wandb-here")
    monkeypatch.delenv("WANDB_DIR")
    Tracker(out_dir=tmp_path / "out", config={}, project="mine", entity="me")
    assert (calls[-1]["project"], calls[-1]["entity"], calls[-1]["dir"]) == ("mine", "me", str(tmp_path / "out"))


def test_a_failing_wandb_log_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    import wandb

    from experiments import synthetic_demo

    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = []

    def broken_log(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("wandb is down")

    # wandb.init rebinds the module-level wandb.log to the new run's method, so patch the method itself (what
    # wandb.log calls) as well as the module attribute.
    monkeypatch.setattr(wandb, "log", broken_log)
    monkeypatch.setattr(wandb.Run, "log", broken_log)
    out = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = synthetic_demo.main(["--out", str(out), "--wandb", "offline", *TINY_DEMO])
    assert len(calls) >= 4  # every step tried to log
    assert metrics["steps"] == 4 and (out / "metrics.json").is_file()
    wandb_warnings = [w for w in caught if "wandb log failed" in str(w.message)]
    assert len(wandb_warnings) == 1 and "wandb is down" in str(wandb_warnings[0].message)


def test_a_failing_wandb_init_leaves_an_inactive_tracker(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("no wandb service")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="wandb init failed"):
        tracker = Tracker(out_dir=tmp_path, project="p", config={}, mode="offline")
    assert not tracker.active
    tracker.log({"loss": 1.0}, step=1)  # no-ops
    tracker.finish()
    result = train(tiny_model(), config=quiet_config(max_steps=2), out_dir=tmp_path, tracker=tracker,
                   make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    assert result.step == 2


def test_experiment_parser_rejects_bad_values(capsys):
    from experiments.common import build_parser, check_args

    parser = build_parser("d", name="x", defaults={"max_steps": 10})
    args = parser.parse_args([])
    check_args(parser, args)
    assert args.warmup_steps == 1 and args.max_steps == 10  # warm-up defaults to a tenth of the run
    with pytest.raises(SystemExit):
        check_args(parser, parser.parse_args(["--warmup-steps", "20"]))
    assert "--warmup-steps: expected an int in [0, --max-steps=10], got 20" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_args(parser, parser.parse_args(["--max-minutes", "0"]))
    assert "--max-minutes: expected a positive number, got 0.0" in capsys.readouterr().err
    from experiments.common import train_config

    budget = parser.parse_args(["--max-minutes", "1.5"])
    check_args(parser, budget)
    assert train_config(budget).max_seconds == 90.0 and train_config(args).max_seconds is None
    with pytest.raises(ValueError, match="unknown option names"):
        build_parser("d", name="x", defaults={"max_stepz": 10})


def test_loader_batches_asks_the_data_pipeline_for_each_epoch(monkeypatch):
    import perceiver.data

    from experiments.common import loader_batches

    calls = []

    def fake_make_loader(shards, **kwargs):
        calls.append((shards, kwargs))
        return [{"epoch": kwargs["epoch"]}]

    monkeypatch.setattr(perceiver.data, "make_loader", fake_make_loader, raising=False)
    make_batches = loader_batches(["a.tar"], batch_size=4, seed=7, num_workers=2, shuffle_buffer=10)
    assert list(make_batches(3)) == [{"epoch": 3}]
    assert calls == [(["a.tar"], dict(batch_size=4, mode="epoch", seed=7, epoch=3, num_workers=2, shuffle_buffer=10))]
