"""``python -m perceiver``: build a small Perceiver IO over bytes and train it briefly on a toy task.

The task: each text is random lowercase letters with one of four keywords hidden at a random place; the model
says which keyword. Texts have different lengths, so every batch is padded and masked. The demo prints the
model's size, the time of one training step, and the loss and accuracy as it learns. It uses as many CPU threads
as there are free cores (``perceiver.threads``; ``--threads`` or ``OMP_NUM_THREADS`` choose). The encoder's own
defaults (256 latents × 256 channels, 3.03 M parameters here) are ``--num-latents 256 --num-latent-channels 256``,
about 8 times slower a step on a CPU.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch import nn
from tqdm import tqdm

from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO
from perceiver.adapters import ByteAdapter, ClassificationOutput, ClassificationQuery
from perceiver.threads import set_threads

KEYWORDS = ("cat", "dog", "owl", "fox")


def toy_batch(adapter: ByteAdapter, batch_size: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    texts, labels = [], []
    for _ in range(batch_size):
        label = rng.randrange(len(KEYWORDS))
        letters = [rng.choice("abeghijklmnpqrsuvyz") for _ in range(rng.randint(16, 96))]  # no keyword letters
        at = rng.randint(0, len(letters))
        texts.append("".join(letters[:at]) + KEYWORDS[label] + "".join(letters[at:]))
        labels.append(label)
    ids, _ = adapter.encode(texts)
    return ids, torch.tensor(labels)


def default_model(*, num_latents: int, num_latent_channels: int) -> PerceiverIO:
    adapter = ByteAdapter(max_length=2048, embed_channels=256)
    return PerceiverIO(
        input_adapter=adapter,
        encoder=PerceiverEncoder(
            num_input_channels=adapter.num_channels, num_latents=num_latents, num_latent_channels=num_latent_channels
        ),
        decoder=PerceiverDecoder(
            query_provider=ClassificationQuery(num_channels=num_latent_channels),
            output_adapter=ClassificationOutput(num_channels=num_latent_channels, num_classes=len(KEYWORDS)),
            num_latent_channels=num_latent_channels,
        ),
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m perceiver", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-latents", type=int, default=64, help="N, the latent array's length (default 64)")
    parser.add_argument("--num-latent-channels", type=int, default=128,
                        help="D, the latent array's width (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: OMP_NUM_THREADS if set, else the cores free now)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps and --batch-size: expected positive ints, got {args.steps} and {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected a positive int, got {args.threads}")
    threads, why = set_threads(args.threads)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = default_model(num_latents=args.num_latents, num_latent_channels=args.num_latent_channels)
    adapter = model.input_adapter
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Perceiver IO over bytes: {parameters / 1e6:.2f} M parameters, {args.num_latents} latents × "
          f"{args.num_latent_channels} channels, {threads} CPU thread(s) ({why})")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    step_seconds, correct, seen = [], 0, 0
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for step in progress:
        ids, labels = toy_batch(adapter, args.batch_size, rng)
        start = time.perf_counter()
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_seconds.append(time.perf_counter() - start)
        if step >= args.steps - 20:  # accuracy over the last 20 training batches, each seen before its update
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    median_step = sorted(step_seconds)[len(step_seconds) // 2]
    accuracy = correct / seen
    print(f"median train step: {median_step * 1000:.0f} ms at batch {args.batch_size} (texts of 19–99 bytes)")
    print(f"final loss {loss.item():.3f}; accuracy over the last {seen} training texts {accuracy:.1%} "
          f"(chance {1 / len(KEYWORDS):.0%})")
    return {"parameters": parameters, "median_step_seconds": median_step, "final_loss": loss.item(), "accuracy": accuracy}


if __name__ == "__main__":
    main()
