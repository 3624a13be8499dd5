"""Chess puzzles: find the move; train on easy Lichess puzzles, test on harder ones.

The board is encoded from the side to move's perspective (see ``deqloop.tasks.chess``); the
model marks the move's from- and to-square, and a puzzle counts as solved when the two
highest-scoring squares are exactly those (the paper's metric). Trains on the shared Lichess
files when found (``$DEQLOOP_SHARED/data/chess`` or ``../shared/data/chess``): easy = rated
≤ 1600, hard = 1601–2000; otherwise on generated mate-in-one positions (``--data FILE...`` names
other Lichess files; ``--synthetic`` uses the generator).

CPU defaults (a few minutes on 2 cores):

    python examples/chess.py

Any ``deqloop train`` flag overrides a default (``--width 256 --heads 8 --device cuda ...``).
"""

from __future__ import annotations

import os
import sys

# ``python examples/chess.py`` puts this folder first on sys.path, where this file would shadow
# the python-chess package: drop it before anything imports ``chess``.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here] + [_here]

from _recipe import run  # noqa: E402

from deqloop.tasks.io import shared_data_dir  # noqa: E402

TRAIN = ["--task", "chess", "--train-size", "2000", "--epochs", "2", "--width", "32", "--heads", "4",
         "--attention", "full", "--recall", "internal", "--norm", "post", "--loss", "progressive", "--alpha", "0.5",
         "--max-iter", "12", "--batch-size", "32", "--lr", "1e-3", "--log-every", "20", "--checkpoint-every", "200",
         "--eval-size", "0", "--threads", "1"]
SHARED_FILES = ("lichess_puzzles_rating_0000_1600.csv", "lichess_puzzles_rating_1601_2000.csv")


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    synthetic = "--synthetic" in argv  # generated mate-in-one positions even where the shared files lie
    argv = [a for a in argv if a != "--synthetic"]
    shared = [shared_data_dir() / "chess" / name for name in SHARED_FILES]
    found = all(p.is_file() for p in shared) and not synthetic
    data = ["--data", *map(str, shared)] if "--data" not in argv and found else []
    # Squares right would be ~97% for any model that marks nothing: report exact match only.
    return run(TRAIN + data, argv + ["--no-cells"], iters="1,2,5,10,12,20,30,50", n=300, out="runs/examples/chess",
               description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
