"""Prefix sums: train on short bit strings, then solve longer ones by iterating longer.

The target at position i is the parity of the first i + 1 bits. With local attention a looped
block can only move information a few cells per iteration, so an L-bit string needs about L
iterations: a model that learned the *algorithm* extrapolates when given more iterations.

CPU defaults (the recipe ``examples/prefix_sums``: ``deqloop train --list-recipes``): the paper's split. Train on strings of 8–32 bits, reached by a difficulty schedule
from 4–8 bits over the first 900 of 1,500 steps (about 3.5 min on one core), then test on 128 and
512 bits with up to 600 iterations (a 512-bit string needs about 512):

    python examples/prefix_sums.py

Given ``--length``, the schedule is yours to set (``--start-length``, ``--start-min-length``,
``--ramp-steps``); none is applied by default then. The 4–12-bit recipe of ``deqloop demo`` is

    python examples/prefix_sums.py --length 12 --min-length 4 --hard-length 48 --extra 96 --steps 800 \
        --iters 1,2,5,10,14,20,30,50,75,100,150,200 --n 256

Any ``deqloop train`` flag overrides a default, e.g. the paper's split at GPU scale:

    python examples/prefix_sums.py --width 256 --heads 8 --batch-size 256 --steps 20000 --lr 1e-3 \
        --device cuda --threads 0

Writes ``OUT/last.pt``, ``OUT/metrics.jsonl``, ``OUT/eval.json`` and ``OUT/iterations.png``.
"""

from __future__ import annotations

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # finds _recipe when imported by path

from _recipe import run  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # the recipe "examples/prefix_sums" (deqloop/train/recipes.py); a --length given drops its schedule
    return run("examples/prefix_sums", list(argv or []), iters="1,10,34,100,300,600", n=128,
               out="runs/examples/prefix_sums", extra=["512"], description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
