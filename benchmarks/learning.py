"""Accuracy against training wall-clock on Fashion-MNIST: our Perceiver IO beside Hugging Face's and lucidrains'
Perceivers and a small CNN, every model under the same recipe and the same time budget.

    python -m benchmarks.learning --minutes 10           # the full comparison (committed: results/learning*/)
    python -m benchmarks.learning --quick --out /tmp/l   # a smoke run of every model (CI)

The same for every model: the Fashion-MNIST shards of ``perceiver.data`` (60,000 training images, the 10,000 test
images), standardised pixels, the augmentation of the experiments (horizontal flips of half the images;
``--max-shift`` adds random shifts, ``--no-flip`` drops the flips: ``perceiver.augment.shift_and_flip``), batches
of 128 drawn by one seeded generator, AdamW (lr 1e-3, weight decay 0.05 on matrices), gradient clipping at 1, label
smoothing 0.1, and a linear warm-up over the first 3% of the budget followed by a cosine decay to a tenth over the
rest, both on the training clock. Each model trains in its own process on one thread (``--parallel``
processes at a time, one per core; a core that no model is left to use runs a ballast loop of matrix products, so
that every model shares the machine alike); the clock counts training steps only, and the whole test split is
scored at ``--evals`` evenly spaced points of the budget.

Models (Perceivers at one size: 32 latents of 128 channels, 2 latent self-attention layers, 4 heads, MLPs twice as
wide; each implementation with its own input preprocessing and its own initialisation):

- ``ours``: ``perceiver`` with its default initialisation and a ``ConvAdapter`` (3×3 convolutions of 32, 64 and 128
  channels, the first two each followed by a 2×2 max-pool: 7×7 tokens with Fourier positions), as
  ``python -m experiments.fashion_mnist``;
- ``ours-patches``: the same core over linear 4×4 patch embeddings (``PatchAdapter``);
- ``hf-learned``, ``hf-fourier``, ``hf-conv``: transformers' ``PerceiverModel`` with the three image preprocessors of
  its ``PerceiverForImageClassification{Learned,Fourier,ConvProcessing}`` (a 1×1 convolution and learned positions
  on 784 pixels; raw pixels with Fourier features; a 7×7 convolution and max-pooling down to 7×7 with Fourier
  features) and its classification decoder;
- ``perceiver-pytorch``: lucidrains' ``Perceiver`` over the 784 pixels with its Fourier features;
- ``cnn``: two 3×3 convolutions (32 and 64 channels, batch norm, ReLU, 2×2 max-pooling) and a linear classifier,
  50 k parameters: the reference any image model should match.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MODELS = ("ours", "ours-patches", "hf-learned", "hf-fourier", "hf-conv", "perceiver-pytorch", "cnn")
PERCEIVERS = ("hf-learned", "hf-fourier", "hf-conv", "perceiver-pytorch")
MEAN, STD = 0.286, 0.353  # of the training images' pixels
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Recipe:
    """What every model shares."""

    minutes: float
    evals: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.03
    min_lr_ratio: float = 0.1
    label_smoothing: float = 0.1
    max_shift: int = 0  # flips alone, as python -m experiments.fashion_mnist
    flip: bool = True
    grad_clip: float = 1.0
    num_latents: int = 32
    latent_channels: int = 128
    layers: int = 2  # as python -m experiments.fashion_mnist
    heads: int = 4
    widening: int = 2
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0


# --- the models -----------------------------------------------------------------------------------------------------


def build_ours(recipe: Recipe, stem: str):
    from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO
    from perceiver.adapters import ClassificationOutput, ClassificationQuery, ConvAdapter, PatchAdapter

    if stem == "conv":
        adapter = ConvAdapter(in_channels=1, max_size=(28, 28), channels=(32, 64, 128), strides=(2, 2, 1),
                              downsample="pool", num_bands=8)
    else:
        adapter = PatchAdapter(in_channels=1, max_size=(28, 28), patch_size=4, embed_channels=128, num_bands=8)
    width = recipe.latent_channels
    return PerceiverIO(
        input_adapter=adapter,
        encoder=PerceiverEncoder(
            num_input_channels=adapter.num_channels, num_latents=recipe.num_latents, num_latent_channels=width,
            num_cross_attention_heads=recipe.heads, num_self_attention_heads=recipe.heads,
            num_self_attention_layers_per_block=recipe.layers, cross_attention_widening_factor=recipe.widening,
            self_attention_widening_factor=recipe.widening,
        ),
        decoder=PerceiverDecoder(
            query_provider=ClassificationQuery(num_channels=width),
            output_adapter=ClassificationOutput(num_channels=width, num_classes=10),
            num_latent_channels=width,
        ),
    )


def build_transformers(recipe: Recipe, prep: str):
    """transformers' Perceiver with the preprocessor of one of its three image classification models."""
    from torch import nn
    from transformers import PerceiverConfig, PerceiverModel
    from transformers.models.perceiver.modeling_perceiver import (PerceiverClassificationDecoder,
                                                                  PerceiverImagePreprocessor)

    config = PerceiverConfig(
        num_latents=recipe.num_latents, d_latents=recipe.latent_channels, num_blocks=1,
        num_self_attends_per_block=recipe.layers, num_self_attention_heads=recipe.heads,
        num_cross_attention_heads=recipe.heads, self_attention_widening_factor=recipe.widening,
        cross_attention_widening_factor=recipe.widening, attention_probs_dropout_prob=0.0, num_labels=10,
        image_size=28,
        # Cross-attention queries and keys as wide as the latents (as ours): "kv" would take the input's width,
        # which four heads do not divide here.
        cross_attention_shape_for_attention="q",
    )
    fourier = dict(concat_pos=True, max_resolution=(28, 28), num_bands=8, sine_only=False)
    if prep == "learned":
        preprocessor = PerceiverImagePreprocessor(
            config, prep_type="conv1x1", spatial_downsample=1, out_channels=128, position_encoding_type="trainable",
            concat_or_add_pos="concat", project_pos_dim=128, in_channels=1,
            trainable_position_encoding_kwargs=dict(num_channels=128, index_dims=28 * 28))
    elif prep == "fourier":
        preprocessor = PerceiverImagePreprocessor(config, prep_type="pixels", spatial_downsample=1, in_channels=1,
                                                  fourier_position_encoding_kwargs=fourier)
    else:
        preprocessor = PerceiverImagePreprocessor(
            config, prep_type="conv", spatial_downsample=4, position_encoding_type="fourier", in_channels=1,
            out_channels=128, fourier_position_encoding_kwargs={**fourier, "max_resolution": (7, 7)})
    config.d_model = preprocessor.num_channels
    decoder = PerceiverClassificationDecoder(
        config, num_channels=config.d_latents, use_query_residual=True,
        trainable_position_encoding_kwargs=dict(num_channels=config.d_latents, index_dims=1))
    model = PerceiverModel(config, input_preprocessor=preprocessor, decoder=decoder)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(inputs=images).logits

    return Classifier()


def build_perceiver_pytorch(recipe: Recipe):
    from perceiver_pytorch import Perceiver
    from torch import nn

    model = Perceiver(
        input_channels=1, input_axis=2, num_freq_bands=8, max_freq=14.0, depth=1, num_latents=recipe.num_latents,
        latent_dim=recipe.latent_channels, cross_heads=recipe.heads, latent_heads=recipe.heads,
        cross_dim_head=recipe.latent_channels // recipe.heads, latent_dim_head=recipe.latent_channels // recipe.heads,
        num_classes=10, self_per_cross_attn=recipe.layers, attn_dropout=0.0, ff_dropout=0.0,
    )

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images.permute(0, 2, 3, 1))  # it takes channels-last data

    return Classifier()


def build_cnn():
    from torch import nn

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 7 * 7, 10))


def build_model(name: str, recipe: Recipe):
    if name in ("ours", "ours-patches"):
        return build_ours(recipe, "conv" if name == "ours" else "patches")
    if name.startswith("hf-"):
        return build_transformers(recipe, name[3:])
    if name == "perceiver-pytorch":
        return build_perceiver_pytorch(recipe)
    if name == "cnn":
        return build_cnn()
    raise ValueError(f"model: expected one of {MODELS}, got {name!r}")


# --- one model's run (in its own process) ---------------------------------------------------------------------------


def load_split(data: Path, split: str, limit: int | None):
    """All images (N, 1, 28, 28) standardised, and labels (N,), of a split's shards."""
    import torch

    from perceiver.data import find_shards, make_loader

    images, labels = [], []
    for batch in make_loader(find_shards(data, "fashion-mnist", split), batch_size=1000, mode="epoch",
                             shuffle=False):
        images.append(batch["image"])
        labels.append(batch["label"])
    images, labels = torch.cat(images)[:limit], torch.cat(labels)[:limit]
    return (images - MEAN) / STD, labels


def lr_factor(seconds: float, budget: float, recipe: Recipe) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of the budget, then half a cosine down to ``min_lr_ratio``."""
    warmup = recipe.warmup_fraction * budget
    if seconds < warmup:
        return max(seconds / warmup, 1e-3)
    progress = min(1.0, (seconds - warmup) / max(budget - warmup, 1e-9))
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_one(name: str, recipe: Recipe, data: Path) -> dict:
    import torch
    import torch.nn.functional as F

    from perceiver.augment import shift_and_flip

    torch.set_num_threads(1)
    train_images, train_labels = load_split(data, "train", recipe.train_limit)
    test_images, test_labels = load_split(data, "test", recipe.test_limit)
    torch.manual_seed(recipe.seed)
    model = build_model(name, recipe)
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": recipe.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=recipe.lr)
    generator = torch.Generator().manual_seed(recipe.seed)
    budget = 60.0 * recipe.minutes
    eval_at = [budget * (k + 1) / recipe.evals for k in range(recipe.evals)]

    @torch.no_grad()
    def accuracy() -> float:
        model.eval()
        hits = sum(int((model(test_images[i:i + 500]).argmax(1) == test_labels[i:i + 500]).sum())
                   for i in range(0, len(test_images), 500))
        model.train()
        return hits / len(test_images)

    curve, seconds, steps = [], 0.0, 0
    model.train()
    while eval_at:
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(seconds, budget, recipe)
        index = torch.randint(len(train_images), (recipe.batch_size,), generator=generator)
        images = shift_and_flip(train_images[index], max_shift=recipe.max_shift, flip=recipe.flip,
                                generator=generator)
        loss = F.cross_entropy(model(images), train_labels[index], label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        seconds += time.perf_counter() - start
        steps += 1
        if seconds >= eval_at[0]:
            eval_at.pop(0)
            curve.append(dict(seconds=round(seconds, 2), steps=steps, accuracy=accuracy(), loss=loss.item()))
            print(json.dumps({"model": name, **curve[-1]}), file=sys.stderr, flush=True)
    return dict(model=name, parameters=sum(p.numel() for p in model.parameters()), steps=steps,
                images_per_second=steps * recipe.batch_size / seconds, accuracy=curve[-1]["accuracy"], curve=curve)


# --- the run: workers side by side, the report ----------------------------------------------------------------------


# A one-thread loop of matrix products, run in a slot that no model fills (with an odd count of models the last one
# would otherwise train with the other core idle), so that every model shares the machine as the others do, by
# construction. Whether a lone model runs faster here was not settled by measuring: the CNN made 9,979 steps alone in
# one run and 11,454 beside the ballast in another (benchmarks/results/learning-10min-alone and learning.md).
BALLAST = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def worker_command(name: str, recipe: Recipe, data: Path) -> list[str]:
    return [sys.executable, __file__, "--worker", name, "--recipe", json.dumps(asdict(recipe)), "--data", str(data)]


def ballast_command() -> list[str]:
    return [sys.executable, "-c", BALLAST]


def run_all(models: list[str], recipe: Recipe, data: Path, parallel: int, ballast: bool = True) -> list[dict]:
    """Each model in its own one-thread process, ``parallel`` at a time; results in the order of ``models``.

    With ``ballast``, a slot left free once no model waits runs ``BALLAST`` until the last model ends, so that no
    model trains with the machine to itself; a model that ran beside it says so (``"ballast": true``).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, results, loads, beside_ballast = list(models), {}, {}, [], set()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name = pending.pop(0)
                running[name] = subprocess.Popen(worker_command(name, recipe, data), stdout=subprocess.PIPE,
                                                 text=True, env=env)
            while ballast and not pending and running and len(running) + len(loads) < parallel:
                loads.append(subprocess.Popen(ballast_command(), env=env))
            if loads:
                beside_ballast.update(running)
            time.sleep(0.5)
            for name, process in list(running.items()):
                if process.poll() is None:
                    continue
                out = process.stdout.read()
                del running[name]
                results[name] = json.loads(out) if process.returncode == 0 and out.strip() else dict(
                    model=name, error=f"worker exited with status {process.returncode}")
                results[name]["ballast"] = name in beside_ballast
    finally:
        for process in [*loads, *running.values()]:
            process.kill()
            process.wait()
    return [results[name] for name in models]


def augmentation(recipe: dict) -> str:
    """The recipe's augmentation in words (reports written before ``flip`` was a choice always flipped)."""
    shifts, flips = recipe["max_shift"], recipe.get("flip", True)
    if not shifts:
        return "flips, no shifts" if flips else "no shifts or flips"
    return f"shifts ±{shifts} px" + (" and flips" if flips else ", no flips")


def markdown(report: dict) -> str:
    recipe = report["recipe"]
    lines = [
        f"# Learning benchmark: Fashion-MNIST test accuracy after {recipe['minutes']:g} min of training on one thread",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; machine: {report['machine']}; matmul rate {report['matmul_gflops']:.0f} GFLOP/s "
        "(fp32, one thread, 1024×1024)",
        f"- versions: {report['versions']}",
        f"- load average before / after: {report['load_before']} / {report['load_after']}",
        f"- recipe: batch {recipe['batch_size']}, AdamW lr {recipe['lr']:g} wd {recipe['weight_decay']:g}, warm-up "
        f"{recipe['warmup_fraction']:.0%} then cosine to {recipe['min_lr_ratio']:g}×, label smoothing "
        f"{recipe['label_smoothing']:g}, {augmentation(recipe)}; test split scored at "
        f"{recipe['evals']} points",
        "",
    ]
    fractions = [f"{(k + 1) / recipe['evals']:.0%}" for k in range(recipe["evals"])]
    lines += ["| model | parameters | steps | images/s | " + " | ".join(f"at {f}" for f in fractions)
              + " | final test accuracy |",
              "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in fractions) + " | ---: |"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | – | – | – | " + " | ".join("–" for _ in fractions) + f" | {r['error']} |")
            continue
        points = [f"{p['accuracy']:.1%}" for p in r["curve"]]
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['steps']:,} | {r['images_per_second']:.0f} | "
                     + " | ".join(points) + f" | **{r['accuracy']:.1%}** |")
    beside = [r["model"] for r in report["results"] if r.get("ballast")]
    if beside:
        lines += ["", f"{', '.join(beside)}: beside a ballast load for part of the run (a one-thread loop of matrix "
                      "products in the slot no model was left to fill), so that no model had the machine to itself."]
    summary = report.get("summary") or {}
    # two decimals: a margin near a target's threshold must not round onto it (-1.03 is not within 1 point)
    parts = [f"Ours {summary['ours']:.2%}"] if "ours" in summary else []
    if "best_peer" in summary:
        parts.append(f"best Perceiver peer {summary['best_peer']} {summary['best_peer_accuracy']:.2%} "
                     f"(ours {summary['margin_over_peer']:+.2f} points)")
    if "cnn" in summary:
        parts.append(f"CNN {summary['cnn']:.2%} (ours {summary['margin_over_cnn']:+.2f} points)")
    if len(parts) > 1:
        lines += ["", "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Accuracy against training time, on a log scale of the error (1 - accuracy), better upwards: the models a
    point apart near the top and the peers far below them are both readable on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4.5))
    errors = [0.9]  # chance on ten classes, where every curve starts
    for r in report["results"]:
        if "error" in r:
            continue
        minutes = [0.0] + [p["seconds"] / 60 for p in r["curve"]]
        curve = [0.9] + [max(1 - p["accuracy"], 1e-3) for p in r["curve"]]
        errors += curve
        axis.plot(minutes, curve, marker="o", label=r["model"], linewidth=2.5 if r["model"] == "ours" else 1.2)
    top = min(errors) * 0.8  # a little room above the best point
    axis.set_yscale("log")
    axis.set_ylim(1.0, top)  # inverted: less error higher up
    ticks = [t for t in (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.9) if t >= top]
    axis.set_yticks(ticks, [f"{1 - t:.0%}" for t in ticks])
    axis.minorticks_off()
    axis.set_xlabel("training wall-clock (minutes, one thread)")
    axis.set_ylabel("test accuracy (log scale of the error)")
    axis.set_title("Fashion-MNIST: accuracy against training time")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def matmul_gflops() -> float:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    return 2 * 1024**3 * 10 / (time.perf_counter() - start) / 1e9


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "perceiver-pytorch", "perceiver-triton"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def summarize(results: list[dict]) -> dict | None:
    """Ours against the best Perceiver peer and against the CNN, each where the run has them; None without ours."""
    by_name = {r["model"]: r["accuracy"] for r in results if "error" not in r}
    if "ours" not in by_name:
        return None
    summary = dict(ours=by_name["ours"])
    peers = {name: by_name[name] for name in PERCEIVERS if name in by_name}
    if peers:
        best_peer = max(peers, key=peers.get)
        summary.update(best_peer=best_peer, best_peer_accuracy=peers[best_peer],
                       margin_over_peer=100 * (by_name["ours"] - peers[best_peer]))
    if "cnn" in by_name:
        summary.update(cnn=by_name["cnn"], margin_over_cnn=100 * (by_name["ours"] - by_name["cnn"]))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--evals", type=int, default=5, help="test-split evaluations, evenly over the budget")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data", type=Path, default=Path("data") / "fashion-mnist",
                        help="the fashion-mnist shards (python -m perceiver.data build fashion-mnist --out DIR)")
    parser.add_argument("--parallel", type=int, default=2, help="models trained at once, one thread each")
    parser.add_argument("--ballast", action=argparse.BooleanOptionalAction, default=True,
                        help="fill a slot that no model is left to use with a loop of matrix products, so that no "
                             "model has the machine to itself")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=int, default=0,
                        help="augmentation: largest random shift in pixels (0, as python -m experiments.fashion_mnist)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="augmentation: mirror half of the training images left to right")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where learning.{md,json,png} are written")
    parser.add_argument("--quick", action="store_true", help="a few seconds per model on a subset (smoke test)")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(train_one(args.worker, Recipe(**json.loads(args.recipe)), args.data)))
        return 0
    if not args.minutes > 0 or args.evals < 1 or args.parallel < 1:
        parser.error(f"--minutes, --evals, --parallel: expected positive values, got {args.minutes}, {args.evals}, "
                     f"{args.parallel}")
    if args.max_shift < 0:
        parser.error(f"--max-shift: expected a number of pixels >= 0, got {args.max_shift}")
    shared = dict(max_shift=args.max_shift, flip=args.flip, seed=args.seed)  # the full and the quick recipe alike
    recipe = Recipe(minutes=args.minutes, evals=args.evals, **shared)
    if args.quick:
        recipe = Recipe(minutes=0.05, evals=2, batch_size=16, num_latents=8, latent_channels=32, layers=1,
                        train_limit=512, test_limit=200, **shared)
    from perceiver.data import MissingShardsError, find_shards

    try:
        find_shards(args.data, "fashion-mnist", "test")
    except MissingShardsError as error:
        parser.error(f"--data: {error}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = run_all(args.models, recipe, args.data, args.parallel, ballast=args.ballast)
    import torch

    report = dict(
        command="python -m benchmarks.learning " + " ".join(argv if argv is not None else sys.argv[1:]),
        date=time.strftime("%Y-%m-%d %H:%M"), machine=f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}", matmul_gflops=matmul_gflops(),
        versions=versions(), load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()],
        parallel=args.parallel, ballast=args.ballast, recipe=asdict(recipe), results=results,
        summary=summarize(results), torch_threads=torch.get_num_threads(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "learning.md").write_text(table)
    plot(report, args.out / "learning.png")
    print(table)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
