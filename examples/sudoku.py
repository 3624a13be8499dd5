"""Sudoku: train on generated easy puzzles, test on harder ones by iterating longer.

Easy puzzles (rating 0) fall to forced cells alone; the hard band needs guessing (rating ≥ 100,
see ``deqloop.tasks.sudoku``). The model is a looped block over the 9×9 grid with full attention
and 2-D RoPE; a puzzle counts as solved only if every cell is right and the givens are kept. The
shared collections ``magictour_top1465`` and ``sudoku17_1500`` are scored too when found
(``$DEQLOOP_SHARED/data`` or ``../shared/data`` beside this checkout).

CPU defaults (a few minutes on 2 cores; expect low accuracy, this is a smoke-scale run):

    python examples/sudoku.py

Any ``deqloop train`` flag overrides a default, e.g. GPU scale:

    python examples/sudoku.py --width 256 --heads 8 --train-size 100000 --epochs 100 \\
        --batch-size 256 --max-iter 30 --iters 1,5,10,30,100,300 --n 1000 --device cuda --threads 0
"""

from __future__ import annotations

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # finds _recipe when imported by path

from _recipe import run  # noqa: E402

from deqloop.tasks.io import shared_data_dir  # noqa: E402

TRAIN = ["--task", "sudoku", "--augment", "--train-size", "2000", "--epochs", "2", "--width", "32", "--heads", "4",
         "--attention", "full", "--recall", "internal", "--norm", "post", "--loss", "progressive", "--alpha", "0.5",
         "--max-iter", "16", "--batch-size", "32", "--lr", "1e-3", "--log-every", "20", "--checkpoint-every", "200",
         "--eval-size", "0", "--threads", "1"]
COLLECTIONS = ("magictour_top1465.csv", "sudoku17_1500.csv")


def main(argv: list[str] | None = None) -> dict:
    files = [str(p) for p in (shared_data_dir() / "sudoku" / name for name in COLLECTIONS) if p.is_file()]
    return run(TRAIN, list(argv or []), iters="1,2,5,10,16,30,50,100", n=200, out="runs/examples/sudoku",
               extra=files, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
