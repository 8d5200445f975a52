"""Perceiver Resampler on spoken digits: variable-length frozen features → a fixed number of tokens → another model.

The BLIP-2 / LLaVA pattern in miniature. Each utterance of ``av-digits`` (its audio only; held-out voices in the
test split) becomes a variable number of frozen per-frame features: 10 ms log-mel frames from a fixed front end with
no trainable weights, as many frames as the utterance is long (metrics.json
reports the range in the test split). ``PerceiverResampler`` maps them, with their pad mask, to
``--num-tokens`` tokens of width ``--token-channels``; a small Transformer (``torch.nn.TransformerEncoder``, the
"other model") reads those tokens and classifies the digit. Only the resampler and the Transformer train.

``--summary mean`` replaces the resampler by the mean of the real frames (one token, projected to the same width):
the baseline a fixed-size summary without attention gives. Evaluation also measures padding invariance on real
data: each test sample's logits alone versus inside a batch padded to one second::

    python -m experiments.resampler_digits --out runs/resampler-digits
    python -m experiments.resampler_digits --out runs/resampler-digits-mean --summary mean
"""

from __future__ import annotations

import torch
from torch import nn

from experiments.common import (AV_DIGITS, DIGIT_CLASSES, SAMPLE_RATE, add_av_adapter_args, add_data_args,
                                av_audio_adapter, build_parser, check_args, check_av_adapter_args, confusion_metrics,
                                crop_audio, ensure_shards, per_rank_seed, run_summary, start_run, train_on_shards)
from perceiver import Pretrained, capture_config
from perceiver.data import make_loader
from perceiver.resampler import PerceiverResampler
from perceiver.training.distributed import all_reduce_sum
from perceiver.training.plots import confusion_matrix

NAME = "resampler_digits"
SUMMARIES = ("resampler", "mean")


class FrameFeatures:
    """The frozen front end: waveforms (B, T) → standardised log-mel frames (B, F, n_mels) and their pad mask (B, F).

    It borrows ``SpectrogramAdapter.log_mel`` (no trainable weights are used) and is not part of the trained model.
    """

    def __init__(self, args):
        self.adapter = av_audio_adapter(args)

    def __call__(self, audio: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.adapter.log_mel(audio, pad_mask)


class TokenClassifier(Pretrained, nn.Module):
    """Features (B, F, C) and their pad mask → fixed tokens (B, K, W) → Transformer → logits (B, classes)."""

    def __init__(self, *, summary: str, num_input_channels: int, num_tokens: int, token_channels: int,
                 num_resampler_layers: int, num_classifier_layers: int, num_heads: int, num_classes: int):
        super().__init__()
        self.config = capture_config(locals())
        self.summary = summary
        if summary == "resampler":
            self.summarise = PerceiverResampler(num_input_channels=num_input_channels, num_latents=num_tokens,
                                                num_latent_channels=token_channels, num_layers=num_resampler_layers,
                                                num_heads=num_heads, widening_factor=2, init_scale=None)
        else:
            self.summarise = nn.Linear(num_input_channels, token_channels)
        layer = nn.TransformerEncoderLayer(d_model=token_channels, nhead=num_heads, dim_feedforward=2 * token_channels,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_classifier_layers, enable_nested_tensor=False)
        self.head = nn.Linear(token_channels, num_classes)

    def tokens(self, features: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        if self.summary == "resampler":
            return self.summarise(features, pad_mask)
        real = (~pad_mask)[..., None].to(features.dtype)
        mean = (features * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
        return self.summarise(mean)[:, None, :]

    def forward(self, features: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(self.tokens(features, pad_mask)).mean(dim=1))


def build_model(args) -> TokenClassifier:
    return TokenClassifier(summary=args.summary, num_input_channels=args.n_mels, num_tokens=args.num_tokens,
                           token_channels=args.token_channels, num_resampler_layers=args.num_resampler_layers,
                           num_classifier_layers=args.num_classifier_layers, num_heads=args.num_heads,
                           num_classes=len(DIGIT_CLASSES))


def padding_gap(model: TokenClassifier, front: FrameFeatures, batch: dict, device, samples: int = 8) -> float:
    """Largest |logit difference| of the first ``samples`` test utterances alone vs padded to one second together."""
    audio, pad_mask = crop_audio(batch["audio"], batch["audio_pad_mask"])
    padded = nn.functional.pad(audio[:samples], (0, SAMPLE_RATE - audio.shape[1]))
    padded_mask = nn.functional.pad(pad_mask[:samples], (0, SAMPLE_RATE - audio.shape[1]), value=True)
    together = model(*[t.to(device) for t in front(padded, padded_mask)])
    gap = 0.0
    for i in range(min(samples, len(padded))):
        length = int((~padded_mask[i]).sum())
        alone = model(*[t.to(device) for t in front(padded[i:i + 1, :length], padded_mask[i:i + 1, :length])])
        gap = max(gap, float((alone[0] - together[i]).abs().max()))
    return gap


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=1200, batch_size=64, lr=2e-3, weight_decay=0.05, eval_every=400, checkpoint_every=400))
    add_data_args(parser, "av-digits")
    parser.add_argument("--summary", choices=SUMMARIES, default="resampler",
                        help="how the variable-length features become fixed tokens")
    parser.add_argument("--num-tokens", type=int, default=8, help="resampler: output tokens")
    parser.add_argument("--token-channels", type=int, default=64, help="width of the tokens the Transformer reads")
    parser.add_argument("--num-resampler-layers", type=int, default=2)
    parser.add_argument("--num-classifier-layers", type=int, default=2, help="layers of the downstream Transformer")
    parser.add_argument("--num-heads", type=int, default=4)
    add_av_adapter_args(parser)
    args = parser.parse_args(argv)
    check_args(parser, args)
    check_av_adapter_args(parser, args)
    for flag in ("num_tokens", "token_channels", "num_resampler_layers", "num_classifier_layers", "num_heads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if args.token_channels % args.num_heads:
        parser.error(f"--token-channels: expected a multiple of --num-heads={args.num_heads}, "
                     f"got {args.token_channels}")

    run = start_run(args, name=NAME)
    shards = ensure_shards(AV_DIGITS, args.data, ("train", "test"), limit=args.limit, seed=args.seed)
    model = build_model(args)
    front = FrameFeatures(args)
    per_rank_seed(args.seed, run.context.rank)
    device = run.context.device

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        features, frame_pad = front(*crop_audio(batch["audio"], batch["audio_pad_mask"]))
        logits = model(features.to(device), frame_pad.to(device)).float()
        labels = batch["label"].to(device)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, {"accuracy": (logits.argmax(dim=1) == labels).float().mean()}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        counts = torch.zeros(len(DIGIT_CLASSES), len(DIGIT_CLASSES), dtype=torch.int64, device=device)
        gap, frames = None, []
        for batch in make_loader(shards["test"], batch_size=250, mode="epoch", shuffle=False,
                                 num_workers=args.num_workers):
            features, frame_pad = front(*crop_audio(batch["audio"], batch["audio_pad_mask"]))
            logits = model(features.to(device), frame_pad.to(device))
            counts += confusion_matrix(logits.argmax(dim=1), batch["label"].to(device), num_classes=len(DIGIT_CLASSES))
            frames += (~frame_pad).sum(dim=1).tolist()
            if gap is None:
                gap = padding_gap(model, front, batch, device)
        return {**confusion_metrics(all_reduce_sum(counts), list(DIGIT_CLASSES), figure=run.tracker.saves_figures),
                "padding_max_abs_logit_gap": gap, "min_frames": min(frames), "max_frames": max(frames)}

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate)
    if run.context.is_main:
        model.save_pretrained(run.out / "model")
    final = result.eval_metrics
    return run.finish({
        "summary": args.summary,
        "test_accuracy": final.get("accuracy", float("nan")),
        "test_samples": int(final.get("samples", 0)),
        "padding_max_abs_logit_gap": final.get("padding_max_abs_logit_gap", float("nan")),
        "test_frames_min": int(final.get("min_frames", 0)),
        "test_frames_max": int(final.get("max_frames", 0)),
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
