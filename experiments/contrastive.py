"""Contrastive joint embedding: one Perceiver IO per modality, aligned by the symmetric InfoNCE loss (CLIP style).

Two paired datasets (``--dataset``):

- ``av-digits``: an MNIST digit image (``PatchAdapter``) paired with a spoken digit of the same class
  (``SpectrogramAdapter``, one token per 4 frames across all mel bins, as in ``spoken_digits``). Test images and
  voices never occur in training. The pairs share only their class (the utterance of a pair is drawn at random from
  its digit's utterances), so retrieval is scored at the class level: a hit is a retrieved item of the query's digit.
- ``emoji``: a rendered emoji (``PatchAdapter``, RGB) paired with its Unicode name in UTF-8 bytes (``ByteAdapter``).
  Retrieval is scored at the instance level (the emoji's own caption, among all test captions) and at the group
  level (a caption of the same Unicode group, e.g. "Animals & Nature").

Each embedder is a ``PerceiverIO`` with one class query whose output layer maps to ``--embed-dim`` without a bias;
``ContrastiveModel`` normalises the embeddings and holds the learned temperature. Evaluation embeds the held-out
test pairs and reports recall@1 and @5 in both directions, zero-shot classification by the nearest class prototype
of the OTHER modality (prototypes from the training split's embeddings: test images are classified by audio or
caption prototypes and the other way round), and the chance level of every metric::

    python -m experiments.contrastive --out runs/contrastive-av-digits
    python -m experiments.contrastive --dataset emoji --out runs/contrastive-emoji
    torchrun --nproc_per_node=2 -m experiments.contrastive --out runs/contrastive-ddp
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from experiments.common import (add_data_args, build_parser, check_args, classifier, ensure_shards, per_rank_seed,
                                run_summary, start_run, train_on_shards)
from perceiver import PerceiverIO
from perceiver.adapters import ByteAdapter, PatchAdapter, SpectrogramAdapter
from perceiver.augment import add_noise, crop, delay
from perceiver.contrastive import ContrastiveModel, class_prototypes, prototype_accuracy, retrieval_recall
from perceiver.data import make_loader

NAME = "contrastive"
SAMPLE_RATE = 16000
KS = (1, 5)


@dataclass(frozen=True)
class PairedDataset:
    """What the script needs to know of a paired dataset: its two modalities, classes and image statistics."""

    name: str
    modalities: tuple[str, str]  # the image first, then the modality it is paired with
    class_names: tuple[str, ...]
    image_channels: int
    image_size: int
    image_mean: float  # of 600 training images' pixels, rounded
    image_std: float
    background: float  # the value that fills the border uncovered by a shift (before normalisation)
    patch_size: int  # default --patch-size
    instance_level: bool  # whether a test pair is unique, so that its own partner can be asked for


DATASETS = {
    "av-digits": PairedDataset(
        name="av-digits", modalities=("image", "audio"),
        class_names=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
        image_channels=1, image_size=28, image_mean=0.13, image_std=0.31, background=0.0, patch_size=4,
        instance_level=False),
    "emoji": PairedDataset(
        name="emoji", modalities=("image", "caption"),
        class_names=("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                     "Activities", "Objects", "Symbols", "Flags"),
        image_channels=3, image_size=64, image_mean=0.8, image_std=0.3, background=1.0, patch_size=8,
        instance_level=True),
}


# ------------------------------------------------------------------------------------------------------- model


def bias_free_output(embedder: PerceiverIO) -> PerceiverIO:
    """Zero and freeze the bias of the embedder's final linear map.

    A bias adds the same vector to every embedding of the modality; after L2 normalisation that shared direction
    pulls all cosine similarities towards one, which flattens the InfoNCE logits and stalls training at the start.
    The (frozen, zero) bias stays in the state dict, so the saved model loads as a plain ``PerceiverIO``.
    """
    linear = embedder.decoder.output_adapter.linear
    nn.init.zeros_(linear.bias)
    linear.bias.requires_grad_(False)
    return embedder


def build_adapter(modality: str, dataset: PairedDataset, args) -> nn.Module:
    if modality == "image":
        return PatchAdapter(in_channels=dataset.image_channels, max_size=(dataset.image_size,) * 2,
                            patch_size=args.patch_size, embed_channels=args.embed_channels, num_bands=args.num_bands)
    if modality == "audio":
        return SpectrogramAdapter(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=args.n_mels,
                                  f_max=args.f_max, max_duration=args.max_duration,
                                  patch_size=(args.patch_frames, args.n_mels), embed_channels=args.embed_channels,
                                  num_bands=args.num_bands)
    if modality == "caption":
        return ByteAdapter(max_length=args.max_caption_bytes, embed_channels=args.embed_channels)
    raise ValueError(f"modality: expected 'image', 'audio' or 'caption', got {modality!r}")


def build_model(dataset: PairedDataset, args) -> ContrastiveModel:
    embedders = {
        modality: bias_free_output(classifier(build_adapter(modality, dataset, args), args, num_classes=args.embed_dim,
                                              widening_factor=args.widening_factor, init_scale=args.init_scale))
        for modality in dataset.modalities
    }
    return ContrastiveModel(embedders=embedders, temperature=args.temperature)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# -------------------------------------------------------------------------------------------------------- inputs


def shift_images(images: Tensor, max_shift: int, *, fill: float) -> Tensor:
    """Shift each image (B, C, H, W) by up to ``max_shift`` pixels in each direction; uncovered pixels get ``fill``."""
    batch, _, height, width = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2))
    rows = offsets[:, 0, None] + torch.arange(height)
    cols = offsets[:, 1, None] + torch.arange(width)
    return padded[torch.arange(batch)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def model_inputs(batch: dict, dataset: PairedDataset, args, *, train: bool) -> tuple[dict, dict]:
    """The inputs ``(x, pad_masks)`` of ``ContrastiveModel`` from a batch, augmented when ``train``."""
    images = batch["image"].cpu()
    if train and args.image_shift:
        images = shift_images(images, args.image_shift, fill=dataset.background)
    x = {"image": (images - dataset.image_mean) / dataset.image_std}
    pad_masks = {}
    if "audio" in dataset.modalities:
        audio, pad_mask = batch["audio"].cpu(), batch["audio_pad_mask"].cpu()
        if train:
            audio, pad_mask = delay(audio, pad_mask, max_shift=round(args.audio_shift * SAMPLE_RATE))
            if not args.no_noise:
                audio = add_noise(audio, pad_mask, snr_db=args.snr_db)
        x["audio"], pad_masks["audio"] = crop(audio, pad_mask, round(args.max_duration * SAMPLE_RATE))
    if "caption" in dataset.modalities:
        x["caption"], pad_masks["caption"] = batch["text"].cpu(), batch["text_pad_mask"].cpu()
    return x, pad_masks


@torch.no_grad()
def embed_split(model: ContrastiveModel, shards, dataset: PairedDataset, args, device) -> tuple[dict, Tensor]:
    """Unit-norm embeddings ``{modality: (S, E)}`` of every sample of ``shards`` in shard order, and labels (S,).

    Every process embeds the whole split (rank 0 of world 1), so no gathering is needed under torchrun.
    """
    chunks: dict[str, list[Tensor]] = {modality: [] for modality in dataset.modalities}
    labels = []
    for batch in make_loader(shards, batch_size=250, mode="epoch", shuffle=False, num_workers=args.num_workers,
                             max_text_bytes=args.max_caption_bytes, rank=0, world_size=1):
        x, pad_masks = model_inputs(batch, dataset, args, train=False)
        embeddings = model({k: v.to(device) for k, v in x.items()}, {k: v.to(device) for k, v in pad_masks.items()})
        for modality, embedding in embeddings.items():
            chunks[modality].append(embedding.float().cpu())
        labels.append(batch["label"])
    return {modality: torch.cat(parts) for modality, parts in chunks.items()}, torch.cat(labels)


# ------------------------------------------------------------------------------------------------------- metrics


def chance_recall(query_labels: Tensor, gallery_labels: Tensor, k: int) -> float:
    """Expected recall@k of a random ranking: per query, 1 - C(G - n, k) / C(G, k) with n gallery items of its label.

    With unique labels (instance level) this is k / G.
    """
    size = len(gallery_labels)
    values, counts = gallery_labels.unique(return_counts=True)
    matches = dict(zip(values.tolist(), counts.tolist()))
    misses = [math.comb(size - matches.get(label, 0), k) / math.comb(size, k) for label in query_labels.tolist()]
    return 1.0 - sum(misses) / len(misses)


def retrieval_metrics(embeddings: dict[str, Tensor], labels: Tensor, *, level: str = "") -> dict[str, float]:
    """Recall@k both ways between the two modalities of ``embeddings`` (paired by row), and the chance level.

    ``labels`` (S,) decide what counts as a hit: the class (class level), or ``torch.arange(S)`` (instance level:
    only the query's own partner). ``level`` prefixes the keys, e.g. ``instance_image_to_caption_recall_at_1``.
    """
    first, second = embeddings
    prefix = f"{level}_" if level else ""
    metrics = {}
    for query, gallery in ((first, second), (second, first)):
        recall = retrieval_recall(embeddings[query], embeddings[gallery], labels, labels, ks=KS)
        metrics.update({f"{prefix}{query}_to_{gallery}_recall_at_{k}": value for k, value in recall.items()})
    metrics.update({f"{prefix}chance_recall_at_{k}": chance_recall(labels, labels, k) for k in KS})
    return metrics


def prototype_metrics(train_embeddings: dict[str, Tensor], train_labels: Tensor, test_embeddings: dict[str, Tensor],
                      test_labels: Tensor, num_classes: int) -> tuple[dict[str, float], Tensor]:
    """Zero-shot accuracy of each modality's test samples against the OTHER modality's training class prototypes.

    ``image_prototype_accuracy`` is that of test images classified by the nearest audio (or caption) prototype, and
    the other way round. Also returns the cosine similarity of the two modalities' prototypes (C, C).
    """
    first, second = train_embeddings
    prototypes = {modality: class_prototypes(train_embeddings[modality], train_labels, num_classes)
                  for modality in (first, second)}
    metrics = {}
    for modality, other in ((first, second), (second, first)):
        metrics[f"{modality}_prototype_accuracy"] = prototype_accuracy(test_embeddings[modality], test_labels,
                                                                       prototypes[other])
    shares = torch.bincount(test_labels, minlength=num_classes).double() / len(test_labels)
    metrics["chance_prototype_accuracy"] = 1.0 / num_classes  # a uniform guess
    metrics["majority_prototype_accuracy"] = float(shares.max())  # always the most frequent test class
    return metrics, prototypes[first] @ prototypes[second].T


def similarity_figure(similarity: Tensor, *, class_names: list[str], rows: str, columns: str):
    """A matplotlib figure of a (C, C) cosine similarity matrix between class prototypes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = len(class_names)
    figure, axes = plt.subplots(figsize=(2.0 + 0.5 * size, 1.5 + 0.5 * size))
    shown = axes.imshow(similarity.cpu().numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    axes.set_xticks(range(size), class_names, rotation=90)
    axes.set_yticks(range(size), class_names)
    axes.set_xlabel(f"{columns} prototype")
    axes.set_ylabel(f"{rows} prototype")
    for row in range(size):
        for column in range(size):
            axes.text(column, row, f"{float(similarity[row, column]):.2f}", ha="center", va="center", fontsize=6)
    figure.colorbar(shown, ax=axes, fraction=0.046)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> tuple:
    """The checked arguments and the chosen ``PairedDataset`` (per-dataset defaults filled in)."""
    parser = build_parser(__doc__.splitlines()[0], name=NAME, defaults=dict(
        max_steps=800, batch_size=128, lr=2e-3, weight_decay=0.05, num_latents=32, num_latent_channels=128,
        num_self_attention_heads=4, num_self_attention_layers=2, eval_every=0, checkpoint_every=200))
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="av-digits")
    add_data_args(parser, "<dataset>")
    parser.add_argument("--embed-dim", type=int, default=64, help="width of the joint embedding")
    parser.add_argument("--temperature", type=float, default=0.07, help="initial softmax temperature (learned)")
    parser.add_argument("--init-scale", type=float, default=None,
                        help="fixed std of the initial weights (default: the package's fan-in scaled initialisation)")
    parser.add_argument("--embed-channels", type=int, default=128, help="width of every adapter's token embedding")
    parser.add_argument("--num-bands", type=int, default=8, help="Fourier frequency bands per axis (image, audio)")
    parser.add_argument("--widening-factor", type=int, default=2, help="MLP width / attention width")
    parser.add_argument("--patch-size", type=int, default=None, help="image patch side (default: 4 av-digits, 8 emoji)")
    parser.add_argument("--image-shift", type=int, default=2, help="augmentation: largest random image shift, pixels")
    parser.add_argument("--n-mels", type=int, default=32, help="audio: mel bins")
    parser.add_argument("--f-max", type=float, default=4000.0, help="audio: highest filterbank frequency in Hz")
    parser.add_argument("--max-duration", type=float, default=1.0, help="audio: longer waveforms are cut, in seconds")
    parser.add_argument("--patch-frames", type=int, default=4, help="audio: frames (10 ms each) per token")
    parser.add_argument("--audio-shift", type=float, default=0.2, help="augmentation: longest leading silence, seconds")
    parser.add_argument("--snr-db", type=float, nargs=2, default=(10.0, 40.0), metavar=("LOW", "HIGH"),
                        help="augmentation: range of the added noise's signal-to-noise ratio in dB")
    parser.add_argument("--no-noise", action="store_true", help="augmentation: add no noise to the audio")
    parser.add_argument("--max-caption-bytes", type=int, default=80, help="captions: longer names are cut (bytes)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    dataset = DATASETS[args.dataset]
    if args.patch_size is None:
        args.patch_size = dataset.patch_size
    if dataset.image_size % args.patch_size:
        parser.error(f"--patch-size: expected a divisor of {dataset.image_size} ({args.dataset}), "
                     f"got {args.patch_size}")
    for flag in ("embed_dim", "max_caption_bytes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive int, got {getattr(args, flag)}")
    if args.image_shift < 0 or args.audio_shift < 0:
        parser.error(f"--image-shift, --audio-shift: expected values >= 0, got {args.image_shift}, {args.audio_shift}")
    if not args.temperature > 0:
        parser.error(f"--temperature: expected a positive float, got {args.temperature}")
    return args, dataset


def main(argv: list[str] | None = None) -> dict:
    args, dataset = parse_args(argv)
    run = start_run(args, name=NAME)
    shards = ensure_shards(dataset.name, args.data, ("train", "test"), limit=args.limit, seed=args.seed)
    model = build_model(dataset, args)
    per_rank_seed(args.seed, run.context.rank)
    device = run.context.device
    first, second = dataset.modalities

    def loss_fn(model: nn.Module, batch: dict) -> tuple[Tensor, dict]:
        x, pad_masks = model_inputs(batch, dataset, args, train=True)
        embeddings = model({k: v.to(device) for k, v in x.items()}, {k: v.to(device) for k, v in pad_masks.items()})
        core = unwrap(model)
        a, b = embeddings[first].float(), embeddings[second].float()
        loss = core.loss({first: a, second: b}, first, second)
        # In-batch instance accuracy: on av-digits other pairs of the same digit count as misses, so it stays low.
        pair_accuracy = ((a @ b.T).argmax(dim=1) == torch.arange(len(a), device=a.device)).float().mean()
        return loss, {"pair_accuracy": pair_accuracy, "logit_scale": core.logit_scale.detach()}

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        test, test_labels = embed_split(model, shards["test"], dataset, args, device)
        trained, train_labels = embed_split(model, shards["train"], dataset, args, device)
        metrics = retrieval_metrics(test, test_labels)
        if dataset.instance_level:
            metrics = {f"group_{key}": value for key, value in metrics.items()}
            metrics.update(retrieval_metrics(test, torch.arange(len(test_labels)), level="instance"))
        prototypes, similarity = prototype_metrics(trained, train_labels, test, test_labels, len(dataset.class_names))
        metrics.update(prototypes)
        metrics["test_pairs"] = len(test_labels)
        if run.tracker.saves_figures:
            metrics["prototype_similarity"] = similarity_figure(similarity, class_names=list(dataset.class_names),
                                                                rows=first, columns=second)
        return metrics

    result = train_on_shards(model, args, run, shards["train"], loss_fn=loss_fn, evaluate=evaluate,
                             max_text_bytes=args.max_caption_bytes)
    if run.context.is_main:
        for modality, embedder in model.embedders.items():
            embedder.save_pretrained(run.out / "model" / modality)
    return run.finish({
        "dataset": args.dataset,
        **result.eval_metrics,
        "test_pairs": int(result.eval_metrics.get("test_pairs", 0)),
        "logit_scale": float(model.logit_scale.detach()),
        **run_summary(result, model, run),
    })


if __name__ == "__main__":
    main()
