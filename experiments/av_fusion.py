"""Fusion strategies on audio-visual digits: unimodal, early, late and hybrid fusion with degraded inputs.

Each run trains one ``--variant`` on ``av-digits`` (an MNIST image and a spoken digit of the same class, both
degraded, see ``experiments/common.py``) and evaluates it on the held-out test pairs with both modalities, with
the image only and with the audio only:

- ``image``, ``audio``: a Perceiver IO classifier over one modality (the unimodal baselines);
- ``early``: one ``MultimodalAdapter`` and one latent array over the tokens of both modalities;
- ``late``: one Perceiver IO per modality, their class log-probabilities combined with learned weights
  (``LateFusionClassifier``);
- ``hybrid``: one encoder per modality, their latents concatenated and refined by shared self-attention
  (``HybridFusionClassifier``).

Fusion variants train with modality dropout (``--modality-dropout``): each sample loses each modality with that
probability (never both), so the same model answers when a modality is missing at test time. Late fusion also
trains each branch on its own (``--branch-loss``): the branches' classification losses are added to the fused one,
so a sample missing a modality is classified by a branch that has learned to stand alone::

    python -m experiments.av_fusion --variant image --out runs/av-fusion/image
    python -m experiments.av_fusion --variant early --out runs/av-fusion/early
    python -m experiments.summarize runs/av-fusion/* --keys test_accuracy_both test_accuracy_image_only \\
        test_accuracy_audio_only --plot runs/av-fusion/comparison.png
"""

from __future__ import annotations

import torch
from torch import nn

from experiments.common import (AV_DIGITS, AV_MODALITIES, DIGIT_CLASSES, Degradation, add_av_adapter_args,
                                add_data_args, add_degradation_args, av_audio_adapter, av_image_adapter,
                                av_model_inputs, build_encoder, build_parser, check_args, check_av_adapter_args,
                                classifier, confusion_metrics, ensure_shards, eval_generator, per_rank_seed,
                                run_summary, start_run, train_on_shards)
from perceiver.adapters import MultimodalAdapter
from perceiver.data import make_loader
from perceiver.fusion import HybridFusionClassifier, LateFusionClassifier, drop_modalities
from perceiver.training.distributed import all_reduce_sum
from perceiver.training.plots import confusion_matrix

NAME = "av_fusion"
VARIANTS = ("image", "audio", "early", "late", "hybrid")
# Which modalities a test condition gives the model.
CONDITIONS = {"both": ("image", "audio"), "image_only": ("image",), "audio_only": ("audio",)}


def variant_modalities(variant: str) -> tuple[str, ...]:
    return (variant,) if variant in AV_MODALITIES else AV_MODALITIES


def build_model(args) -> nn.Module:
    """The model of ``args.variant``; every variant is called as ``model(x, pad_masks)`` with ``x`` a dict."""
    adapters = {"image": av_image_adapter, "audio": av_audio_adapter}
    kwargs = dict(num_classes=len(DIGIT_CLASSES), widening_factor=args.widening_factor, init_scale=args.init_scale)
    if args.variant in AV_MODALITIES:
        return classifier(MultimodalAdapter(adapters={args.variant: adapters[args.variant](args)}), args, **kwargs)
    if args.variant == "early":
        return classifier(MultimodalAdapter(adapters={name: adapters[name](args) for name in AV_MODALITIES}), args,
                          **kwargs)
    if args.variant == "late":
        return LateFusionClassifier(models={name: classifier(adapters[name](args), args, **kwargs)
                                            for name in AV_MODALITIES}, weighting="learned")
    built = {name: adapters[name](args) for name in AV_MODALITIES}
    encoders = {name: build_encoder(args, adapter.num_channels, widening_factor=args.widening_factor,
                                    init_scale=args.init_scale)
                for name, adapter in built.items()}
    return HybridFusionClassifier(adapters=built, encoders=encoders, num_classes=len(DIGIT_CLASSES),
                                  num_fusion_layers=args.num_fusion_layers,
                                  num_fusion_heads=args.num_self_attention_heads, init_scale=args.init_scale)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=2500, batch_size=64, lr=2e-3, weight_decay=0.05, num_latents=16, num_latent_channels=64,
        num_cross_attention_heads=2, num_self_attention_heads=4, num_self_attention_layers=2, eval_every=500,
        checkpoint_every=500))
    parser.add_argument("--variant", choices=VARIANTS, required=True, help="the model to train (see above)")
    add_data_args(parser, "av-digits")
    parser.add_argument("--modality-dropout", type=float, default=0.5,
                        help="fusion variants: probability that a sample loses each modality in training")
    parser.add_argument("--num-fusion-layers", type=int, default=2, help="hybrid: shared self-attention layers")
    parser.add_argument("--branch-loss", type=float, default=1.0,
                        help="late: weight of each branch's own classification loss (0 = the fused loss alone)")
    parser.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    parser.add_argument("--init-scale", type=float, default=None,
                        help="fixed std of the initial weights (default: the package's fan-in scaled initialisation)")
    add_av_adapter_args(parser)
    add_degradation_args(parser, image_noise=0.35, occlusion=12, audio_snr_db=-10.0)
    args = parser.parse_args(argv)
    check_args(parser, args)
    check_av_adapter_args(parser, args)
    if args.branch_loss < 0:
        parser.error(f"--branch-loss: expected a weight >= 0, got {args.branch_loss}")
    if not 0 <= args.modality_dropout < 1:
        parser.error(f"--modality-dropout: expected a probability in [0, 1), got {args.modality_dropout}")

    run = start_run(args, name=NAME)
    shards = ensure_shards(AV_DIGITS, args.data, ("train", "test"), limit=args.limit, seed=args.seed)
    model = build_model(args)
    per_rank_seed(args.seed, run.context.rank)
    device = run.context.device
    modalities = variant_modalities(args.variant)
    degradation = Degradation.from_args(args)
    fusing = len(modalities) > 1

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        x, pad_masks = av_model_inputs(batch, modalities, device, degradation)
        if fusing and args.modality_dropout:
            x = drop_modalities(x, list(modalities), args.modality_dropout)
        labels = batch["label"].to(device)
        if args.variant == "late" and args.branch_loss:
            logits, branches = model(x, pad_masks, return_branches=True)
            loss = nn.functional.cross_entropy(logits.float(), labels)
            for log_probs, present in branches.values():  # each branch also learns to classify alone
                if present.any():
                    loss = loss + args.branch_loss * nn.functional.nll_loss(log_probs[present].float(), labels[present])
        else:
            logits = model(x, pad_masks).float()
            loss = nn.functional.cross_entropy(logits, labels)
        return loss, {"accuracy": (logits.argmax(dim=1) == labels).float().mean()}

    conditions = {name: given for name, given in CONDITIONS.items() if set(given) <= set(modalities)}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        generator = eval_generator(args.seed)
        counts = {name: torch.zeros(len(DIGIT_CLASSES), len(DIGIT_CLASSES), dtype=torch.int64, device=device)
                  for name in conditions}
        for batch in make_loader(shards["test"], batch_size=250, mode="epoch", shuffle=False,
                                 num_workers=args.num_workers):
            x, pad_masks = av_model_inputs(batch, AV_MODALITIES, device, degradation, generator)
            labels = batch["label"].to(device)
            for name, given in conditions.items():
                logits = model({key: x[key] for key in given}, {key: v for key, v in pad_masks.items() if key in given})
                counts[name] += confusion_matrix(logits.argmax(dim=1), labels, num_classes=len(DIGIT_CLASSES))
        metrics = {}
        for name, count in counts.items():
            metrics.update(confusion_metrics(all_reduce_sum(count), list(DIGIT_CLASSES), prefix=f"{name}/",
                                             figure=run.tracker.saves_figures and name == "both"))
        return metrics

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate)
    if run.context.is_main:
        model.save_pretrained(run.out / "model")
    reported = {f"test_accuracy_{name}": result.eval_metrics.get(f"{name}/accuracy", float("nan"))
                for name in conditions}
    return run.finish({
        "variant": args.variant,
        **reported,
        "test_samples": int(result.eval_metrics.get(f"{next(iter(conditions))}/samples", 0)),
        "degradation": degradation.describe(),
        "modality_dropout": args.modality_dropout if fusing else 0.0,
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
