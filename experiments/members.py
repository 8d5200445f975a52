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

from perceiver.threads import choose_threads
from perceiver.training.distributed import uses_cuda


def members_at_once(args: argparse.Namespace, pending: int) -> tuple[int, int]:
    """(members trained at once, threads each) for ``pending`` members: ``--members-at-once``, else one per thread of
    ``--threads`` on a CPU (spoken_digits' small products and the Python of its augmentation use a second thread
    poorly: on 2-core machines two one-thread runs side by side took 21–23 min each, one run on two threads 18–34
    min, docs/exps.md) and one on a GPU."""
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
                       at_once: int, threads: int, *, describe: Callable[[dict], str]) -> None:
    """``train`` the ``pending`` members, ``at_once`` at a time in processes of their own on ``threads`` threads each,
    with one progress bar each read from their logs (with ``--no-progress``, a plain line of their steps every
    ``STATUS_SECONDS``), and print ``describe(metrics)`` of each as it finishes.

    ``train`` is a module-level function (the workers import it by name) that writes the run's ``metrics.json`` in
    ``args.out``, as the experiments' ``train_one`` does. A member that fails does not stop the others (each is kept
    for ``--resume``); the failures are raised together at the end, each with its log."""
    out = Path(args.out)
    logs = {k: out / f"member-{k}" / "train.log" for k in pending}
    for k in pending:
        logs[k].parent.mkdir(parents=True, exist_ok=True)
        print(f"member {k} of {args.members}: seed {args.seed + k}, in {logs[k].parent}, {threads} thread(s), "
              f"output in {logs[k]}")
    bars = {k: tqdm(total=args.max_steps, desc=f"member {k}", unit="step", position=row, disable=args.no_progress)
            for row, k in enumerate(pending)}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or CUDA state
    failed = {}
    with ProcessPoolExecutor(max_workers=at_once, mp_context=context, max_tasks_per_child=1) as pool:
        running = {}
        for k in pending:
            member = member_arguments(args, k, threads=threads, no_progress=True)
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
