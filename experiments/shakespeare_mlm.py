"""Shakespeare: masked-byte modelling with a Perceiver IO over UTF-8 bytes (``ByteAdapter``, per-byte queries).

The shards (passages of whole lines, at most 1 KiB each, split by work) are built under ``--data`` when absent; the
``test`` split holds works never seen in training. Each sample is a window of ``--window`` bytes: a random window of
its passage in training, every consecutive window of it in evaluation. Masking as in BERT: ``--mask-rate`` (15%) of
the real bytes are chosen, single bytes or runs of ``--span`` bytes; of those 80% become ``MASK_ID``, 10% a random
byte and 10% stay as they are; the loss is the cross-entropy on the chosen bytes only.

The decoder's queries (``TokenQueries``) are built for the chosen positions only (``--decode masked``; ``all``
decodes every position and keeps the chosen ones, the same logits at more cost): each is the position plus a linear
map of the input tokens at that position and ``--query-context`` positions on each side (the MASK token and its
neighbours; ``-1``: the position alone), carried past the cross-attention by its residual. So the local context
reaches the output directly and the latents carry what lies further away. ``TokenOutput`` scores the 256 bytes with
the input embedding's weights (tied).

Training is bounded by time: ``--max-minutes`` 28 of training steps on one CPU thread (the lr's cosine runs over
them; ``--max-steps`` 20,000 is only a cap), after a warm-up of ``min(200, max_steps / 10)`` steps.

Evaluation reports, on the held-out works' chosen bytes, the accuracy and the cross-entropy in bits per byte, and the
same for a unigram baseline (byte frequencies of the training split) on the very same positions::

    python -m experiments.shakespeare_mlm --out runs/shakespeare-mlm
    torchrun --nproc_per_node=2 -m experiments.shakespeare_mlm --out runs/shakespeare-mlm-ddp
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from experiments.common import (add_data_args, build_encoder, build_parser, check_args, ensure_shards, per_rank_seed,
                                run_summary, start_run, train_on_shards)
from perceiver import PerceiverDecoder, PerceiverIO
from perceiver.adapters import MASK_ID, PAD_ID, ByteAdapter, TokenOutput, TokenQueries
from perceiver.data import make_loader
from perceiver.training.distributed import all_reduce_sum

NAME = "shakespeare_mlm"
DATASET = "shakespeare"
NUM_BYTES = 256  # targets are bytes; the special ids (PAD, MASK, ...) are never predicted


def build_model(args) -> PerceiverIO:
    adapter = ByteAdapter(max_length=args.window, embed_channels=args.embed_channels, positions=args.positions,
                          num_bands=args.num_bands)
    channels = args.num_latent_channels
    read_tokens = args.query_context >= 0
    return PerceiverIO(
        input_adapter=adapter,
        encoder=build_encoder(args, adapter.num_channels, widening_factor=args.widening_factor, init_scale=args.init_scale),
        decoder=PerceiverDecoder(
            query_provider=TokenQueries(max_length=args.window, num_channels=args.embed_channels,
                                        positions=args.positions, num_bands=args.num_bands,
                                        token_channels=adapter.num_channels if read_tokens else None,
                                        context=max(0, args.query_context)),
            output_adapter=TokenOutput(num_channels=args.embed_channels, tied=True),  # tied by PerceiverIO
            num_latent_channels=channels,
            cross_attention_widening_factor=args.widening_factor,
            query_residual=read_tokens,  # the query's own view of the input goes on to the output
            init_scale=args.init_scale,
        ),
    )


def random_windows(ids: torch.Tensor, pad_mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One random window of ``window`` bytes per row of ids (B, L); a shorter text is kept whole, padded after."""
    lengths = pad_mask.shape[1] - pad_mask.sum(dim=1)
    ids = nn.functional.pad(ids, (0, max(0, window - ids.shape[1])), value=PAD_ID)
    starts = (torch.rand(ids.shape[0]) * ((lengths - window).clamp(min=0) + 1)).long()
    index = starts[:, None] + torch.arange(window)
    windows = ids.gather(1, index)
    window_pad = index >= lengths[:, None]
    return windows.masked_fill(window_pad, PAD_ID), window_pad


def consecutive_windows(ids: torch.Tensor, pad_mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of ``window`` bytes of each row, back to back: (W, window), windows of padding alone dropped."""
    fill = -ids.shape[1] % window
    ids = nn.functional.pad(ids, (0, fill), value=PAD_ID).reshape(-1, window)
    pad_mask = nn.functional.pad(pad_mask, (0, fill), value=True).reshape(-1, window)
    keep = ~pad_mask.all(dim=1)
    return ids[keep], pad_mask[keep]


def choose_spans(pad_mask: torch.Tensor, *, rate: float, span: int = 1,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The positions (B, L) chosen for the loss: runs of ``span`` consecutive real bytes, about ``rate`` of them.

    Spans start independently at each position (also up to ``span - 1`` positions before the first byte, so that every
    position is covered with the same probability) with the probability p that makes 1 - (1 - p)^span = ``rate``;
    overlapping spans merge. Padding is never chosen. ``span=1`` chooses single bytes, each with probability ``rate``.
    """
    batch_size, length = pad_mask.shape
    start_rate = 1.0 - (1.0 - rate) ** (1.0 / span)
    starts = torch.rand(batch_size, length + span - 1, generator=generator) < start_rate
    if span == 1:
        chosen = starts
    else:  # position l is chosen when a span starts at any of l - span + 1 .. l (start index l .. l + span - 1 here)
        chosen = starts.unfold(1, span, 1).any(dim=2)
    return chosen & ~pad_mask


def mask_bytes(ids: torch.Tensor, pad_mask: torch.Tensor, *, rate: float = 0.15, span: int = 1,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: ``rate`` of the real bytes are chosen (in spans of ``span``, see ``choose_spans``); of
    those 80% → MASK_ID, 10% → a random byte, 10% kept.

    Returns the corrupted ids and the boolean (B, L) map of chosen positions (where the loss is taken).
    """
    chosen = choose_spans(pad_mask, rate=rate, span=span, generator=generator)
    kind = torch.rand(ids.shape, generator=generator)
    random_bytes = torch.randint(0, NUM_BYTES, ids.shape, generator=generator)
    corrupted = torch.where(chosen & (kind < 0.8), MASK_ID, ids)
    corrupted = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), random_bytes, corrupted)
    return corrupted, chosen


def chosen_index(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen positions of each row of ``chosen`` (B, L), in order, as an index (B, K) padded after with
    position 0, and its filler mask (B, K) (True = filler); K is the largest count of a row (at least 1)."""
    counts = chosen.sum(dim=1)
    width = max(1, int(counts.max())) if chosen.numel() else 1
    # A stable sort puts the chosen positions first, each row's in their original order.
    index = torch.sort(chosen.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
    filler = torch.arange(width)[None, :] >= counts[:, None]
    return index.masked_fill(filler, 0), filler


def byte_counts(shards, *, num_workers: int) -> torch.Tensor:
    """How often each byte value occurs in the texts of ``shards`` (float64, (256,)), summed over ranks."""
    counts = torch.zeros(NUM_BYTES, dtype=torch.float64)
    for batch in make_loader(shards, batch_size=500, mode="epoch", shuffle=False, num_workers=num_workers):
        counts += torch.bincount(batch["text"][~batch["text_pad_mask"]], minlength=NUM_BYTES)[:NUM_BYTES].double()
    return all_reduce_sum(counts)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The experiment's flags, checked (``argv`` None: the command line)."""
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=20_000, max_minutes=28.0, batch_size=64, lr=2e-3, weight_decay=0.05, num_latents=32,
        num_latent_channels=128,
        num_self_attention_heads=4, num_self_attention_layers=4, eval_every=0, checkpoint_every=500))
    add_data_args(parser, "shakespeare")
    parser.add_argument("--window", type=int, default=128, help="bytes per training and evaluation window")
    parser.add_argument("--positions", choices=("learned", "fourier"), default="learned",
                        help="byte and query positions: learned vectors, or Fourier features of the position")
    parser.add_argument("--num-bands", type=int, default=32, help="Fourier frequency bands (Fourier positions)")
    parser.add_argument("--init-scale", type=float, default=None,
                        help="fixed std of the initial weights (default: the package's fan-in scaled initialisation)")
    parser.add_argument("--mask-rate", type=float, default=0.15, help="fraction of real bytes chosen for the loss")
    parser.add_argument("--embed-channels", type=int, default=128, help="width of the byte embedding and queries")
    parser.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    parser.add_argument("--span", type=int, default=1,
                        help="bytes per masked span (1: single bytes); --mask-rate of the bytes are chosen either way")
    parser.add_argument("--query-context", type=int, default=4,
                        help="input bytes on each side that a byte's query reads, besides its own; -1: the query is "
                             "its position only")
    parser.add_argument("--decode", choices=("masked", "all"), default="masked",
                        help="decode the chosen positions only, or every position (the loss is the same)")
    args = parser.parse_args(argv)
    if args.warmup_steps is None:  # a time-limited run rarely reaches --max-steps: warm up over 200 steps at most
        args.warmup_steps = min(200, args.max_steps // 10)
    check_args(parser, args)
    if args.window < 1:
        parser.error(f"--window: expected a positive int, got {args.window}")
    if not 0 < args.mask_rate < 1:
        parser.error(f"--mask-rate: expected a fraction in (0, 1), got {args.mask_rate}")
    if not 1 <= args.span <= args.window:
        parser.error(f"--span: expected an int in [1, --window={args.window}], got {args.span}")
    if args.query_context < -1:
        parser.error(f"--query-context: expected an int >= -1, got {args.query_context}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)

    run = start_run(args, name=NAME)
    shards = ensure_shards(DATASET, args.data, ("train", "test"), limit=args.limit, seed=args.seed)
    model = build_model(args)
    unigram = byte_counts(shards["train"], num_workers=args.num_workers) + 1.0  # add-one: no byte has probability 0
    unigram_log2 = torch.log2(unigram / unigram.sum())
    per_rank_seed(args.seed, run.context.rank)
    device = run.context.device

    def masked_logits(model: nn.Module, ids: torch.Tensor, pad_mask: torch.Tensor, generator=None):
        """Byte logits (K, 256) at the K chosen positions of the corrupted windows, and the original bytes (K,)."""
        corrupted, chosen = mask_bytes(ids, pad_mask, rate=args.mask_rate, span=args.span, generator=generator)
        if args.decode == "all":
            logits = model(corrupted.to(device), pad_mask.to(device))
            chosen = chosen.to(device)
            return logits[chosen][:, :NUM_BYTES].float(), ids.to(device)[chosen]
        index, filler = chosen_index(chosen)
        logits = model(corrupted.to(device), pad_mask.to(device), index=index.to(device),
                       index_pad_mask=filler.to(device))
        real = ~filler.to(device)
        return logits[real][:, :NUM_BYTES].float(), ids.gather(1, index).to(device)[real]

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        ids, pad_mask = random_windows(batch["text"].cpu(), batch["text_pad_mask"].cpu(), args.window)
        logits, targets = masked_logits(model, ids, pad_mask)
        loss = nn.functional.cross_entropy(logits, targets)
        return loss, {"masked_accuracy": (logits.argmax(dim=1) == targets).float().mean()}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        # The same positions and corruptions at every evaluation (a fixed generator), for model and baseline alike.
        generator = torch.Generator().manual_seed(args.seed + 1_000_003 * run.context.rank)
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # chosen, model hits, model nats, uni hits, uni bits
        best_unigram = unigram_log2.argmax().to(device)
        for batch in make_loader(shards["test"], batch_size=16, mode="epoch", shuffle=False,
                                 num_workers=args.num_workers):
            ids, pad_mask = consecutive_windows(batch["text"], batch["text_pad_mask"], args.window)
            logits, targets = masked_logits(model, ids, pad_mask, generator)
            sums += torch.stack([
                torch.tensor(float(targets.numel()), dtype=torch.float64, device=device),
                (logits.argmax(dim=1) == targets).sum().double(),
                nn.functional.cross_entropy(logits, targets, reduction="sum").double(),
                (targets == best_unigram).sum().double(),
                -unigram_log2.to(device)[targets].sum(),
            ])
        chosen, hits, nats, unigram_hits, unigram_bits = all_reduce_sum(sums).tolist()
        chosen = max(chosen, 1.0)
        return {"masked_accuracy": hits / chosen, "bits_per_byte": nats / chosen / math.log(2),
                "unigram_masked_accuracy": unigram_hits / chosen, "unigram_bits_per_byte": unigram_bits / chosen,
                "masked_bytes": int(chosen)}

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate)
    if run.context.is_main:
        model.save_pretrained(run.out / "model")
    metrics = result.eval_metrics
    return run.finish({
        "test_masked_accuracy": metrics.get("masked_accuracy", float("nan")),
        "test_bits_per_byte": metrics.get("bits_per_byte", float("nan")),
        "unigram_masked_accuracy": metrics.get("unigram_masked_accuracy", float("nan")),
        "unigram_bits_per_byte": metrics.get("unigram_bits_per_byte", float("nan")),
        "test_masked_bytes": int(metrics.get("masked_bytes", 0)),
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
