"""``deqloop demo``: the CPU demo (see :mod:`deqloop.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from deqloop.cli.flags import nonempty

__all__ = ["add", "run"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="train on short prefix sums on CPU, solve 4x and 8x longer ones",
        description="Train a small looped transformer on prefix sums (parity of every prefix of a bit string) of up "
        "to 12 bits on CPU, then score exact match at 12, 48 and 96 bits across test-time iterations. One to three "
        "minutes on 2 CPU cores. Prints the tables and writes OUT/iterations.png, OUT/demo.json and the training "
        "run (OUT/last.pt, OUT/metrics.jsonl).")
    p.add_argument("--quick", action="store_true", help="a seconds-long run of the same code (for tests)")
    p.add_argument("--out", default="runs/demo", type=nonempty, help="output folder [default: runs/demo]")
    p.add_argument("--seed", type=int, default=0, help="seed [default: 0]")
    p.add_argument("--steps", type=int, default=None, help="training steps [default: the recipe's]")
    p.add_argument("--n", type=int, default=None, help="random test inputs per length [default: 256]")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch; the model is tiny, so one is usually fastest [default: 1]")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (without it, such a folder is refused)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar [default: on]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deqloop.demo import run_demo
    from deqloop.validate import integer

    if args.n is not None:
        integer("--n", args.n)
    if args.steps is not None:
        integer("--steps", args.steps)
    run_demo(quick=args.quick, out=args.out, seed=args.seed, steps=args.steps, n=args.n, threads=args.threads,
             progress=args.progress, overwrite=args.overwrite)
    return 0
