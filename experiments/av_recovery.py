"""Missing-modality recovery on audio-visual digits: a multimodal Perceiver IO autoencoder with modality dropout.

The input is an MNIST image, a spoken digit of the same class and the class label (``MultimodalAdapter`` over
``PatchAdapter``, ``SpectrogramAdapter`` and ``LabelAdapter``). Every training sample loses each modality with
probability ``--modality-dropout`` (never all three), and the model must still reconstruct all of them: the image
pixel by pixel, the audio as its log-mel spectrogram frame by frame, and the label. Reconstruction queries
(``ReconstructionQueries``) ask for a random subset of the output points each step (``--image-points``,
``--audio-points``); evaluation asks for all of them.

Evaluation on the held-out test pairs (images and voices never seen in training):

- image from audio alone (and, for reference, from the image alone and from both): PSNR against the original, and
  the accuracy of an independent image classifier (trained here on the clean training images first, or loaded with
  ``--image-classifier DIR``) on the reconstructions, i.e. how recognisable the recovered image is;
- audio from the image alone: PSNR of the log-mel spectrogram (peak = the range of each original spectrogram);
- baselines that put the PSNR in proportion: the training set's mean image, and the mean image of the true class
  (the best a reconstruction that knows the digit but nothing else about the image could do on average);
- a picture grid of originals and reconstructions, saved as ``reconstructions.png`` and logged to wandb::

    python -m experiments.av_recovery --out runs/av-recovery
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from experiments.common import (AV_DIGITS, DIGIT_CLASSES, MNIST_MEAN, MNIST_SIZE, MNIST_STD, add_av_adapter_args,
                                add_data_args, av_audio_adapter, av_image_adapter, build_encoder, build_parser,
                                check_args, check_av_adapter_args, classifier, crop_audio, ensure_shards,
                                loader_batches, per_rank_seed, run_summary, start_run, train_on_shards)
from perceiver import PerceiverDecoder, PerceiverIO
from perceiver.adapters import (LabelAdapter, MultimodalAdapter, ReconstructionOutput, ReconstructionQueries,
                                gather_output_points, sample_output_index)
from perceiver.data import make_loader
from perceiver.fusion import drop_modalities
from perceiver.training import TrainConfig, train

NAME = "av_recovery"
MODALITIES = ("image", "audio", "label")
IMAGE_POINTS = MNIST_SIZE * MNIST_SIZE
# What each condition of the evaluation gives the model.
CONDITIONS = {"from_audio": ("audio",), "from_image": ("image",), "from_both": ("image", "audio")}


def build_model(args) -> Autoencoder:
    audio = av_audio_adapter(args)
    adapters = {"image": av_image_adapter(args), "audio": audio,
                "label": LabelAdapter(num_classes=len(DIGIT_CLASSES), num_channels=args.embed_channels)}
    input_adapter = MultimodalAdapter(adapters=adapters)
    channels = args.num_latent_channels
    queries = ReconstructionQueries(
        output_shapes={"image": [MNIST_SIZE, MNIST_SIZE], "audio": [audio.num_frames(audio.max_samples)],
                       "label": [1]},
        num_bands=args.query_bands, modality_channels=16, num_channels=channels)
    # One linear head serves the three modalities: an image point reads its first value (a pixel), an audio point its
    # first n_mels values (a frame), the label point its first 10 (class logits).
    output = ReconstructionOutput(num_channels=channels, num_values=max(1, args.n_mels, len(DIGIT_CLASSES)))
    return Autoencoder(PerceiverIO(
        input_adapter=input_adapter,
        encoder=build_encoder(args, input_adapter.num_channels, widening_factor=args.widening_factor,
                              init_scale=args.init_scale),
        decoder=PerceiverDecoder(query_provider=queries, output_adapter=output, num_latent_channels=channels,
                                 num_cross_attention_heads=args.num_decoder_heads,
                                 cross_attention_widening_factor=args.widening_factor, init_scale=args.init_scale),
    ))


class Autoencoder(nn.Module):
    """The Perceiver IO encoded once and decoded for several modalities: ``forward(x, pad_masks, output_indices)``.

    ``output_indices`` maps each modality to decode to its output points (None = all); returns ``{modality: values}``
    with each modality's own width (its slice of the shared head). One module call, so DDP sees the whole step.
    """

    def __init__(self, perceiver: PerceiverIO):
        super().__init__()
        self.perceiver = perceiver
        self.widths = {"image": 1, "audio": perceiver.input_adapter.adapters["audio"].n_mels, "label": len(DIGIT_CLASSES)}

    def forward(self, x: dict, pad_masks: dict, output_indices: dict) -> dict[str, torch.Tensor]:
        tokens, pad_mask = self.perceiver.input_adapter(x, pad_masks)
        latents = self.perceiver.encoder(tokens, pad_mask)
        return {modality: self.perceiver.decoder(latents, tokens=tokens, pad_mask=pad_mask, modality=modality,
                                                 output_index=index)[..., : self.widths[modality]]
                for modality, index in output_indices.items()}


def inputs_and_targets(model: Autoencoder, batch: dict, device: torch.device) -> tuple[dict, dict, dict]:
    """Model inputs ``(x, pad_masks)`` of all modalities and the targets: standardised pixels (B, 784, 1), log-mel
    frames (B, F, n_mels) with their pad mask (B, F), labels (B,)."""
    images = batch["image"].to(device)
    standardised = (images - MNIST_MEAN) / MNIST_STD
    audio, audio_pad = crop_audio(batch["audio"], batch["audio_pad_mask"])
    audio, audio_pad = audio.to(device), audio_pad.to(device)
    labels = batch["label"].to(device)
    perceiver = getattr(model, "module", model).perceiver  # DDP wraps the model in training
    log_mel, frame_pad = perceiver.input_adapter.adapters["audio"].log_mel(audio, audio_pad)
    frames = perceiver.decoder.query_provider.num_points("audio")
    log_mel = nn.functional.pad(log_mel, (0, 0, 0, frames - log_mel.shape[1]))
    frame_pad = nn.functional.pad(frame_pad, (0, frames - frame_pad.shape[1]), value=True)
    x = {"image": standardised, "audio": audio, "label": labels}
    targets = {"image": standardised.flatten(1)[..., None], "audio": log_mel, "audio_pad": frame_pad,
               "label": labels}
    return x, {"audio": audio_pad}, targets


def pixels(standardised: torch.Tensor) -> torch.Tensor:
    """Decoded standardised pixels (B, 784, 1) → images (B, 1, 28, 28) in [0, 1]."""
    return (standardised[..., 0] * MNIST_STD + MNIST_MEAN).clamp(0, 1).reshape(-1, 1, MNIST_SIZE, MNIST_SIZE)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor, peak: torch.Tensor | float,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample PSNR (B,) in dB: 10 log10(peak² / MSE) over each sample's values (those where ``mask`` is False).

    ``peak`` is a number or one per sample (B,).
    """
    error = (reconstruction - target) ** 2
    keep = torch.ones_like(error) if mask is None else (~mask).to(error.dtype).expand_as(error)
    mse = (error * keep).flatten(1).sum(dim=1) / keep.flatten(1).sum(dim=1).clamp(min=1)
    return 10 * torch.log10(torch.as_tensor(peak, dtype=mse.dtype) ** 2 / mse.clamp(min=1e-10))


def train_image_classifier(args, shards, device, out: Path) -> PerceiverIO:
    """The independent judge: a Perceiver IO classifier of clean images, trained on the training images only."""
    model = classifier(av_image_adapter(args), args, num_classes=len(DIGIT_CLASSES),
                       widening_factor=args.widening_factor, init_scale=args.init_scale)

    def loss_fn(model, batch):
        logits = model(((batch["image"] - MNIST_MEAN) / MNIST_STD).to(device)).float()
        labels = batch["label"].to(device)
        return nn.functional.cross_entropy(logits, labels), {"accuracy": (logits.argmax(1) == labels).float().mean()}

    config = TrainConfig(max_steps=args.classifier_steps, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_steps=args.classifier_steps // 10, resume=args.resume, progress=not args.no_progress,
                         log_every=args.log_every)
    train(model, config=config, loss_fn=loss_fn, out_dir=out, device=device,
          make_batches=loader_batches(shards, batch_size=args.batch_size, seed=args.seed + 1, drop_last=True,
                                      num_workers=args.num_workers))
    model.save_pretrained(out / "model")
    return model.eval()


def mean_images(shards, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images' mean (1, 28, 28) and per-class means (10, 1, 28, 28)."""
    sums = torch.zeros(len(DIGIT_CLASSES), 1, MNIST_SIZE, MNIST_SIZE, device=device)
    counts = torch.zeros(len(DIGIT_CLASSES), device=device)
    for batch in make_loader(shards, batch_size=500, mode="epoch", shuffle=False):
        sums.index_add_(0, batch["label"].to(device), batch["image"].to(device))
        counts += torch.bincount(batch["label"].to(device), minlength=len(DIGIT_CLASSES))
    return sums.sum(0) / counts.sum(), sums / counts.clamp(min=1)[:, None, None, None]


def reconstruction_figure(originals: torch.Tensor, rows: dict[str, torch.Tensor]):
    """A grid: the originals in the first row, then one row of reconstructions per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = {"original": originals, **rows}
    figure, axes = plt.subplots(len(named), len(originals), figsize=(len(originals) * 0.9, len(named) * 1.0),
                                squeeze=False)
    for row, (title, images) in enumerate(named.items()):
        for column, image in enumerate(images):
            axis = axes[row, column]
            axis.imshow(image[0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(title.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=2000, batch_size=64, lr=2e-3, weight_decay=0.05, num_latents=32, num_latent_channels=96,
        num_cross_attention_heads=2, num_self_attention_heads=4, num_self_attention_layers=3, eval_every=1000,
        checkpoint_every=500))
    add_data_args(parser, "av-digits")
    parser.add_argument("--modality-dropout", type=float, default=0.5,
                        help="probability that a training sample loses each modality (never all)")
    parser.add_argument("--image-points", type=int, default=256, help="pixels decoded per image in training")
    parser.add_argument("--audio-points", type=int, default=48, help="log-mel frames decoded per clip in training")
    parser.add_argument("--label-weight", type=float, default=0.5, help="weight of the label's cross-entropy")
    parser.add_argument("--query-bands", type=int, default=8, help="Fourier bands of the reconstruction queries")
    parser.add_argument("--num-decoder-heads", type=int, default=2, help="heads of the decoder's cross-attention")
    parser.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    parser.add_argument("--init-scale", type=float, default=None,
                        help="fixed std of the initial weights (default: the package's fan-in scaled initialisation)")
    parser.add_argument("--classifier-steps", type=int, default=800, help="steps of the independent image classifier")
    parser.add_argument("--image-classifier", type=Path, default=None,
                        help="a saved image classifier (save_pretrained folder) to use instead of training one")
    parser.add_argument("--grid-size", type=int, default=10, help="test samples in the picture grid")
    add_av_adapter_args(parser)
    args = parser.parse_args(argv)
    check_args(parser, args)
    check_av_adapter_args(parser, args)
    if not 0 <= args.modality_dropout < 1:
        parser.error(f"--modality-dropout: expected a probability in [0, 1), got {args.modality_dropout}")
    if not 1 <= args.image_points <= IMAGE_POINTS:
        parser.error(f"--image-points: expected an int in [1, {IMAGE_POINTS}], got {args.image_points}")

    run = start_run(args, name=NAME)
    shards = ensure_shards(AV_DIGITS, args.data, ("train", "test"), limit=args.limit, seed=args.seed)
    device = run.context.device
    model = build_model(args)
    frames = model.perceiver.decoder.query_provider.num_points("audio")
    if not 1 <= args.audio_points <= frames:
        parser.error(f"--audio-points: expected an int in [1, {frames}], got {args.audio_points}")
    per_rank_seed(args.seed, run.context.rank)

    if args.image_classifier is not None:
        judge = PerceiverIO.from_pretrained(args.image_classifier, device=str(device)).eval()
    else:
        judge = train_image_classifier(args, shards["train"], device, run.out / "image_classifier")
    mean_image, class_means = mean_images(shards["train"], device)

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        x, pad_masks, targets = inputs_and_targets(model, batch, device)
        x = drop_modalities(x, list(MODALITIES), args.modality_dropout)
        batch_size = len(targets["label"])
        image_index = sample_output_index(IMAGE_POINTS, args.image_points, batch_size=batch_size, device=device)
        audio_index = sample_output_index(frames, args.audio_points, batch_size=batch_size, device=device)
        decoded = model(x, pad_masks, {"image": image_index, "audio": audio_index, "label": None})
        image_target = gather_output_points(targets["image"], image_index)
        image_loss = nn.functional.mse_loss(decoded["image"].float(), image_target)
        audio_error = (decoded["audio"].float() - gather_output_points(targets["audio"], audio_index)) ** 2
        real = ~torch.gather(targets["audio_pad"], 1, audio_index)
        audio_loss = audio_error.mean(dim=-1)[real].mean()
        logits = decoded["label"][:, 0].float()
        label_loss = nn.functional.cross_entropy(logits, targets["label"])
        loss = image_loss + audio_loss + args.label_weight * label_loss
        return loss, {"image_mse": image_loss, "audio_mse": audio_loss, "label_loss": label_loss}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        sums: dict[str, float] = {}
        seen = 0
        grid_originals, grid_rows = [], {f"image_{name}": [] for name in CONDITIONS}
        for batch in make_loader(shards["test"], batch_size=250, mode="epoch", shuffle=False,
                                 num_workers=args.num_workers):
            x, pad_masks, targets = inputs_and_targets(model, batch, device)
            originals, labels = batch["image"].to(device), targets["label"]
            seen += len(labels)

            def add(key: str, values: torch.Tensor) -> None:
                sums[key] = sums.get(key, 0.0) + float(values.float().sum())

            for condition, given in CONDITIONS.items():
                decoded = model({name: x[name] for name in given},
                                {name: mask for name, mask in pad_masks.items() if name in given},
                                {"image": None, "audio": None, "label": None})
                images = pixels(decoded["image"])
                add(f"image_{condition}_psnr", psnr(images, originals, 1.0))
                judged = judge((images - MNIST_MEAN) / MNIST_STD).argmax(1)
                add(f"image_{condition}_judged_accuracy", judged == labels)
                add(f"label_{condition}_accuracy", decoded["label"][:, 0].argmax(1) == labels)
                if condition == "from_image":
                    log_mel, frame_pad = decoded["audio"], targets["audio_pad"][..., None]
                    target = targets["audio"]
                    real = ~frame_pad
                    peak = (target.masked_fill(~real, -math.inf).amax(dim=(1, 2))
                            - target.masked_fill(~real, math.inf).amin(dim=(1, 2)))
                    add("audio_from_image_psnr", psnr(log_mel, target, peak, frame_pad))
                if len(grid_originals) < args.grid_size:
                    take = args.grid_size - len(grid_originals)
                    grid_rows[f"image_{condition}"] += list(images[:take])
            if len(grid_originals) < args.grid_size:
                grid_originals += list(originals[: args.grid_size - len(grid_originals)])
            add("baseline_mean_image_psnr", psnr(mean_image.expand_as(originals), originals, 1.0))
            add("baseline_class_mean_psnr", psnr(class_means[labels], originals, 1.0))
            add("judge_accuracy_on_originals", judge(x["image"]).argmax(1) == labels)
        metrics = {key: value / max(1, seen) for key, value in sums.items()}
        metrics["samples"] = seen
        if run.context.is_main:  # the latest grid is kept as a PNG, and goes to wandb and figures/ with the metrics
            figure = reconstruction_figure(torch.stack(grid_originals),
                                           {name: torch.stack(images) for name, images in grid_rows.items()})
            figure.savefig(run.out / "reconstructions.png", dpi=120)
            metrics["reconstructions"] = figure
        return metrics

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate)
    if run.context.is_main:
        model.perceiver.save_pretrained(run.out / "model")
    final = result.eval_metrics
    return run.finish({
        **{f"test_{key}": value for key, value in final.items() if key not in ("samples", "reconstructions")},
        "test_samples": int(final.get("samples", 0)),
        "modality_dropout": args.modality_dropout,
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
