"""Sudoku: train on puzzles with few blanks, test on more blanks by iterating longer.

Difficulty is the number of blanks (``--blanks``; every puzzle unique, proved by the project's
solver): 4–24 blanks need about 2 rounds of naked singles, 25–35 about 3.5, 36–45 about 6 and
46–55 about 11 (see ``deqloop.tasks.sudoku_blanks``). The model is a looped block over the 9×9
grid with full attention and 2-D RoPE, trained with the progressive loss on digit-relabelled,
symmetry-augmented puzzles; a puzzle counts as solved only if every cell is right and the givens
are kept. It is tested on the training band (*val*), on 25–35 blanks (*hard*, about twice the
propagation depth), on 36–45 and 46–55 blanks, and on the shared collections
``magictour_top1465`` and ``sudoku17_1500`` when found (``$DEQLOOP_SHARED/data`` or
``../shared/data`` beside this checkout), each after 1 to 500 iterations.

CPU defaults (the recipe ``examples/sudoku``; 1,500 steps, about 30 min of training on 2 cores, then a few minutes of evaluation):

    python examples/sudoku.py

Given ``--train-band``/``--hard-band`` (rating bands) or ``--data``, the blank bands are not
applied. Any ``deqloop train`` flag overrides a default, e.g. GPU scale:

    python examples/sudoku.py --width 256 --heads 8 --steps 10000 --batch-size 256 --max-iter 30 \
        --n 1000 --device cuda --threads 0
"""

from __future__ import annotations

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # finds _recipe when imported by path

from _recipe import run  # noqa: E402

from deqloop.tasks.io import shared_data_dir  # noqa: E402

BANDS = ("blanks:36-45", "blanks:46-55")
COLLECTIONS = ("magictour_top1465.csv", "sudoku17_1500.csv")


def main(argv: list[str] | None = None) -> dict:
    # the recipe "examples/sudoku" (deqloop/train/recipes.py): the form README's figures were measured
    # with (z0 detached; the paper's keeps z0's gradient)
    files = [str(p) for p in (shared_data_dir() / "sudoku" / name for name in COLLECTIONS) if p.is_file()]
    return run("examples/sudoku", list(argv or []), iters="1,2,4,8,16,32,64,128,256,500", n=256,
               out="runs/examples/sudoku", extra=[*BANDS, *files], description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main(sys.argv[1:])
