"""Train-step time and peak memory of our PerceiverIO beside Hugging Face's and lucidrains' Perceivers, in one run.

    python -m benchmarks.peers                            # configs a (CPU) and b (GPU; skipped without CUDA)
    python -m benchmarks.peers --config a --repeats 5 --warmup 2
    python -m benchmarks.peers --quick --out /tmp/bench   # tiny smoke run

A step is: forward, cross-entropy on the class logits, backward, AdamW step, on random inputs and labels; on CUDA
the forward runs under bf16 autocast, as the package's training loop runs there (fp32 on a CPU). Each
implementation lives in its own subprocess (so that its peak memory is its own); they take turns step by step
(``warmup`` rounds, then ``repeats`` timed rounds), so that all see the same machine load, and the median of each
one's timed steps is reported. Ours uses its default attention dispatch (PyTorch SDPA on CPU, the
Triton kernels on CUDA).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the rise of the process's peak resident set
(``ru_maxrss``) above its size before the model was built (parameters, optimizer state, activations, allocator
slack).

Configs (the same architecture in all three implementations; the one output query reads 10 class logits):

- ``a`` (CPU): B=16, M=4096 input tokens of 64 channels, N=256 latents of 256 channels, 6 latent self-attention layers
  with 8 heads, 1 cross-attention head with qk = v = 256 channels, MLP widening 1.
- ``b`` (GPU): Perceiver IO's ImageNet config A: 224×224 pixels with 2-D Fourier features (64 bands, 261 channels,
  M=50176), N=512, D=1024, 8 blocks × 6 self-attention layers sharing weights, 1 cross head with qk = v = 261
  channels (HF's ``"kv"`` rule), 8 self-attention heads, widening 1; at the largest batch each implementation fits
  (``--find-max-batch``) and at ``--batch``.
- ``quick``: a tiny config for a smoke test.

What cannot be made identical: lucidrains' MLPs are GEGLU (its first linear is twice as wide; we set its width
multiplier to the widening factor), its q/k/v projections have no bias, and its weight tying ties every layer, so in
config b it computes the same 48 layers with one layer's weights instead of 6. Inputs are given to all three as
precomputed tokens (pixels + Fourier features in config b): the parameter-free preprocessing is not timed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

IMPLEMENTATIONS = ("ours", "transformers", "perceiver-pytorch")


@dataclass(frozen=True)
class BenchConfig:
    batch_size: int
    num_inputs: int  # M
    input_channels: int  # C
    num_latents: int  # N
    latent_channels: int  # D
    layers_per_block: int
    num_blocks: int  # repeats of one shared block
    self_heads: int
    cross_heads: int
    cross_qk_channels: int
    widening: int
    num_classes: int
    device: str


CONFIGS = {
    "a": BenchConfig(16, 4096, 64, 256, 256, 6, 1, 8, 1, 256, 1, 10, "cpu"),
    "b": BenchConfig(8, 224 * 224, 261, 512, 1024, 6, 8, 8, 1, 261, 1, 1000, "cuda"),
    "quick": BenchConfig(2, 64, 16, 16, 32, 2, 1, 4, 1, 32, 1, 10, "cpu"),
}


# --- the three models ---------------------------------------------------------------------------------------------


def build_ours(cfg: BenchConfig):
    from torch import nn

    from perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO
    from perceiver.adapters import ClassificationOutput, ClassificationQuery, InputAdapter

    class PrecomputedTokens(InputAdapter):
        """Tokens (B, M, C) as given: the benchmark feeds every implementation the same tokens."""

        def __init__(self, *, num_channels: int):
            super().__init__()
            self.config = dict(num_channels=num_channels)
            self.num_channels = num_channels

        def forward(self, x, pad_mask=None):
            return x, pad_mask

    encoder = PerceiverEncoder(
        num_input_channels=cfg.input_channels,
        num_latents=cfg.num_latents,
        num_latent_channels=cfg.latent_channels,
        num_cross_attention_heads=cfg.cross_heads,
        num_cross_attention_qk_channels=cfg.cross_qk_channels,
        num_cross_attention_v_channels=cfg.cross_qk_channels,
        cross_attention_widening_factor=cfg.widening,
        num_self_attention_heads=cfg.self_heads,
        num_self_attention_layers_per_block=cfg.layers_per_block,
        num_self_attention_blocks=cfg.num_blocks,
        first_self_attention_block_shared=True,
        self_attention_widening_factor=cfg.widening,
    )
    decoder = PerceiverDecoder(
        query_provider=ClassificationQuery(num_channels=cfg.latent_channels),
        output_adapter=ClassificationOutput(num_channels=cfg.latent_channels, num_classes=cfg.num_classes),
        num_latent_channels=cfg.latent_channels,
        cross_attention_widening_factor=cfg.widening,
        query_residual=True,
    )
    model: nn.Module = PerceiverIO(
        input_adapter=PrecomputedTokens(num_channels=cfg.input_channels), encoder=encoder, decoder=decoder
    )
    return model, lambda tokens: model(tokens)


def build_transformers(cfg: BenchConfig):
    from transformers import PerceiverConfig, PerceiverModel
    from transformers.models.perceiver.modeling_perceiver import PerceiverClassificationDecoder

    config = PerceiverConfig(
        num_latents=cfg.num_latents,
        d_latents=cfg.latent_channels,
        d_model=cfg.input_channels,
        num_blocks=cfg.num_blocks,
        num_self_attends_per_block=cfg.layers_per_block,
        num_self_attention_heads=cfg.self_heads,
        num_cross_attention_heads=cfg.cross_heads,
        # config.qk_channels applies to cross- and self-attention alike: set it only where both agree with cfg.
        qk_channels=cfg.cross_qk_channels if cfg.cross_qk_channels == cfg.latent_channels else None,
        v_channels=cfg.cross_qk_channels if cfg.cross_qk_channels == cfg.latent_channels else None,
        cross_attention_shape_for_attention="kv",
        self_attention_widening_factor=cfg.widening,
        cross_attention_widening_factor=cfg.widening,
        attention_probs_dropout_prob=0.0,
        num_labels=cfg.num_classes,
    )
    if config.qk_channels is None and cfg.cross_qk_channels != cfg.input_channels:
        raise ValueError(f"cross_qk_channels: HF can express {cfg.latent_channels} or {cfg.input_channels} here")
    decoder = PerceiverClassificationDecoder(
        config,
        num_channels=cfg.latent_channels,
        trainable_position_encoding_kwargs=dict(num_channels=cfg.latent_channels, index_dims=1),
        use_query_residual=True,
        widening_factor=cfg.widening,
    )
    model = PerceiverModel(config, input_preprocessor=None, decoder=decoder)
    return model, lambda tokens: model(inputs=tokens).logits


def build_perceiver_pytorch(cfg: BenchConfig):
    import torch
    from perceiver_pytorch import PerceiverIO
    from torch import nn

    model = PerceiverIO(
        dim=cfg.input_channels,
        queries_dim=cfg.latent_channels,
        logits_dim=cfg.num_classes,
        depth=cfg.layers_per_block * cfg.num_blocks,
        num_latents=cfg.num_latents,
        latent_dim=cfg.latent_channels,
        cross_heads=cfg.cross_heads,
        latent_heads=cfg.self_heads,
        cross_dim_head=cfg.cross_qk_channels // cfg.cross_heads,
        latent_dim_head=cfg.latent_channels // cfg.self_heads,
        weight_tie_layers=cfg.num_blocks > 1,
        decoder_ff=True,
    )
    # Its feed-forwards are GEGLU with a fixed width multiplier of 4; give them our widening factor instead.
    for module in model.modules():
        if type(module).__name__ == "FeedForward":
            linears = [i for i, layer in enumerate(module.net) if isinstance(layer, nn.Linear)]
            dim = module.net[linears[0]].in_features
            module.net[linears[0]] = nn.Linear(dim, dim * cfg.widening * 2)
            module.net[linears[-1]] = nn.Linear(dim * cfg.widening, dim)
    query = nn.Parameter(torch.randn(1, cfg.latent_channels) * 0.02)
    model.register_parameter("class_query", query)
    return model, lambda tokens: model(tokens, queries=query)[:, 0]


BUILDERS = {"ours": build_ours, "transformers": build_transformers, "perceiver-pytorch": build_perceiver_pytorch}


# --- one measurement (in a subprocess) ------------------------------------------------------------------------------


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def train_step(impl: str, cfg: BenchConfig, device):
    """The model and a function that runs one timed train step of it on fixed random data (returns seconds)."""
    import torch
    import torch.nn.functional as F

    cuda = device.type == "cuda"
    model, forward = BUILDERS[impl](cfg)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randn(cfg.batch_size, cfg.num_inputs, cfg.input_channels, device=device)
    labels = torch.randint(cfg.num_classes, (cfg.batch_size,), device=device)

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(forward(tokens), labels)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return model, step


def serve(impl: str, cfg: BenchConfig, seed: int) -> None:
    """Worker: build the model, print ``ready``, then time one step per ``step`` line on stdin; ``done`` reports.

    Steps are driven by the parent so that the implementations take turns step by step: on a machine shared with
    other jobs, each then sees the same load, rather than one of them a quiet minute and another a busy one.
    """
    import torch

    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    # One step of a tiny model of the same implementation first: the libraries load code and allocate buffers
    # lazily on a first step, which would otherwise count as this model's memory.
    tiny = BenchConfig(**{**asdict(CONFIGS["quick"]), "batch_size": 1, "device": cfg.device})
    train_step(impl, tiny, device)[1]()
    gc.collect()
    torch.manual_seed(seed)
    baseline = current_rss_bytes()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, step = train_step(impl, cfg, device)

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(json.dumps(step()), flush=True)
            continue
        if cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline, 0)
        parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        print(json.dumps(dict(parameters=parameters, peak_memory_mib=peak / 2**20)), flush=True)
        return


class Worker:
    """One implementation's subprocess (see ``serve``); stderr goes to a file so that it can never block."""

    def __init__(self, impl: str, cfg: BenchConfig, seed: int):
        self.impl, self.cfg, self.error = impl, cfg, None
        self.stderr = tempfile.TemporaryFile(mode="w+")
        command = [sys.executable, __file__, "--worker", impl, "--worker-config", json.dumps(asdict(cfg)),
                   "--seed", str(seed)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self.times: list[float] = []

    def expect(self) -> str | None:
        line = self.process.stdout.readline()
        if not line and self.error is None:
            self.process.wait()
            self.stderr.seek(0)
            tail = self.stderr.read().strip().splitlines()[-1:] or [f"exit status {self.process.returncode}"]
            self.error = tail[0]
        return line or None

    def request(self, command: str) -> str | None:
        if self.error is not None:
            return None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        return self.expect()

    def result(self) -> dict:
        final = self.request("done")
        self.process.wait()
        self.stderr.close()
        if self.error is not None or final is None:
            out_of_memory = "out of memory" in (self.error or "").lower()
            return dict(implementation=self.impl, batch_size=self.cfg.batch_size, error=self.error,
                        out_of_memory=out_of_memory)
        median = statistics.median(self.times)
        return dict(
            implementation=self.impl,
            batch_size=self.cfg.batch_size,
            **json.loads(final),
            step_seconds_median=median,
            step_seconds_min=min(self.times),
            step_seconds_max=max(self.times),
            samples_per_second=self.cfg.batch_size / median,
            step_seconds=self.times,
        )


def measure_side_by_side(impls: list[str], cfg: BenchConfig, args) -> list[dict]:
    """Warm-up then timed steps, the implementations taking turns step by step; one result per implementation."""
    workers = [Worker(impl, cfg, args.seed) for impl in impls]
    for worker in workers:
        worker.expect()  # "ready" (or the error that stopped it)
    for round_ in range(args.warmup + args.repeats):
        for worker in workers:
            # A short pause lets the previous worker's OpenMP threads stop spinning before the next one starts.
            time.sleep(0.1)
            reply = worker.request("step")
            # Progress on stderr: a first step on a GPU includes compiling and autotuning, and can take minutes.
            print(f"{worker.impl} batch {cfg.batch_size} step {round_ + 1}/{args.warmup + args.repeats}: "
                  f"{'failed' if reply is None else f'{float(reply):.3f} s'}", file=sys.stderr, flush=True)
            if reply is not None and round_ >= args.warmup:
                worker.times.append(float(reply))
    return [worker.result() for worker in workers]


def largest_batch(impl: str, cfg: BenchConfig, args, limit: int = 1024) -> dict | None:
    """The measurement at the largest power-of-two batch that runs, or None if even batch 1 fails."""
    best, batch = None, 1
    while batch <= limit:
        (result,) = measure_side_by_side([impl], BenchConfig(**{**asdict(cfg), "batch_size": batch}), args)
        if "error" in result:
            break
        best, batch = result, batch * 2
    return best


# --- the run and its report -----------------------------------------------------------------------------------------


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "perceiver-pytorch", "perceiver-triton", "triton"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def machine() -> dict:
    import torch

    info = dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
    )
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def was_busy(report: dict) -> bool:
    """Whether the 1-minute load average before or after the run exceeded half the CPUs (timings then inflate)."""
    loads = [report.get("load_average_before", [0.0])[0], report.get("load_average_after", [0.0])[0]]
    return max(loads) > 0.5 * (report["machine"].get("cpu_count") or 1)


def markdown(report: dict) -> str:
    lines = ["# Peer benchmark: train step (forward + backward + AdamW)", ""]
    if was_busy(report):
        lines += [
            "**The machine was busy during this run** (load average above half its CPUs): the timings are inflated "
            "and noisy, and say nothing about targets. Re-run on an idle machine.",
            "",
        ]
    if report.get("note"):
        lines += [report["note"], ""]
    lines += [
        f"- date: {report['date']}",
        f"- machine: {report['machine']}",
        f"- versions: {report['versions']}",
        f"- load before: {report['load_before']}",
        f"- load after: {report['load_after']}",
        f"- warm-up steps {report['warmup']}, timed steps {report['repeats']} (median reported)",
    ]
    for name, section in report["configs"].items():
        lines += ["", f"## Config {name}", "", f"`{section['config']}`", ""]
        if "skipped" in section:
            lines.append(f"Not measured: {section['skipped']}")
            continue
        lines += [
            "| implementation | batch | parameters | step (s, median) | min–max (s) | samples/s | peak memory (MiB) "
            "| step time ÷ ours |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        ours = {r["batch_size"]: r for r in section["results"] if r["implementation"] == "ours" and "error" not in r}
        for r in section["results"]:
            if "error" in r:
                lines.append(f"| {r['implementation']} | {r['batch_size']} | | failed: {r['error'][:80]} | | | | |")
                continue
            base = ours.get(r["batch_size"])
            ratio = f"{r['step_seconds_median'] / base['step_seconds_median']:.2f}" if base else ""
            lines.append(
                f"| {r['implementation']} | {r['batch_size']} | {r['parameters'] / 1e6:.3f} M | "
                f"{r['step_seconds_median']:.3f} | {r['step_seconds_min']:.3f}–{r['step_seconds_max']:.3f} | "
                f"{r['samples_per_second']:.1f} | {r['peak_memory_mib']:.0f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", choices=["a", "b"], default=["a", "b"])
    parser.add_argument("--quick", action="store_true", help="tiny config, 1 warm-up and 2 timed steps")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--batch", type=int, default=None, help="override the config's batch size")
    parser.add_argument("--find-max-batch", action="store_true", help="GPU: also measure each at its largest batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a line to print above the results (e.g. how the run was made)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory for the results")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        serve(args.worker, BenchConfig(**json.loads(args.worker_config)), args.seed)
        return None

    import torch

    if args.quick:
        args.config, args.warmup, args.repeats = ["quick"], 1, 2
    report = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=machine(),
        versions=versions(),
        note=args.note,
        load_before=load_line(),
        load_average_before=list(os.getloadavg()),
        warmup=args.warmup,
        repeats=args.repeats,
        configs={},
    )
    for name in args.config:
        cfg = CONFIGS[name]
        if args.batch is not None:
            cfg = BenchConfig(**{**asdict(cfg), "batch_size": args.batch})
        section: dict = dict(config=asdict(cfg))
        report["configs"][name] = section
        if cfg.device == "cuda" and not torch.cuda.is_available():
            section["skipped"] = "no CUDA device on this machine"
            continue
        section["results"] = measure_side_by_side(args.implementations, cfg, args)
        if args.find_max_batch and cfg.device == "cuda":
            for impl in args.implementations:
                best = largest_batch(impl, cfg, args)
                if best is not None:
                    section["results"].append({**best, "largest_batch": True})
        print(f"config {name} done ({load_line()})", file=sys.stderr)
    report["load_after"] = load_line()
    report["load_average_after"] = list(os.getloadavg())
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.md").write_text(text)
    (args.out / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
