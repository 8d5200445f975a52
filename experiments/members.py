"""An experiment's ensemble members (``--members N``): each a run of its own, several trained at once on a CPU.

The k-th member is the experiment's run with seed ``--seed`` + k in ``OUT/member-k`` (``member_arguments``). On a CPU
with threads to spare, members train side by side, each in a worker process of its own on a share of the threads
(``members_at_once``, ``train_side_by_side``): the output of each goes to ``OUT/member-k/train.log``, and the command
shows one progress bar per member, read from those logs (``logged_step``). Two members side by side on one thread
each end with the very weights that one after another on one thread give (tests/test_experiments.py).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from perceiver import load_model
from perceiver.ensemble import EnsembleClassifier
from perceiver.threads import choose_threads
from perceiver.training.distributed import uses_cuda

# The flags that member k's run sets otherwise than the ensemble's: flags(args, k) -> {dest: value}.
MemberFlags = Callable[[argparse.Namespace, int], dict]


def add_member_args(group) -> None:
    """``--members`` and ``--members-at-once`` on an experiment's parser (or one of its argument groups)."""
    group.add_argument("--members", type=int, default=1,
                       help="train this many models, the k-th with --seed + k in OUT/member-k, and score the mean of "
                            "their log-probabilities (perceiver.ensemble.EnsembleClassifier, saved in OUT/model)")
    group.add_argument("--members-at-once", type=int, default=None,
                       help="train up to this many members at once, each in a process of its own on --threads / K "
                            "threads, its output in OUT/member-k/train.log (default: on a CPU, one member per thread "
                            "of --threads, at most --members: two one-thread runs side by side train faster than one "
                            "run on two threads, docs/exps.md; on a GPU, one)")


def check_member_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.members < 1:
        parser.error(f"--members: expected an int >= 1, got {args.members}")
    if args.members_at_once is not None and args.members_at_once < 1:
        parser.error(f"--members-at-once: expected an int >= 1, got {args.members_at_once}")
    if args.members > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("--members: expected 1 under torchrun (one process group per run); train each member as a run "
                     "of its own (--seed S --out DIR) and combine them with perceiver.ensemble.EnsembleClassifier")


def no_member_flags(args: argparse.Namespace, k: int) -> dict:
    """Every member trains the ensemble's own flags (only the seed and the run folder differ)."""
    return {}


def own_flags(flags: dict) -> str:
    """A member's own flags as its line names them: ", --conv time-mel-frames --conv-channels 32"."""
    named = []
    for name, value in flags.items():
        values = value if isinstance(value, list) else [value]
        named.append(" ".join([f"--{name.replace('_', '-')}", *("none" if item is None else str(item)
                                                                for item in values)]))
    return ", " + " ".join(named) if named else ""


def train_members(train: Callable[[argparse.Namespace], Any], args: argparse.Namespace, *,
                  describe: Callable[[dict], str], flags: MemberFlags = no_member_flags) -> tuple[list[dict], int]:
    """``train`` the ``--members`` members that are not finished (with ``--resume``, a member whose run folder holds
    its ``metrics.json`` and ``model`` is kept), ``members_at_once`` at a time; returns (every member's metrics, in
    order; members trained at once). ``flags(args, k)``: the flags that the k-th member's run sets otherwise than the
    ensemble's (e.g. a stem of its own). Members trained at once each get the whole ``--max-minutes``; members trained
    in turns (one thread, a GPU) share it."""
    out = Path(args.out)
    pending = []
    for k in range(args.members):
        member_out = out / f"member-{k}"
        if args.resume and (member_out / "metrics.json").is_file() and (member_out / "model").is_dir():
            print(f"member {k}: finished in {member_out}, kept")
        else:
            pending.append(k)
    at_once, threads = members_at_once(args, len(pending))
    rounds = math.ceil(len(pending) / at_once)
    if args.max_minutes is not None and rounds > 1:
        # A clock budget is the command's: members trained in turns share it, so the command ends in about
        # --max-minutes however many members train at once.
        print(f"members: {len(pending)} to train, {at_once} at a time: {rounds} turns of "
              f"{args.max_minutes / rounds:g} min (--max-minutes {args.max_minutes:g} shared)")
        args = argparse.Namespace(**{**vars(args), "max_minutes": args.max_minutes / rounds})
    if at_once > 1:
        train_side_by_side(train, args, pending, at_once, threads, describe=describe, flags=flags)
    else:
        for k in pending:
            own = flags(args, k)
            print(f"member {k} of {args.members}: seed {args.seed + k}{own_flags(own)}, in {out / f'member-{k}'}")
            train(member_arguments(args, k, **own))
    return [json.loads((out / f"member-{k}" / "metrics.json").read_text()) for k in range(args.members)], at_once


def load_ensemble(args: argparse.Namespace) -> EnsembleClassifier:
    """The ``--members`` finished members in ``OUT/member-k/model``, as one model."""
    return EnsembleClassifier(models=[load_model(Path(args.out) / f"member-{k}" / "model")
                                      for k in range(args.members)])


def ensemble_summary(members: list[dict], figures: tuple[str, ...]) -> dict:
    """The figures of an ensemble's metrics that come from its members: each member's ``figures`` (as
    ``member{k}_{name}``), each member's steps, and the time, size and skipped samples of all of them."""
    return {
        "members": len(members),
        **{f"member{k}_{name}": found[name] for k, found in enumerate(members) for name in figures},
        "steps": members[0]["steps"],
        "train_seconds": round(sum(found["train_seconds"] for found in members), 2),
        "parameters": sum(found["parameters"] for found in members),
        "corrupt_samples": sum(found["corrupt_samples"] for found in members),
    }


def record_ensemble(run, ensemble: EnsembleClassifier, metrics: dict, members: list[dict], at_once: int,
                    figures: tuple[str, ...]) -> dict:
    """An ensemble's evaluation ``metrics`` logged at its members' step and the ensemble saved in ``OUT/model``;
    returns what its metrics add to the experiment's own figures (``ensemble_summary``, how many members trained at
    once, the world size)."""
    run.tracker.log({f"eval/{key}": value for key, value in metrics.items()}, step=members[0]["steps"])
    ensemble.save_pretrained(run.out / "model")
    return {**ensemble_summary(members, figures), "members_at_once": at_once, "world_size": run.context.world_size}


def members_at_once(args: argparse.Namespace, pending: int) -> tuple[int, int]:
    """(members trained at once, threads each) for ``pending`` members: ``--members-at-once``, else one per thread of
    ``--threads`` on a CPU (the experiments' small products and the Python of their augmentation use a second thread
    poorly: on 2-core machines two spoken-digits runs side by side on one thread each took 21–23 min, one on two
    threads 18–34 min; in 28 minutes two one-thread Fashion-MNIST runs made 4,770–4,913 steps each, one on two
    threads 5,323–7,803; docs/exps.md) and one on a GPU."""
    threads, _ = choose_threads(args.threads)
    at_once = args.members_at_once or (1 if uses_cuda(args.device) else threads)
    at_once = max(1, min(at_once, pending))
    return at_once, max(1, threads // at_once)


def member_arguments(args: argparse.Namespace, k: int, **overrides: Any) -> argparse.Namespace:
    """The k-th member's run: seed ``--seed`` + k, in ``OUT/member-k``, one model (``overrides``: other flags)."""
    return argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / f"member-{k}"), "seed": args.seed + k,
                                 "members": 1, **overrides})


def train_member(train: Callable[[argparse.Namespace], Any], args: argparse.Namespace, log_path: Path) -> None:
    """``train(args)`` in a worker process of its own, its output appended to ``log_path``."""
    with open(log_path, "a") as log:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            os.dup2(log.fileno(), stream.fileno())  # the C libraries' output too, not only Python's
            stream.reconfigure(line_buffering=True)  # each line in the log as it is printed, for the progress bars
    try:
        train(args)
    except BaseException:
        traceback.print_exc()  # the parent receives the exception; the log keeps where it came from
        raise


# The line the training loop prints at each log step without a progress bar: "step 120/3000: loss …".
LOGGED_STEP = re.compile(r"^step (\d+)/\d+: loss", re.MULTILINE)


def logged_step(log_path: Path) -> int:
    """The last step a member's log reports (0 before its first log step)."""
    try:
        steps = LOGGED_STEP.findall(log_path.read_text(errors="replace"))
    except FileNotFoundError:
        return 0
    return int(steps[-1]) if steps else 0


# Without progress bars (--no-progress, e.g. cluster logs), how often a line gives every running member's step.
STATUS_SECONDS = 60.0


def train_side_by_side(train: Callable[[argparse.Namespace], Any], args: argparse.Namespace, pending: list[int],
                       at_once: int, threads: int, *, describe: Callable[[dict], str],
                       flags: MemberFlags = no_member_flags) -> None:
    """``train`` the ``pending`` members, ``at_once`` at a time in processes of their own on ``threads`` threads each,
    with one progress bar each read from their logs (with ``--no-progress``, a plain line of their steps every
    ``STATUS_SECONDS``), and print ``describe(metrics)`` of each as it finishes; ``flags`` as in ``train_members``.

    ``train`` is a module-level function (the workers import it by name) that writes the run's ``metrics.json`` in
    ``args.out``, as the experiments' ``train_one`` does. A member that fails does not stop the others (each is kept
    for ``--resume``); the failures are raised together at the end, each with its log."""
    out = Path(args.out)
    logs = {k: out / f"member-{k}" / "train.log" for k in pending}
    own = {k: flags(args, k) for k in pending}
    for k in pending:
        logs[k].parent.mkdir(parents=True, exist_ok=True)
        print(f"member {k} of {args.members}: seed {args.seed + k}{own_flags(own[k])}, in {logs[k].parent}, "
              f"{threads} thread(s), output in {logs[k]}")
    bars = {k: tqdm(total=args.max_steps, desc=f"member {k}", unit="step", position=row, disable=args.no_progress)
            for row, k in enumerate(pending)}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or CUDA state
    failed = {}
    with ProcessPoolExecutor(max_workers=at_once, mp_context=context, max_tasks_per_child=1) as pool:
        running = {}
        for k in pending:
            member = member_arguments(args, k, **own[k], threads=threads, no_progress=True)
            running[pool.submit(train_member, train, member, logs[k])] = k
        steps = dict.fromkeys(pending, 0)  # read from the logs (a disabled bar counts nothing)
        last_status = time.monotonic()
        while running:
            done, _ = wait(running, timeout=2.0, return_when=FIRST_COMPLETED)
            for k in running.values():  # only bars that moved: a redrawn bar is a line more in a log file
                step = logged_step(logs[k])
                if step > steps[k]:
                    bars[k].update(step - steps[k])
                    steps[k] = step
            if args.no_progress and time.monotonic() - last_status >= STATUS_SECONDS:  # no bars: a plain line
                print("members: " + ", ".join(f"{k} at step {steps[k]}/{args.max_steps}" for k in running.values()),
                      flush=True)
                last_status = time.monotonic()
            for future in done:
                k = running.pop(future)
                if future.exception() is not None:
                    failed[k] = future.exception()
                    tqdm.write(f"member {k}: failed ({type(failed[k]).__name__}); its log: {logs[k]}")
                else:
                    found = json.loads((logs[k].parent / "metrics.json").read_text())
                    tqdm.write(f"member {k}: finished, {describe(found)}")
    for bar in bars.values():
        bar.close()
    if failed:
        raise RuntimeError("members failed: " + "; ".join(f"member {k} ({type(error).__name__}: {error}; its log: "
                                                          f"{logs[k]})" for k, error in sorted(failed.items())))
