"""Sudoku: 9×9 puzzles in, their solutions out; a batched solver, a rated generator, loaders.

Encoding: a puzzle is 81 tokens in row-major order, ``0`` for a blank and ``1``–``9`` for a
given, shaped ``(9, 9)``; the target is the solution's digits (classes ``1``–``9``; class ``0``
is never a target, so a model that predicts it is wrong). ``vocab_size = num_classes = 10``.

Difficulty is a puzzle's *rating*: the number of guesses a most-constrained-cell backtracking
search makes while proving the solution unique. The search fills forced cells (one candidate
left) without guessing, branches on the first cell in row-major order with the fewest
candidates, tries digits in increasing order, and counts every digit tried after the first at a
branching cell; it stops after exhausting the tree or finding a second solution. Rating 0 means
the puzzle falls to forced cells alone. This is the rating in ``../shared/data/sudoku``.

    x, y = generate(1000, "easy", seed=0)            # rated, unique, cached on disk
    x, y = load("sudoku-extreme/train.csv")          # or 81-character line files
    ok = correct(logits, y, x)                       # (n,) bool
    x, y = augment(x, y, generator=g)                # validity-preserving symmetries
"""


from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from deqloop import seeds
from deqloop.errors import ConfigError
from deqloop.tasks.base import Task, as_predictions, check_band, check_count, check_seed
from deqloop.tasks.sudoku_blanks import blanks_band, draw_blanks_lanes, generate_blanks
from deqloop.tasks.sudoku_data import (SudokuMeta, _band_range, cache_root, draw_lanes, generate, load, paper_split,
                                       split_by_rating)
from deqloop.tasks.sudoku_examples import draw_examples
from deqloop.tasks.sudoku_solver import (
    GENERATOR_BANDS,
    GRID,
    NUM_CLASSES,
    VOCAB_SIZE,
    SolveResult,
    is_valid_solution,
    naked_singles_depth,
    rate,
    solve,
)
from deqloop.validate import choice, setting

__all__ = [
    "GENERATOR_BANDS",
    "SolveResult",
    "Sudoku",
    "SudokuMeta",
    "augment",
    "cache_root",
    "cell_accuracy",
    "correct",
    "generate",
    "generate_blanks",
    "is_valid_solution",
    "load",
    "naked_singles_depth",
    "paper_split",
    "rate",
    "solve",
    "split_by_rating",
]

# ---------------------------------------------------------------------------------------------
# Metrics


def correct(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` bool: the predicted grid equals the solution ``y``, or, given the puzzles ``x``,
    is any valid full grid that keeps the givens (the same for unique puzzles)."""
    pred = as_predictions(out, y)
    right = (pred == y).flatten(1).all(dim=1)
    if x is None:
        return right
    if x.shape != y.shape:
        raise ConfigError(f"puzzles have shape {tuple(x.shape)}, targets {tuple(y.shape)}; they must match")
    keeps_givens = ((x == 0) | (pred == x)).flatten(1).all(dim=1)
    return right | (is_valid_solution(pred) & keeps_givens)


def cell_accuracy(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` float: the fraction of cells predicted right; only the blanks of ``x`` when
    given (1.0 for a puzzle with no blanks)."""
    pred = as_predictions(out, y)
    hit = (pred == y).flatten(1).float()
    if x is None:
        return hit.mean(dim=1)
    blank = (x == 0).flatten(1).float()
    counted = blank.sum(dim=1)
    return torch.where(counted > 0, (hit * blank).sum(dim=1) / counted.clamp(min=1), torch.ones_like(counted))


# ---------------------------------------------------------------------------------------------
# Augmentation


def _line_permutation(n: int, generator: torch.Generator | None) -> Tensor:
    """``(n, 9)`` random orders of rows (or columns): bands permuted, rows within each band permuted."""
    bands = torch.argsort(torch.rand(n, 3, generator=generator), dim=1)  # (n, 3)
    within = torch.argsort(torch.rand(n, 3, 3, generator=generator), dim=2)  # (n, 3, 3)
    return (bands[:, :, None] * 3 + within).reshape(n, 9)


def augment(x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The same random validity-preserving symmetry applied to each puzzle and its solution:
    digit relabelling, band and stack permutations, row (column) permutations within bands
    (stacks), and a transpose with probability 1/2. Returns new ``(n, 9, 9)`` tensors."""
    if x.shape != y.shape or x.shape[1:] != GRID:
        raise ConfigError(f"x and y must both have shape (n, 9, 9), got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    rows = _line_permutation(n, generator)
    cols = _line_permutation(n, generator)
    transpose = torch.rand(n, generator=generator) < 0.5
    relabel = torch.cat(
        [torch.zeros(n, 1, dtype=torch.long), 1 + torch.argsort(torch.rand(n, 9, generator=generator), dim=1)], dim=1
    )  # (n, 10): 0 stays blank
    batch = torch.arange(n)[:, None, None]

    def apply(grid: Tensor) -> Tensor:
        moved = grid[batch, rows[:, :, None], cols[:, None, :]]  # (n, 9, 9)
        moved = torch.where(transpose[:, None, None], moved.transpose(1, 2), moved)
        return relabel.gather(1, moved.reshape(n, 81)).view(n, 9, 9)

    return apply(x.long()), apply(y.long())


# ---------------------------------------------------------------------------------------------
# The task


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> tuple[Tensor, Tensor, Tensor]:
    x, y, meta = load(path, return_meta=True)
    return x, y, meta.ratings


_STREAMS = {"train": 0, "val": 1, "hard": 2, "extra": 3}


def _without_ratings(puzzles, solutions, ratings, accept):
    return puzzles, solutions, accept


def _band(value: str | tuple[int, int | None] | list | None) -> str | tuple[int, int | None] | None:
    return tuple(value) if isinstance(value, list) else value  # type: ignore[return-value]


LOSS_CELLS = ("all", "blanks")
SPLITS = ("quantiles", "paper")
_PAPER_VAL_SEED = 42  # the paper's train/val split: torch's random_split with this seed, 80 / 20


@dataclass(frozen=True)
class Sudoku(Task):
    """The sudoku task.

    Without ``data``: ``train``/``val`` are generated (independent streams) from ``train_band``
    (a rating band, ``easy`` by default) or, with ``blanks``, by number of blanks
    (:func:`generate_blanks`); ``hard`` likewise from ``hard_band`` (``hard`` by default) or
    ``hard_blanks``. A split takes its puzzles from one source: setting a rating band and a
    blanks band for the same split is an error. With ``data`` (a file :func:`load` reads) and
    ``split="quantiles"`` (the default): puzzles are split by rating quantiles
    (:func:`split_by_rating`); ``val`` is a fixed ``val_fraction`` (0.1) of the easy part and
    ``train`` the rest. With ``split="paper"``, ``data`` and ``test_data`` are Sudoku-Extreme's
    ``train.csv`` and ``test.csv`` split as the paper does (:func:`paper_split`): train and val
    from the first 50,000 training rows rated below the training file's 80th percentile, 80 / 20
    (``val_fraction`` 0.2) by the paper's own permutation (``torch.randperm`` seeded 42, as its
    ``random_split``), ``hard`` the first 10,000 test rows rated at or above it; the loss grades
    all 81 cells (``loss_cells="all"``, the default). Each ``make`` draws ``n`` of a part without
    replacement. With ``augment`` every training batch gets random validity-preserving
    symmetries. ``loss_cells="blanks"`` grades only the blanks in the training loss
    (:meth:`loss_mask`); ``"all"`` grades all 81 cells.
    """

    train_band: str | tuple[int, int | None] | None = setting(
        "rating band of generated training puzzles: easy, medium, hard or [low, high] as JSON "
        "(default easy, unless blanks is set)", default=None)
    hard_band: str | tuple[int, int | None] | None = setting(
        "rating band of generated hard puzzles (default hard, unless hard_blanks is set)", default=None)
    data: str | None = setting("a puzzle file (Sudoku-Extreme CSV or 81-character lines), split easy/hard by "
                               "rating, instead of generated puzzles", default=None)
    test_data: str | None = setting("with split=paper: Sudoku-Extreme's test.csv (data is its train.csv)",
                                    default=None)
    split: str = setting("with data: quantiles (easy/hard by the rating quantiles below) or paper (Sudoku-Extreme "
                         "as the paper splits it: train on the first 50k rows of data rated below its 80th "
                         "percentile, test on the first 10k rows of test_data at or above it)", default="quantiles")
    easy_quantile: float = setting("with data, split=quantiles: puzzles rated at most this quantile are easy",
                                   default=0.5)
    hard_quantile: float = setting("with data, split=quantiles: puzzles rated above this quantile are hard",
                                   default=0.9)
    val_fraction: float | None = setting("with data: the fraction of the easy (training) puzzles kept for "
                                         "validation (default 0.1; 0.2 with split=paper, the paper's)", default=None)
    cache_dir: str | None = setting("where generated puzzles are cached (default $DEQLOOP_CACHE or "
                                    "~/.cache/deqloop)", default=None)
    augment: bool = setting("apply random validity-preserving symmetries to each training batch", default=False)
    blanks: tuple[int, int] | None = setting(
        "generate training/validation puzzles with lo-hi blanks (1 <= lo <= hi <= 64), unique, instead of "
        "by rating", default=None)
    hard_blanks: tuple[int, int] | None = setting(
        "generate hard puzzles with lo-hi blanks instead of by rating", default=None)
    loss_cells: str = setting("cells the training loss grades: all or blanks", default="all")

    name: ClassVar[str] = "sudoku"
    vocab_size: ClassVar[int] = VOCAB_SIZE
    num_classes: ClassVar[int] = NUM_CLASSES
    grid: ClassVar[tuple[int, ...]] = GRID

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_band", _band(self.train_band))
        object.__setattr__(self, "hard_band", _band(self.hard_band))
        for name in ("data", "test_data", "cache_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        for band, blanks, which in (("train_band", "blanks", "training"), ("hard_band", "hard_blanks", "hard")):
            if getattr(self, band) is not None:
                _band_range(getattr(self, band))
            if getattr(self, blanks) is not None:
                object.__setattr__(self, blanks, blanks_band(getattr(self, blanks), f"Sudoku.{blanks}"))
                if getattr(self, band) is not None:
                    raise ConfigError(f"Sudoku.{band} and Sudoku.{blanks} both choose the {which} puzzles (by rating "
                                      f"and by blanks); set one of them")
                if self.data is not None:
                    raise ConfigError(f"Sudoku.data and Sudoku.{blanks} both choose the {which} puzzles (from a "
                                      f"file and by blanks); set one of them")
        choice("Sudoku.loss_cells", self.loss_cells, LOSS_CELLS)
        choice("Sudoku.split", self.split, SPLITS)
        if self.split == "paper" and (self.data is None or self.test_data is None):
            raise ConfigError("Sudoku.split='paper' needs data (Sudoku-Extreme's train.csv) and test_data (its "
                              "test.csv)")
        if self.test_data is not None and self.split != "paper":
            raise ConfigError("Sudoku.test_data is the paper's test file: it needs split='paper'")
        if self.val_fraction is None:
            object.__setattr__(self, "val_fraction", 0.2 if self.split == "paper" else 0.1)
        if not 0.0 <= self.easy_quantile <= self.hard_quantile <= 1.0:
            raise ConfigError(
                f"Sudoku needs 0 <= easy_quantile <= hard_quantile <= 1, got {self.easy_quantile}, {self.hard_quantile}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"Sudoku.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("data", "test_data"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                raise ConfigError(f"Sudoku.{name}: no such file {str(getattr(self, name))!r}")

    def make(self, split: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        check_band(split)
        check_count(n)
        check_seed(seed)
        return self._draw(split, n, seed)

    def train_examples(self, seed: int, step: int, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Examples ``start..stop-1`` of ``step``'s batch, never cached on disk (each step's puzzles
        are drawn once, so a cache would write a file a step). Generated: one puzzle per example
        seed (``seeds.example_seeds``), drawn together (:func:`draw_examples`), from the training
        band or blanks. From a file: examples ``start..stop-1`` of the draw ``make("train", stop)``
        would make from a seed of ``(seed, step)``; the step's permutation of the pool is shared,
        only the examples asked for are gathered."""
        if self.data is None:
            example_seeds = seeds.example_seeds(start, stop, seed, seeds.BATCH, step)
            if self.blanks is not None:
                lo, hi = self.blanks
                return draw_examples(example_seeds, lambda rng, lanes: draw_blanks_lanes(lo, hi, rng, lanes),
                                     f"sudoku blanks {lo}-{hi}: too few grids reached their blanks uniquely")
            band = self.train_band if self.train_band is not None else "easy"
            low, high = _band_range(band)
            return draw_examples(example_seeds, lambda rng, lanes: _without_ratings(*draw_lanes(low, high, rng, lanes)),
                                 f"sudoku band {band!r}")
        x, y, pool = self._pool("train")
        return self._pick(x, y, pool, "train", seeds.derive_seed(seed, seeds.BATCH, step) % 2**31, start, stop)

    def _draw(self, split: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
        if self.data is None:
            blanks = self.hard_blanks if split == "hard" else self.blanks
            if blanks is not None:
                return generate_blanks(n, blanks, seed, stream=_STREAMS[split], cache_dir=self.cache_dir)
            band = self.hard_band if split == "hard" else self.train_band
            source = band if band is not None else ("hard" if split == "hard" else "easy")
            x, y = generate(n, source, seed, stream=_STREAMS[split], cache_dir=self.cache_dir)  # type: ignore[misc]
            return x, y
        x, y, pool = self._pool(split)
        return self._pick(x, y, pool, split, seed, 0, n)

    def _pick(self, x: Tensor, y: Tensor, pool: Tensor, split: str, seed: int, start: int,
              stop: int) -> tuple[Tensor, Tensor]:
        """Puzzles ``start..stop-1`` of the permutation of ``pool`` (indices into ``x``, ``y``) seeded by ``seed``."""
        if stop > len(pool):
            files = self.data if split != "hard" or self.test_data is None else self.test_data
            raise ConfigError(f"{files}: the {split!r} split has {len(pool)} puzzles, {stop} requested")
        pick = pool[torch.randperm(len(pool), generator=seeds.generator(seed, 2, _STREAMS[split]))[start:stop]]
        return x[pick], y[pick]

    def _pool(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """The puzzles ``x``, ``y`` a split draws from (a file's, whole) and the indices of its part."""
        path = Path(self.data)  # type: ignore[arg-type]
        x, y, ratings = _load_cached(str(path.resolve()), path.stat().st_mtime_ns)
        if self.split == "paper":
            test = Path(self.test_data)  # type: ignore[arg-type]
            xt, yt, test_ratings = _load_cached(str(test.resolve()), test.stat().st_mtime_ns)
            easy, hard, _ = paper_split(ratings, test_ratings)
            if split == "hard":
                return xt, yt, hard
            n_train = int((1 - self.val_fraction) * len(easy))  # type: ignore[operator]
            easy = easy[torch.randperm(len(easy), generator=torch.Generator().manual_seed(_PAPER_VAL_SEED))]
            return x, y, easy[:n_train] if split == "train" else easy[n_train:]
        easy, hard = split_by_rating(ratings, self.easy_quantile, self.hard_quantile)
        easy = easy[torch.randperm(len(easy), generator=seeds.generator(0, 1))]
        n_val = max(1, round(self.val_fraction * len(easy)))  # type: ignore[operator]
        return x, y, {"train": easy[n_val:], "val": easy[:n_val], "hard": hard}[split]

    def augment_batch(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return augment(x, y, generator=generator) if self.augment else (x, y)

    def extra_split(self, spec: str, n: int, seed: int) -> tuple[str, tuple[Tensor, Tensor]]:
        """``spec`` is a puzzle file (:func:`load`; its first ``n`` puzzles) or ``blanks:LO-HI``
        (``n`` generated unique puzzles with LO to HI blanks, a stream of their own, named
        ``"LO-HI blanks"``)."""
        if spec.startswith("blanks:"):
            band = blanks_band(spec[len("blanks:"):], f"extra set {spec!r}")
            return f"{band[0]}-{band[1]} blanks", generate_blanks(n, band, seed, stream=_STREAMS["extra"],
                                                                  cache_dir=self.cache_dir)
        if not Path(spec).is_file():
            raise ConfigError(f"no such sudoku file: {spec} (a puzzle file, or blanks:LO-HI for generated puzzles)")
        x, y = load(spec)[:2]
        return Path(spec).stem, (x[:n], y[:n])

    def propagation_depth(self, x: Tensor | None = None) -> int | None:
        """The most rounds of naked singles (:func:`naked_singles_depth`) a puzzle of ``x`` needs;
        ``None`` without ``x`` (the training puzzles' depth is not known in advance) or when naked
        singles alone cannot finish some puzzle of ``x``."""
        if x is None or len(x) == 0:
            return None
        depth = naked_singles_depth(x).max().item()
        return None if depth == float("inf") else int(depth)

    def loss_mask(self, x: Tensor, y: Tensor) -> Tensor | None:
        """With ``loss_cells="blanks"`` the blanks of ``x``; else ``None`` (every cell)."""
        return x == 0 if self.loss_cells == "blanks" else None

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return correct(out, y, x)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return cell_accuracy(out, y, x)
