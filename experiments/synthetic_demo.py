"""Synthetic demo: which of four keywords is hidden in a random byte string? Needs no data on disk.

A complete experiment on the shared contract (``experiments/common.py``): batches are dicts shaped like the data
pipeline's (``text``, ``text_pad_mask``, ``label``, ``key``, ``corrupt``), generated deterministically from
(seed, epoch, rank), so that ``--resume`` and ``torchrun`` behave as they do on real shards::

    python -m experiments.synthetic_demo --out runs/demo --max-steps 300
    torchrun --nproc_per_node=2 -m experiments.synthetic_demo --out runs/demo-ddp --max-steps 300
"""

from __future__ import annotations

import random

import torch
from torch import nn

from experiments.common import (build_parser, check_args, classifier, per_rank_seed, run_summary, start_run,
                                train_config)
from perceiver import PerceiverIO
from perceiver.adapters import ByteAdapter
from perceiver.training import train
from perceiver.training.distributed import all_reduce_sum
from perceiver.training.plots import (
    attention_map_figure,
    confusion_matrix,
    confusion_matrix_figure,
    cross_attention_weights,
)

NAME = "synthetic_demo"
KEYWORDS = ("cat", "dog", "owl", "fox")
FILLER = "abeghijklmnpqrsuvyz"  # no letter of any keyword, so each text holds exactly one


def keyword_batch(adapter: ByteAdapter, *, batch_size: int, max_filler: int, rng: random.Random) -> dict:
    """One batch in the data pipeline's format: padded byte ids, pad mask, labels, sample keys, corrupt count."""
    texts, labels = [], []
    for _ in range(batch_size):
        label = rng.randrange(len(KEYWORDS))
        letters = [rng.choice(FILLER) for _ in range(rng.randint(4, max_filler))]
        at = rng.randint(0, len(letters))
        texts.append("".join(letters[:at]) + KEYWORDS[label] + "".join(letters[at:]))
        labels.append(label)
    ids, pad_mask = adapter.encode(texts)
    keys = [f"synthetic-{rng.getrandbits(32):08x}" for _ in texts]
    return {"text": ids, "text_pad_mask": pad_mask, "label": torch.tensor(labels), "key": keys, "corrupt": 0}


def build_model(args) -> PerceiverIO:
    adapter = ByteAdapter(max_length=args.max_filler + 8, embed_channels=args.embed_channels)
    return classifier(adapter, args, num_classes=len(KEYWORDS))


def classification_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = model(batch["text"], batch["text_pad_mask"])
    loss = nn.functional.cross_entropy(logits.float(), batch["label"])
    return loss, {"accuracy": (logits.argmax(dim=1) == batch["label"]).float().mean()}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=300, batch_size=32, lr=1e-3, num_latents=32, num_latent_channels=64,
        num_self_attention_layers=2, eval_every=100, checkpoint_every=100))
    parser.add_argument("--embed-channels", type=int, default=64, help="width of the byte embedding")
    parser.add_argument("--max-filler", type=int, default=48, help="longest random filler around the keyword")
    parser.add_argument("--batches-per-epoch", type=int, default=50, help="batches per epoch and process")
    parser.add_argument("--eval-batches", type=int, default=8, help="held-out batches per process")
    args = parser.parse_args(argv)
    check_args(parser, args)

    run = start_run(args, name=NAME)
    model = build_model(args)
    per_rank_seed(args.seed, run.context.rank)
    adapter = model.input_adapter
    rank, device = run.context.rank, run.context.device

    def make_batches(epoch: int):
        rng = random.Random(f"{args.seed}/train/{epoch}/{rank}")
        for _ in range(args.batches_per_epoch):
            yield keyword_batch(adapter, batch_size=args.batch_size, max_filler=args.max_filler, rng=rng)

    held_out_rng = random.Random(f"{args.seed}/held-out/{rank}")
    held_out = [keyword_batch(adapter, batch_size=args.batch_size, max_filler=args.max_filler, rng=held_out_rng)
                for _ in range(args.eval_batches)]

    def evaluate(model: nn.Module) -> dict:
        counts = torch.zeros(len(KEYWORDS), len(KEYWORDS), dtype=torch.int64, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for batch in held_out:
            ids, pad_mask, labels = (batch[k].to(device) for k in ("text", "text_pad_mask", "label"))
            logits = model(ids, pad_mask).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            counts += confusion_matrix(logits.argmax(dim=1), labels, num_classes=len(KEYWORDS))
        counts, loss_sum = all_reduce_sum(counts), all_reduce_sum(loss_sum)
        seen = int(counts.sum())
        # Sums over all ranks, identical everywhere, so the loop's average over ranks keeps them as they are.
        metrics = {"loss": float(loss_sum) / seen, "accuracy": float(counts.diagonal().sum()) / seen}
        if run.tracker.saves_figures:  # to wandb and OUT/figures/ (main rank)
            metrics["confusion_matrix"] = confusion_matrix_figure(counts, class_names=list(KEYWORDS))
            sample = held_out[0]
            weights = cross_attention_weights(model, sample["text"][:1].to(device), sample["text_pad_mask"][:1].to(device))
            metrics["attention_map"] = attention_map_figure(weights[0], title=f"latents × bytes of {sample['key'][0]}")
        return metrics

    result = train(model, config=train_config(args), make_batches=make_batches, loss_fn=classification_loss,
                   evaluate=evaluate, out_dir=run.out, tracker=run.tracker, device=device, run_config=run.config)
    if run.context.is_main:
        model.save_pretrained(run.out / "model")
    return run.finish({
        "test_accuracy": result.eval_metrics.get("accuracy", float("nan")),
        "test_loss": result.eval_metrics.get("loss", float("nan")),
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
