"""The moving average of the weights: its recurrence against a float64 reference, what the loop evaluates and
returns, and exact resume with it."""

import pytest
import torch
from torch import nn

from perceiver.training import LATEST, load_checkpoint, train
from perceiver.training.ema import ema_decay_at, ema_model
from tests.test_training import classification_loss, epoch_batches, quiet_config, tiny_model


def test_the_decay_ramps_up_to_its_ceiling():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.999, 10**6) == 0.999
    assert ema_decay_at(0.5, 20) == 0.5


def test_the_average_follows_its_recurrence_in_float64():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    model.register_buffer("count", torch.zeros((), dtype=torch.int64))  # integer buffers follow the model
    average = ema_model(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]  # the first update copies
    average.update_parameters(model)
    for n in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.count += 1
        average.update_parameters(model)
        decay = min(0.9, n / (n + 9))  # after n earlier updates: (1 + (n - 1)) / (10 + (n - 1))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for e, a, p in zip(expected, average.module.parameters(), model.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(a, p)  # an average, not the last weights
    assert int(average.module.count) == 39


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_bad_decays_are_rejected(decay):
    with pytest.raises(ValueError, match=r"decay: expected a float in \(0, 1\)"):
        ema_model(nn.Linear(2, 2), decay)
    if decay != 0.0:
        with pytest.raises(ValueError, match=r"ema_decay: expected a float in \[0, 1\)"):
            quiet_config(ema_decay=decay)


def test_the_loop_evaluates_and_returns_the_average(tmp_path):
    seen = []

    def evaluate(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {}

    model = tiny_model()
    train(model, config=quiet_config(ema_decay=0.9), out_dir=tmp_path, make_batches=epoch_batches(batches_per_epoch=5),
          loss_fn=classification_loss, evaluate=evaluate)
    checkpoint = load_checkpoint(tmp_path / LATEST)
    trained, averaged = checkpoint["model"], checkpoint["ema"]
    assert int(averaged["n_averaged"]) == 8
    for name, value in model.state_dict().items():  # the model now holds what was evaluated: the average
        torch.testing.assert_close(value, averaged[f"module.{name}"], rtol=0, atol=0)
        torch.testing.assert_close(value, seen[-1][name], rtol=0, atol=0)
    differs = [name for name in trained if not torch.equal(trained[name], averaged[f"module.{name}"])]
    assert differs, "the average equals the trained weights: it averaged nothing"


def test_resume_continues_the_average_bitwise(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = quiet_config(ema_decay=0.8, checkpoint_every=3)
        whole = tiny_model()
        train(whole, config=config, out_dir=tmp_path / "a", make_batches=epoch_batches(batches_per_epoch=5),
              loss_fn=classification_loss)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tiny_model(), config=config, out_dir=tmp_path / "b",
                  make_batches=epoch_batches(batches_per_epoch=5, crash_after=4), loss_fn=classification_loss)
        resumed = tiny_model(seed=7)
        train(resumed, config=quiet_config(ema_decay=0.8, resume=True), out_dir=tmp_path / "b",
              make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    finally:
        torch.set_num_threads(threads)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_resuming_a_run_without_an_average_with_one_is_refused(tmp_path):
    train(tiny_model(), config=quiet_config(max_steps=2), out_dir=tmp_path,
          make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
    with pytest.raises(ValueError, match="saved without a weight average; resume it with ema_decay 0"):
        train(tiny_model(), config=quiet_config(max_steps=4, ema_decay=0.8, resume=True), out_dir=tmp_path,
              make_batches=epoch_batches(batches_per_epoch=5), loss_fn=classification_loss)
