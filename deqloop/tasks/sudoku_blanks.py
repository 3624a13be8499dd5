"""Sudoku puzzles by number of blanks: a difficulty axis that small models can climb.

    x, y = generate_blanks(1000, (4, 24), seed=0)    # unique puzzles with 4-24 blanks, cached

Each puzzle starts from a random valid solution grid (the rating search filling an empty grid
with random digit order). It gets a target ``k`` drawn uniformly from the band, then its cells
are visited in random order and each is blanked if the puzzle stays unique (proved by the
solver counting solutions up to 2), until ``k`` cells are blank. A grid that cannot reach ``k``
blanks (every further blank would break uniqueness) is dropped and another is drawn, so near the
minimal-puzzle limit (about 55–60 blanks) the counts lean to the band's low end. Draws come in
chunks seeded by ``(seed, stream, band, chunk)``: the same seed gives the same puzzles, and a
smaller ``n`` a prefix of a larger one. Sets are cached under ``cache_root(cache_dir)/sudoku``,
keyed by band, stream, seed and generator version.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from deqloop.errors import ConfigError
from deqloop.seeds import LaneStreams
from deqloop.tasks.base import check_count
from deqloop.tasks.sudoku_data import cache_root, draw_cached
from deqloop.tasks.sudoku_solver import _search

__all__ = ["MAX_BLANKS", "blanks_band", "generate_blanks"]

log = logging.getLogger("deqloop.tasks.sudoku")

MAX_BLANKS = 64  # 17 givens: no unique sudoku has fewer
_BLANKS_VERSION = 1  # bump when the drawing procedure changes: it names the cache files
_CHUNK = 256  # grids drawn per chunk; chunk k of a stream has its own seed
_PAIR = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def blanks_band(value: object, what: str = "blanks") -> tuple[int, int]:
    """``(lo, hi)`` with ``1 <= lo <= hi <= 64`` from a pair (tuple or list) or a ``"lo-hi"`` string."""
    if isinstance(value, str) and (m := _PAIR.match(value)):
        value = (int(m.group(1)), int(m.group(2)))
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 1 <= value[0] <= value[1] <= MAX_BLANKS
    ):
        return int(value[0]), int(value[1])
    raise ConfigError(f"{what} must be a pair (lo, hi) of blank counts with 1 <= lo <= hi <= {MAX_BLANKS} "
                      f"(or 'lo-hi'), got {value!r}")


def _draw_chunk(lo: int, hi: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Puzzles and solutions of one chunk's grids that reached their drawn number of blanks."""
    puzzles, solutions, reached = draw_blanks_lanes(lo, hi, rng, _CHUNK)
    return puzzles[reached], solutions[reached]


def draw_blanks_lanes(lo: int, hi: int, rng: np.random.Generator | LaneStreams,
                      n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puzzles and solutions of ``n`` grids, one a lane, and whether each reached its drawn number
    of blanks; with :class:`~deqloop.seeds.LaneStreams` each lane draws alone."""
    solutions = _search(np.zeros((n, 81), np.int8), 1, hidden=False, rng=rng).first
    target = rng.integers(lo, hi + 1, size=n)
    order = np.argsort(rng.random((n, 81)), axis=1)
    puzzles = solutions.copy()
    blanks = np.zeros(n, np.int64)
    for step in range(81):
        lanes = np.flatnonzero(blanks < target)
        if not lanes.size:
            break
        trial = puzzles[lanes].copy()
        trial[np.arange(len(lanes)), order[lanes, step]] = 0
        keep = _search(trial, 2, hidden=True).count == 1  # hidden singles only speed the proof up
        puzzles[lanes[keep]] = trial[keep]
        blanks[lanes[keep]] += 1
    return puzzles, solutions, blanks == target


def generate_blanks(
    n: int,
    band: tuple[int, int] = (4, 24),
    seed: int = 0,
    *,
    stream: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """``n`` unique puzzles with a number of blanks in ``band`` (inclusive), and their solutions,
    ``(n, 9, 9)`` LongTensors (see the module doc)."""
    check_count(n)
    lo, hi = blanks_band(band, "band")
    path = cache_root(cache_dir) / "sudoku" / f"b{lo}-{hi}-stream{stream}-seed{seed}-v{_BLANKS_VERSION}.npz"
    empty = {"puzzles": np.zeros((0, 81), np.int8), "solutions": np.zeros((0, 81), np.int8)}

    def draw(chunk: int) -> tuple[np.ndarray, ...]:
        return _draw_chunk(lo, hi, np.random.default_rng([seed, stream, lo, hi, chunk, _BLANKS_VERSION]))

    arrays, drawn, seconds = draw_cached(path, n, empty, draw, use_cache=use_cache,
                                  failure=f"sudoku blanks {lo}-{hi}: too few grids reached their blanks uniquely")
    puzzles, solutions = arrays["puzzles"], arrays["solutions"]
    if drawn:
        log.info("sudoku: drew %d puzzles with %d-%d blanks in %.1f s", drawn, lo, hi, seconds)
    x = torch.from_numpy(puzzles[:n].astype(np.int64)).view(-1, 9, 9)
    y = torch.from_numpy(solutions[:n].astype(np.int64)).view(-1, 9, 9)
    return x, y
