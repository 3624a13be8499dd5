"""Chess puzzles: find the move; train on easy Lichess puzzles, test on harder ones.

The board is encoded from the side to move's perspective (see ``deqloop.tasks.chess``); the
model marks the move's from- and to-square, and a puzzle counts as solved when the two
highest-scoring squares are exactly those (the paper's metric). Trains on the shared Lichess
files when found (``$DEQLOOP_SHARED/data/chess`` or ``../shared/data/chess``): easy = rated
≤ 1600, hard = 1601–2000; otherwise on generated mate-in-one positions (``--data FILE...`` names
other Lichess files; ``--synthetic`` uses the generator). The evaluation ends with a few hard puzzles:
the position, the puzzle's move and the model's, on the real board.

CPU defaults (the recipe ``examples/chess``; a few minutes on 2 cores):

    python examples/chess.py

Any ``deqloop train`` flag overrides a default (``--width 256 --heads 8 --device cuda ...``).
"""

from __future__ import annotations

import argparse
import os
import sys

# ``python examples/chess.py`` puts this folder first on sys.path, where this file would shadow
# the python-chess package: drop it before anything imports ``chess``.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here] + [_here]

from _recipe import run  # noqa: E402

from deqloop.tasks.io import shared_data_dir  # noqa: E402

SHARED_FILES = ("lichess_puzzles_rating_0000_1600.csv", "lichess_puzzles_rating_1601_2000.csv")


def main(argv: list[str] | None = None) -> dict:
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--synthetic", action="store_true")  # generated mate-in-one positions even where files lie
    args, rest = own.parse_known_args(list(argv or []))
    shared = [shared_data_dir() / "chess" / name for name in SHARED_FILES]
    found = all(f.is_file() for f in shared) and not args.synthetic
    data = ["--data", *map(str, shared)] if found else []  # a --data given comes later and wins
    # Squares right would be ~97% for any model that marks nothing: report exact match only.
    return run("examples/chess", rest, train=data, cells=False, iters="1,2,5,10,12,20,30,50", n=300,
               out="runs/examples/chess", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
