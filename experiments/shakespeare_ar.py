"""Shakespeare: next-byte modelling with Perceiver AR, against a GPT of the same layers at equal wall-clock.

The shards (passages of whole lines, split by work; see ``perceiver.data.sources.shakespeare``) are put back in order,
each file's passages one after the other, and the files of a split joined into one byte stream. Training takes
random windows of that stream (a fresh draw per batch, as nanoGPT does). ``--model ar`` trains a ``PerceiverAR`` with a
``--context`` of bytes and ``--num-latents`` latents (a prediction per latent); ``--model gpt`` the decoder-only
transformer of the same layers and width (``perceiver_ar`` with every position a latent) over ``--gpt-context``
bytes; ``--model both`` trains one then the other, each for ``--max-minutes``, into OUT/ar and OUT/gpt.

Evaluation reports bits per byte on the held-out works (the ``test`` split): ``--eval-blocks`` blocks of
``--eval-block`` consecutive target bytes at evenly spaced places of the test stream, the same bytes for both models;
each model reads its whole context before each target (the AR model's latents are the block). A few samples,
generated with the key/value cache from prompts of the test stream, go into metrics.json::

    python -m experiments.shakespeare_ar --model ar --max-minutes 28 --out runs/shakespeare-ar/ar
    python -m experiments.shakespeare_ar --model gpt --max-minutes 28 --out runs/shakespeare-ar/gpt

The defaults (rotary positions, lr 4e-3, 100 warmup steps, batch 8, 4 layers of width 128) are those the probes in
docs/exps.md ("Perceiver AR") chose; ``--max-steps`` is only a cap, ``--max-minutes`` sets the length of a run.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from experiments.common import (add_data_args, build_parser, check_args, ensure_shards, per_rank_seed, run_summary,
                                start_run, train_config, write_metrics)
from perceiver.builders import perceiver_ar
from perceiver.data import make_loader
from perceiver.training.loop import train

NAME = "shakespeare_ar"
DATASET = "shakespeare"


def byte_stream(shards, *, num_workers: int = 0) -> torch.Tensor:
    """The texts of ``shards`` in order (uint8, 1-D): each file's passages by index, files sorted by name."""
    passages = {}
    for batch in make_loader(shards, batch_size=500, mode="epoch", shuffle=False, num_workers=num_workers):
        lengths = (~batch["text_pad_mask"]).sum(dim=1).tolist()
        for meta, text, length in zip(batch["meta"], batch["text"], lengths):
            passages[(meta["file"], meta["passage"])] = text[:length].to(torch.uint8)
    return torch.cat([passages[key] for key in sorted(passages)])


def random_windows(stream: torch.Tensor, *, length: int, batch_size: int, seed: int):
    """``make_batches(epoch)``: endless batches {"ids": (B, length)} of random windows, fixed by (seed, epoch)."""

    def make_batches(epoch: int):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        offsets = torch.arange(length)
        while True:
            starts = torch.randint(0, len(stream) - length + 1, (batch_size, 1), generator=generator)
            yield {"ids": stream[starts + offsets].long()}

    return make_batches


def eval_starts(stream_length: int, *, context: int, block: int, blocks: int) -> torch.Tensor:
    """Evenly spaced first target positions, each with ``context`` bytes before its block."""
    last = stream_length - block
    if last < context:
        raise ValueError(f"test stream: expected more than context + block = {context + block} bytes, "
                         f"got {stream_length}")
    return torch.linspace(context, last, blocks).long().unique()


@torch.no_grad()
def bits_per_byte(model: nn.Module, stream: torch.Tensor, starts: torch.Tensor, *, context: int, block: int,
                  batch_size: int = 16) -> float:
    """Mean cross-entropy (bits) of the ``block`` bytes from each start, each predicted from its ``context`` bytes."""
    device = next(model.parameters()).device
    offsets = torch.arange(-context, block)  # inputs: the context before the block's last target
    nats, count = 0.0, 0
    for chunk in starts.split(batch_size):
        windows = stream[chunk[:, None] + offsets].long().to(device)
        inputs, targets = windows[:, :context + block - 1][:, -context:], windows[:, -block:]
        logits = model(inputs)[:, -block:]
        nats += nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return nats / count / math.log(2)


def build_model(args, kind: str) -> nn.Module:
    common = dict(vocab_size=256, num_channels=args.num_latent_channels, num_heads=args.num_self_attention_heads,
                  num_self_attention_layers=args.num_self_attention_layers - 1, widening_factor=args.widening_factor,
                  positions=args.positions, dropout=args.dropout)
    if kind == "ar":
        return perceiver_ar(max_seq_len=args.context, num_latents=args.num_latents,
                            prefix_dropout=args.prefix_dropout, **common)
    return perceiver_ar(max_seq_len=args.gpt_context, **common)


def run_one(args, kind: str, out) -> dict:
    """Train and evaluate one model (``ar`` or ``gpt``) into ``out``; returns its metrics."""
    args.out = out
    run = start_run(args, name=f"{NAME}-{kind}")
    shards = ensure_shards(DATASET, args.data, ("train", "test"), limit=args.limit, seed=args.seed)
    started = time.perf_counter()
    train_stream, test_stream = byte_stream(shards["train"]), byte_stream(shards["test"])
    load_seconds = time.perf_counter() - started
    model = build_model(args, kind)
    context = model.max_seq_len
    per_rank_seed(args.seed, run.context.rank)
    block = args.eval_block
    starts = eval_starts(len(test_stream), context=max(args.context, args.gpt_context), block=block,
                         blocks=args.eval_blocks)

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        ids = batch["ids"]
        logits = model(ids[:, :-1])
        targets = ids[:, -logits.shape[1]:]
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()), {}

    def evaluate(model: nn.Module) -> dict:
        return {"bits_per_byte": bits_per_byte(model, test_stream, starts, context=context, block=block)}

    make_batches = random_windows(train_stream, length=context + 1, batch_size=args.batch_size, seed=args.seed)
    result = train(model, config=train_config(args), make_batches=make_batches, loss_fn=loss_fn, evaluate=evaluate,
                   out_dir=run.out, tracker=run.tracker, device=run.context.device, run_config=run.config)
    model.save_pretrained(run.out / "model")
    samples = {}
    generator = torch.Generator().manual_seed(args.seed)
    prompt_starts = torch.linspace(0, len(test_stream) - args.prompt_bytes, args.samples + 2).long()[1:-1]
    for i, start in enumerate(prompt_starts.tolist()):
        prompt = test_stream[start:start + args.prompt_bytes].long()
        out_ids = model.generate(prompt, args.sample_bytes, temperature=args.temperature, top_k=args.top_k,
                                 generator=generator)
        text = bytes(out_ids.tolist()).decode("utf-8", errors="replace")
        samples[f"sample_{i}"] = text[-(args.sample_bytes + 80):]  # the end of the prompt, then the sample
    metrics = result.eval_metrics
    return run.finish({
        "model": kind,
        "test_bits_per_byte": metrics.get("bits_per_byte", float("nan")),
        "context": context,
        "num_latents": model.num_latents,
        "positions": args.positions,
        "eval_bytes": int(len(starts) * block),
        "train_bytes": len(train_stream),
        "test_bytes": len(test_stream),
        "load_seconds": round(load_seconds, 2),
        **run_summary(result, model, run),
        **samples,
    })


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=100_000, warmup_steps=100, batch_size=8, lr=4e-3, weight_decay=0.1, num_latents=128,
        num_latent_channels=128, num_self_attention_heads=4, num_self_attention_layers=4, log_every=100,
        checkpoint_every=0))
    add_data_args(parser, DATASET)
    parser.add_argument("--model", choices=("ar", "gpt", "both"), default="both",
                        help="Perceiver AR, the GPT baseline, or both one after the other (OUT/ar, OUT/gpt)")
    parser.add_argument("--context", type=int, default=1024, help="Perceiver AR's context in bytes (prefix + latents)")
    parser.add_argument("--gpt-context", type=int, default=256, help="the GPT baseline's context in bytes")
    parser.add_argument("--positions", choices=("rotary", "learned"), default="rotary")
    parser.add_argument("--prefix-dropout", type=float, default=0.5, help="Perceiver AR's prefix dropout in training")
    parser.add_argument("--widening-factor", type=int, default=4, help="MLP width / attention width")
    parser.add_argument("--eval-block", type=int, default=128, help="consecutive target bytes per evaluation block")
    parser.add_argument("--eval-blocks", type=int, default=256, help="evaluation blocks on the held-out works")
    parser.add_argument("--samples", type=int, default=3, help="generated samples written to metrics.json")
    parser.add_argument("--prompt-bytes", type=int, default=256, help="prompt length of each sample")
    parser.add_argument("--sample-bytes", type=int, default=300, help="bytes generated per sample")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=None)
    args = parser.parse_args(argv)
    check_args(parser, args)
    for flag in ("context", "gpt_context", "eval_block", "eval_blocks", "prompt_bytes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if args.num_self_attention_layers < 1:
        parser.error(f"--num-self-attention-layers: expected >= 1 (the cross-attention counts as the first), got "
                     f"{args.num_self_attention_layers}")
    if args.num_latents > args.context:
        parser.error(f"--num-latents: expected at most --context={args.context}, got {args.num_latents}")
    if args.eval_block > min(args.num_latents, args.gpt_context):
        parser.error(f"--eval-block: expected at most --num-latents and --gpt-context "
                     f"({min(args.num_latents, args.gpt_context)}), got {args.eval_block}")
    if args.prompt_bytes > min(args.context, args.gpt_context):
        parser.error(f"--prompt-bytes: expected at most both contexts ({min(args.context, args.gpt_context)}), "
                     f"got {args.prompt_bytes}")
    if not 0 <= args.prefix_dropout < 1:
        parser.error(f"--prefix-dropout: expected a fraction in [0, 1), got {args.prefix_dropout}")

    out = args.out
    if args.model != "both":
        return run_one(args, args.model, out)
    results = {kind: run_one(args, kind, out / kind) for kind in ("ar", "gpt")}
    combined = {f"{kind}_{key}": value for kind, metrics in results.items() for key, value in metrics.items()
                if not key.startswith("sample_") and key != "model"}
    combined["ar_minus_gpt_bits_per_byte"] = combined["ar_test_bits_per_byte"] - combined["gpt_test_bits_per_byte"]
    write_metrics(out, combined)
    return combined


if __name__ == "__main__":
    main()
