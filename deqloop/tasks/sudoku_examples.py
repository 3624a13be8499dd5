"""Generated sudoku training puzzles, one per example seed, drawn together.

Example ``e``'s puzzle is the first accepted candidate of its attempts ``0, 1, 2, ...``; attempt
``a`` is drawn in a lane of its own, from :class:`~deqloop.seeds.LaneStreams` seeded by
``seeds.example_seeds(a, a + 1, seed_e)``. So a puzzle depends on its example's seed alone: not
on which examples are drawn beside it (a DDP rank's shard, or the whole batch in one process),
nor on how many attempts a round gives each example. A round draws attempts for every example
still pending at once (vectorized lanes, as the cached generators draw their chunks), as many per
example as the acceptance rate so far calls for.

    x, y = draw_examples(seeds.example_seeds(0, 64, run_seed, seeds.BATCH, step),
                         lambda rng, lanes: draw_blanks_lanes(4, 24, rng, lanes))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from deqloop import seeds
from deqloop.seeds import LaneStreams

__all__ = ["draw_examples"]

MAX_LANES = 2048  # candidates per round (the search holds an (lanes, 81, 81) int8 stack)
_GIVE_UP = (25_600, 256)  # after this many candidates, fewer than 1 accepted in 256 is an error

Draw = Callable[[LaneStreams, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def draw_examples(example_seeds: Sequence[int], draw: Draw, failure: str = "sudoku") -> tuple[Tensor, Tensor]:
    """``(x, y)``, ``(n, 9, 9)`` LongTensors: one accepted puzzle per seed of ``example_seeds``.

    ``draw(rng, lanes)`` draws ``lanes`` candidates, lane ``j`` from stream ``j`` of ``rng``, and
    returns their puzzles and solutions ``(lanes, 81)`` and whether each is accepted ``(lanes,)``.
    Too low an acceptance rate raises ``RuntimeError(failure + counts)``."""
    n = len(example_seeds)
    puzzles, solutions = np.zeros((n, 81), np.int8), np.zeros((n, 81), np.int8)
    pending, attempt, tried, accepted = np.arange(n), 0, 0, 0
    while pending.size:
        wanted = 1 if not tried else math.ceil(1.5 * tried / max(accepted, 1))  # attempts per example
        k = max(1, min(wanted, MAX_LANES // pending.size))
        lane_seeds = [s for e in pending for s in seeds.example_seeds(attempt, attempt + k, example_seeds[e])]
        p, s, ok = draw(LaneStreams(lane_seeds), len(lane_seeds))
        ok = ok.reshape(pending.size, k)
        got = ok.any(axis=1)
        lanes = np.flatnonzero(got) * k + ok.argmax(axis=1)[got]  # each example's first accepted attempt
        puzzles[pending[got]], solutions[pending[got]] = p[lanes], s[lanes]
        tried, accepted = tried + ok.size, accepted + int(ok.sum())
        pending, attempt = pending[~got], attempt + k
        if tried >= _GIVE_UP[0] and accepted * _GIVE_UP[1] < tried:
            raise RuntimeError(f"{failure}: only {accepted} accepted in {tried} candidates")
    as_grids = lambda a: torch.from_numpy(a.astype(np.int64)).view(n, 9, 9)  # noqa: E731
    return as_grids(puzzles), as_grids(solutions)
