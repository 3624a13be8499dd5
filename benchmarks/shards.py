"""Milliseconds to make one step's training batch in one process against one DDP rank's shard of it.

    .venv/bin/python benchmarks/shards.py                       # batch 256, 2 and 4 ranks
    .venv/bin/python benchmarks/shards.py --batch 64 --worlds 2 --steps 3

Each rank makes only its ``batch / world`` examples (``Task.train_examples``), so a rank's time
should fall about as ``1 / world``. One thread; each figure is the mean over ``--steps`` steps
after a first one not timed.
"""

from __future__ import annotations

import argparse
import time

import torch

from deqloop.tasks import get_task
from deqloop.train import Batches

TASKS = {
    "prefix_sums 4-32 bits": ("prefix_sums", dict(min_length=4)),
    "sudoku 4-24 blanks, augmented": ("sudoku", dict(blanks=(4, 24), augment=True)),
    "sudoku easy band": ("sudoku", dict()),
    "chess mate-in-1, 4-8 pieces": ("chess", dict()),
}


def seconds_per_step(batches: Batches, steps: int) -> float:
    batches(0)  # warm up (first calls of torch and numpy kernels)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batches(step)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="global batch size (default 256)")
    parser.add_argument("--worlds", type=int, nargs="*", default=[2, 4], help="ranks (default 2 4)")
    parser.add_argument("--steps", type=int, default=2, help="steps timed per figure (default 2)")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch}: ms per step, one process | rank 0 of " + " | ".join(map(str, args.worlds)))
    for name in args.tasks:
        task = get_task(TASKS[name][0], **TASKS[name][1])
        one = seconds_per_step(Batches(task, args.batch, seed=0), args.steps)
        shards = [seconds_per_step(Batches(task, args.batch, seed=0, rank=0, world=w), args.steps) for w in args.worlds]
        print(f"{name:<32} {1e3 * one:8.1f} | " + " | ".join(f"{1e3 * s:8.1f}" for s in shards))


if __name__ == "__main__":
    main()
