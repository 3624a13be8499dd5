"""Sudoku data: a rated generator of unique puzzles (cached on disk) and loaders of puzzle files.

    x, y = generate(1000, "easy", seed=0)            # rated, unique, cached on disk
    x, y = load("sudoku-extreme/train.csv")          # or 81-character line files
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from deqloop.errors import ConfigError
from deqloop.seeds import LaneStreams
from deqloop.tasks.base import check_count
from deqloop.tasks.io import LoadSummary, Rows, check_file, iter_lines
from deqloop.tasks.sudoku_solver import (
    GENERATOR_BANDS,
    _search,
    _units,
    is_valid_solution,
)

__all__ = ["PAPER_QUANTILE", "PAPER_TEST_ROWS", "PAPER_TRAIN_ROWS", "SudokuMeta", "cache_root", "generate", "load",
           "paper_split", "split_by_rating"]

log = logging.getLogger("deqloop.tasks.sudoku")

# ---------------------------------------------------------------------------------------------
# Generator

_GENERATOR_VERSION = 1  # bump when the drawing procedure changes: it names the cache files
_CHUNK = 256  # puzzles drawn per chunk; chunk k of a stream has its own seed


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$DEQLOOP_CACHE``, else ``~/.cache/deqloop``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DEQLOOP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "deqloop"


def _band_range(band: str | tuple[int, int | None]) -> tuple[int, int | None]:
    if isinstance(band, str):
        if band not in GENERATOR_BANDS:
            raise ConfigError(f"unknown sudoku band {band!r}; expected one of {', '.join(GENERATOR_BANDS)} or (low, high)")
        return GENERATOR_BANDS[band]
    if (
        isinstance(band, tuple)
        and len(band) == 2
        and isinstance(band[0], int)
        and band[0] >= 0
        and (band[1] is None or (isinstance(band[1], int) and band[1] >= band[0]))
    ):
        return band
    raise ConfigError(f"band must be a name in {list(GENERATOR_BANDS)} or (low, high or None) ratings, got {band!r}")


def _draw_chunk(low: int, high: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puzzles, solutions and ratings of one chunk's accepted puzzles."""
    puzzles, solutions, ratings, accept = draw_lanes(low, high, rng, _CHUNK)
    return puzzles[accept], solutions[accept], ratings[accept]


def draw_lanes(low: int, high: int | None, rng: np.random.Generator | LaneStreams,
               n: int) -> tuple[np.ndarray, ...]:
    """Puzzles, solutions, ratings of ``n`` candidates, one a lane, and whether each is accepted
    (its rating in ``[low, high]``); with :class:`~deqloop.seeds.LaneStreams` each lane draws alone."""
    solutions = _search(np.zeros((n, 81), np.int8), 1, hidden=False, rng=rng).first
    puzzles = solutions.copy()
    order = np.argsort(rng.random((n, 81)), axis=1)
    lanes = np.arange(n)
    for step in range(81):
        trial = puzzles.copy()
        trial[lanes, order[:, step]] = 0
        if high == 0:  # stay solvable by forced cells alone: rating 0, and unique
            found = _search(trial, 1, hidden=False, branch=False)
            keep = (found.count == 1) & ~found.stuck
        else:  # stay unique; hidden singles only speed the proof up
            keep = _search(trial, 2, hidden=True).count == 1
        puzzles[keep] = trial[keep]
    ratings = np.zeros(n, np.int64) if high == 0 else _search(puzzles, 2, hidden=False).guesses
    accept = (ratings >= low) & (True if high is None else ratings <= high)
    return puzzles, solutions, ratings, accept


@dataclass
class SudokuMeta:
    """Per-puzzle details that come with ``return_meta=True``."""

    ratings: Tensor  # (n,) long; -1 where unknown
    sources: list[str]
    lines: list[int]  # line in the source file; 0 for generated puzzles
    summary: LoadSummary | None = None  # loaders: rows read and skipped
    puzzles_per_second: float | None = None  # generator: the drawing rate (None when cached)


def draw_cached(path: Path, n: int, empty: dict[str, np.ndarray], draw, *, use_cache: bool,
                failure: str) -> tuple[dict[str, np.ndarray], int, float]:
    """At least ``n`` rows of the arrays ``empty`` names (their dtypes and row shapes), from the
    cache file ``path`` and, for what it lacks, from ``draw(chunk)`` (a tuple of arrays in the
    order of ``empty``; chunk ``i`` is seeded by the caller from ``i``, so a smaller ``n`` is a
    prefix of a larger one). The extended set is written back atomically. Returns the arrays, the
    number of rows drawn now and the seconds spent drawing (0 and 0.0 when the cache held enough).
    Fewer than one accepted row per chunk over 100 chunks raises ``RuntimeError(failure + counts)``."""
    arrays, chunks = dict(empty), 0
    if use_cache and path.exists():
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in empty}
            chunks = int(saved["chunks"])
    first = next(iter(arrays))
    before = len(arrays[first])
    if before >= n:
        return arrays, 0, 0.0
    start = time.perf_counter()
    parts, have = [tuple(arrays.values())], before
    while have < n:
        part = draw(chunks)
        parts.append(part)
        have += len(part[0])
        chunks += 1
        if chunks >= 100 and have < chunks:  # fewer than one accepted row per chunk
            raise RuntimeError(f"{failure}: only {have} accepted in {chunks} chunks")
    arrays = {k: np.concatenate(col) for k, col in zip(empty, zip(*parts))}
    seconds = time.perf_counter() - start
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, **arrays, chunks=chunks)
        os.replace(tmp, path)
    return arrays, have - before, seconds


def generate(
    n: int,
    band: str | tuple[int, int | None] = "easy",
    seed: int = 0,
    *,
    stream: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    return_meta: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, SudokuMeta]:
    """``n`` unique puzzles whose rating lies in ``band``, and their solutions.

    Each puzzle is a random solution grid (a backtracking fill with random digit order) with
    clues removed in random order while the puzzle stays unique (proved by the solver; for the
    ``easy`` band, rating 0, while forced cells alone still solve it), then rated and kept if
    the rating is in the band. Draws come in chunks seeded by ``(seed, stream, band, chunk)``, so
    a smaller ``n`` gives a prefix of a larger one. Sets are cached under
    ``cache_root(cache_dir)/sudoku`` and extended when more puzzles are asked for.
    """
    check_count(n)
    low, high = _band_range(band)
    name = f"r{low}-{'inf' if high is None else high}-stream{stream}-seed{seed}-v{_GENERATOR_VERSION}.npz"
    path = cache_root(cache_dir) / "sudoku" / name
    empty = {"puzzles": np.zeros((0, 81), np.int8), "solutions": np.zeros((0, 81), np.int8),
             "ratings": np.zeros(0, np.int64)}

    def draw(chunk: int) -> tuple[np.ndarray, ...]:
        return _draw_chunk(low, high, np.random.default_rng(
            [seed, stream, low, 0 if high is None else high + 1, chunk, _GENERATOR_VERSION]))

    arrays, drawn, seconds = draw_cached(path, n, empty, draw, use_cache=use_cache, failure=f"sudoku band {band!r}")
    puzzles, solutions, ratings = arrays["puzzles"], arrays["solutions"], arrays["ratings"]
    rate_per_s = None
    if drawn:
        rate_per_s = drawn / max(seconds, 1e-9)
        log.info("sudoku: drew %d %s puzzles in %.1f s (%.1f puzzles/s)", drawn, band, seconds, rate_per_s)
    x = torch.from_numpy(puzzles[:n].astype(np.int64)).view(-1, 9, 9)
    y = torch.from_numpy(solutions[:n].astype(np.int64)).view(-1, 9, 9)
    if not return_meta:
        return x, y
    source = f"generated:{band if isinstance(band, str) else f'{low}-{high}'}"
    meta = SudokuMeta(torch.from_numpy(ratings[:n].copy()), [source] * n, [0] * n, puzzles_per_second=rate_per_s)
    return x, y, meta


# ---------------------------------------------------------------------------------------------
# Loaders

_PUZZLE_CHARS = frozenset("0123456789.")
_ANSWER_CHARS = frozenset("123456789")
_CSV_COLUMNS = ("source", "question", "answer", "rating")
_CSV_ALIASES = {"quizzes": "question", "puzzle": "question", "solutions": "answer", "solution": "answer"}


def _digits(text: str) -> np.ndarray:
    return np.frombuffer(text.replace(".", "0").encode("ascii"), dtype=np.uint8) - ord("0")


def load(
    path: str | Path,
    on_error: str = "raise",
    *,
    require_unique: bool = True,
    return_meta: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, SudokuMeta]:
    """Puzzles ``x`` and solutions ``y``, ``(n, 9, 9)`` LongTensors, from a file.

    Two layouts, told apart by the first line that is not blank or a ``#`` comment:

    * CSV ``source,question,answer,rating`` (Sudoku-Extreme as downloaded; the header is
      optional, and with a header the ``answer``/``rating`` columns may be missing or empty;
      ``quizzes``/``puzzle`` and ``solutions``/``solution`` are read as question and answer).
    * One puzzle per line: 81 characters, ``.`` or ``0`` for blanks, ``#`` starts a comment.

    Missing answers and ratings are computed by the rating search (:func:`solve`). Given answers
    are checked to be valid and to agree with the givens, but not re-proved unique.
    Bad rows (a puzzle seen on an earlier line among them) raise
    :class:`~deqloop.tasks.base.DataError`; ``on_error="skip"`` drops them and counts them in
    ``meta.summary``. A file with no puzzle row, or none left, is a ``DataError`` either way.
    """
    check_file(path)
    rows = Rows(path, on_error)
    questions: list[np.ndarray] = []
    answers: list[np.ndarray | None] = []
    ratings: list[int] = []
    sources: list[str] = []
    lines: list[int] = []
    layout: str | None = None
    columns: dict[str, int] = {}
    width = 0

    for number, text in iter_lines(path, rows):
        stripped = text.strip()
        if not stripped or (layout != "csv" and stripped.startswith("#")):
            continue
        if layout is None:
            if "," in stripped:
                layout = "csv"
                header = [c.strip().lower() for c in stripped.split(",")]
                header = [_CSV_ALIASES.get(c, c) for c in header]
                if "question" in header:
                    columns = {c: header.index(c) for c in _CSV_COLUMNS if c in header}
                    width = len(header)
                    continue
                columns = {c: i for i, c in enumerate(_CSV_COLUMNS)}
                width = len(_CSV_COLUMNS)
            else:
                layout = "lines"
        rows.summary.rows += 1
        if layout == "lines":
            question = stripped.split("#", 1)[0].strip()
            answer_text, rating, source = "", -1, Path(path).name
        else:
            fields = text.split(",")
            if len(fields) != width:
                rows.bad(number, "wrong number of columns", text, f"{width} columns")
                continue
            question = fields[columns["question"]].strip()
            answer_text = fields[columns["answer"]].strip() if "answer" in columns else ""
            source = fields[columns["source"]].strip() if "source" in columns else Path(path).name
            rating_text = fields[columns["rating"]].strip() if "rating" in columns else ""
            rating = -1
            if rating_text:
                try:
                    rating = int(rating_text)
                except ValueError:
                    rating = -2
                if not 0 <= rating < 2**62:
                    rows.bad(number, "rating is not a non-negative integer", rating_text)
                    continue
        if len(question) != 81 or not set(question) <= _PUZZLE_CHARS:
            rows.bad(number, "bad puzzle string", question, "81 characters of 1-9, with . or 0 for blanks")
            continue
        digits = _digits(question)
        answer = None
        if answer_text:
            if len(answer_text) != 81 or not set(answer_text) <= _ANSWER_CHARS:
                rows.bad(number, "bad answer string", answer_text, "81 digits 1-9")
                continue
            answer = _digits(answer_text)
        questions.append(digits)
        answers.append(answer)
        ratings.append(rating)
        sources.append(source)
        lines.append(number)

    if not rows.summary.rows:
        raise rows.fatal(None, "no puzzle rows (the file is empty, or holds only a header, comments or blank lines)")
    grid = np.array(questions, dtype=np.int8).reshape(-1, 81)
    keep = np.ones(len(grid), bool)
    problems: dict[int, tuple[str, str, str | None]] = {}

    def flag(i: int, problem: str, expected: str | None = None, value: np.ndarray | None = None) -> None:
        keep[i] = False
        problems[i] = (problem, "".join(map(str, grid[i] if value is None else value)).replace("0", "."), expected)

    _, repeats = _units(grid)
    for i in np.flatnonzero(repeats):
        flag(i, "contradictory givens (a digit repeats in a row, column or box)")
    has_answer = np.array([a is not None for a in answers], bool)
    solution = np.array([a if a is not None else np.zeros(81, np.uint8) for a in answers], np.int8).reshape(-1, 81)
    with_answer = np.flatnonzero(has_answer & keep)
    if with_answer.size:
        valid = is_valid_solution(torch.from_numpy(solution[with_answer].astype(np.int64))).numpy()
        given = grid[with_answer] != 0
        agree = ((solution[with_answer] == grid[with_answer]) | ~given).all(axis=1)
        for i, v, a in zip(with_answer, valid, agree):
            if not v:
                flag(i, "answer is not a valid sudoku solution", value=solution[i])
            elif not a:
                flag(i, "answer contradicts the givens", value=solution[i])
    rating_array = np.array(ratings, np.int64)
    to_solve = np.flatnonzero(keep & (~has_answer | (rating_array < 0)))
    if to_solve.size:
        found = _search(grid[to_solve], 2, hidden=False)
        for i, count, first, guesses in zip(to_solve, found.count, found.first, found.guesses):
            if count == 0:
                flag(i, "puzzle has no solution")
            elif count > 1 and require_unique:
                flag(i, "puzzle has more than one solution", "a unique solution (or require_unique=False)")
            else:
                if not has_answer[i]:
                    solution[i] = first
                rating_array[i] = guesses if count == 1 else -1
    first: dict[bytes, int] = {}  # a good puzzle -> the row it was first read from
    for i in np.flatnonzero(keep):  # the same puzzle twice would leak between splits
        if (seen := first.setdefault(grid[i].tobytes(), i)) != i:
            flag(i, f"duplicate puzzle: the same as line {lines[seen]}", "each puzzle once (on_error='skip' drops "
                 "the repeats)")
    for i in sorted(problems):
        problem, value, expected = problems[i]
        rows.bad(lines[i], problem, value, expected)

    rows.summary.loaded = int(keep.sum())
    if not rows.summary.loaded:
        raise rows.fatal(None, f"no puzzle loaded: {rows.summary}")
    summary = rows.finish()
    x = torch.from_numpy(grid[keep].astype(np.int64)).view(-1, 9, 9)
    y = torch.from_numpy(solution[keep].astype(np.int64)).view(-1, 9, 9)
    if not return_meta:
        return x, y
    kept = np.flatnonzero(keep)
    meta = SudokuMeta(
        torch.from_numpy(rating_array[keep].copy()),
        [sources[i] for i in kept],
        [lines[i] for i in kept],
        summary=summary,
    )
    return x, y, meta


def split_by_rating(
    ratings: Tensor, easy_quantile: float = 0.5, hard_quantile: float = 0.9
) -> tuple[Tensor, Tensor]:
    """Indices of the easy puzzles (rating at or below the ``easy_quantile`` rating) and of the
    hard ones (at or above the ``hard_quantile`` rating, and above the easy threshold)."""
    if not 0.0 <= easy_quantile <= hard_quantile <= 1.0:
        raise ConfigError(f"need 0 <= easy_quantile <= hard_quantile <= 1, got {easy_quantile}, {hard_quantile}")
    known = ratings[ratings >= 0].double()
    if known.numel() == 0:
        raise ConfigError("no puzzle has a known rating (all are -1)")
    easy_max = torch.quantile(known, easy_quantile, interpolation="lower")
    hard_min = torch.quantile(known, hard_quantile, interpolation="higher")
    easy = torch.nonzero((ratings >= 0) & (ratings <= easy_max)).flatten()
    hard = torch.nonzero((ratings >= hard_min) & (ratings > easy_max)).flatten()
    return easy, hard


PAPER_QUANTILE = 0.8  # Sudoku-Extreme as the paper splits it: train below, test at or above q80 ...
PAPER_TRAIN_ROWS = 50_000  # ... the first 50,000 training rows below it ...
PAPER_TEST_ROWS = 10_000  # ... and the first 10,000 test rows at or above it


def paper_split(
    train_ratings: Tensor, test_ratings: Tensor, *, quantile: float = PAPER_QUANTILE,
    train_rows: int = PAPER_TRAIN_ROWS, test_rows: int = PAPER_TEST_ROWS,
) -> tuple[Tensor, Tensor, float]:
    """The paper's Sudoku-Extreme split of a train and a test file (``deepthinking/utils/sudoku_data.py``
    of the authors' code, lines 45-63 and 103-143, with ``train_data: expert``, ``test_data:
    extreme``, ``max_train_samples: 50000``, ``max_test_samples: 10000`` in
    ``config/problem/sudoku.yaml``): the threshold is the ``quantile`` (0.8) of the training file's
    ratings (linear interpolation); the training puzzles are the first ``train_rows`` rows of the
    training file, in file order, rated below it, the test puzzles the first ``test_rows`` rows of
    the test file rated at or above it. Returns ``(train indices, test indices, threshold)``;
    unrated rows (rating -1) are in neither."""
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"quantile must be in [0, 1], got {quantile}")
    rated = train_ratings[train_ratings >= 0].double().numpy()
    if rated.size == 0:
        raise ConfigError("no training puzzle has a known rating (all are -1): the paper's split needs ratings")
    threshold = float(np.quantile(rated, quantile))
    train = torch.nonzero((train_ratings >= 0) & (train_ratings.double() < threshold)).flatten()[:train_rows]
    test = torch.nonzero(test_ratings.double() >= threshold).flatten()[:test_rows]
    return train, test, threshold
