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

import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from deqloop.tasks.base import (
    LoadSummary,
    Rows,
    as_predictions,
    check_band,
    check_count,
    iter_lines,
    make_generator,
)

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
    "is_valid_solution",
    "load",
    "rate",
    "solve",
    "split_by_rating",
]

log = logging.getLogger("deqloop.tasks.sudoku")

VOCAB_SIZE = 10
NUM_CLASSES = 10
GRID = (9, 9)

GENERATOR_BANDS: dict[str, tuple[int, int | None]] = {
    "easy": (0, 0),
    "medium": (1, 99),
    "hard": (100, None),
}
"""Rating ranges ``(lowest, highest or None)`` the generator draws from, by name."""

# ---------------------------------------------------------------------------------------------
# Geometry and bit tables. A digit d in 1..9 is bit d-1 of a 9-bit candidate mask.

_CELL = np.arange(81)
_ROW = _CELL // 9
_COL = _CELL % 9
_BOX = (_ROW // 3) * 3 + _COL // 3
_BY_BOX = np.argsort(_BOX * 81 + _CELL)  # cells grouped box by box
_UNITS = np.concatenate([_CELL.reshape(9, 9), _CELL.reshape(9, 9).T, _BY_BOX.reshape(9, 9)])  # (27, 9)
_DIGIT_BITS = np.arange(9, dtype=np.int16)
_BIT = np.array([0] + [1 << d for d in range(9)], dtype=np.int16)  # digit -> mask
_POP = np.array([bin(m).count("1") for m in range(512)], dtype=np.int8)  # mask -> size
_LOW = np.array([0] + [(m & -m).bit_length() for m in range(1, 512)], dtype=np.int8)  # mask -> least digit
_STACK_LANES = 4096  # lanes per search batch; the stack holds (lanes, 81, 81) int8


def _units(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digit masks of the 27 units ``(L, 27)`` and whether any unit repeats a digit ``(L,)``."""
    masks = np.bitwise_or.reduce(_BIT[grid][:, _UNITS], axis=2)  # (L, 27)
    repeats = (_POP[masks] != (grid != 0)[:, _UNITS].sum(axis=2)).any(axis=1)
    return masks, repeats


def _candidates(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate masks ``(L, 81)`` (0 on filled cells), unit masks ``(L, 27)``, repeats ``(L,)``."""
    masks, repeats = _units(grid)
    used = masks[:, _ROW] | masks[:, 9 + _COL] | masks[:, 18 + _BOX]
    cand = ~used & 511
    cand[grid != 0] = 0
    return cand, masks, repeats


@dataclass(frozen=True)
class _Search:
    count: np.ndarray  # (L,) solutions found, at most max_solutions
    first: np.ndarray  # (L, 81) int8 first solution found, zeros if none
    guesses: np.ndarray  # (L,) digits tried after the first at branching cells
    stuck: np.ndarray  # (L,) needed a guess while branching was off


def _search(
    grids: np.ndarray,
    max_solutions: int,
    *,
    hidden: bool,
    branch: bool = True,
    rng: np.random.Generator | None = None,
) -> _Search:
    """Depth-first search over a batch of grids ``(L, 81)``, all lanes stepping together.

    Each step a lane either fills every cell with one candidate (forced; no guess), or with
    ``hidden`` also fills digits that fit one cell of a unit, or branches on the first cell
    with the fewest candidates. Lanes stop at ``max_solutions`` solutions or an exhausted tree.
    ``rng`` picks branch digits at random (to draw random solution grids) instead of lowest first.
    """
    if len(grids) > _STACK_LANES:
        parts = [
            _search(grids[i : i + _STACK_LANES], max_solutions, hidden=hidden, branch=branch, rng=rng)
            for i in range(0, len(grids), _STACK_LANES)
        ]
        return _Search(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("count", "first", "guesses", "stuck")))
    grid = np.array(grids, dtype=np.int8)
    lanes = len(grid)
    count = np.zeros(lanes, np.int64)
    guesses = np.zeros(lanes, np.int64)
    first = np.zeros((lanes, 81), np.int8)
    stuck = np.zeros(lanes, bool)
    stack_grid = np.zeros((lanes, 81, 81), np.int8)  # grid before the branch
    stack_cell = np.zeros((lanes, 81), np.int64)  # the branching cell
    stack_left = np.zeros((lanes, 81), np.int16)  # digits not yet tried there
    depth = np.zeros(lanes, np.int64)
    active = np.ones(lanes, bool)

    while (act := np.flatnonzero(active)).size:
        g = grid[act]  # (A, 81)
        cand, masks, repeats = _candidates(g)
        size = _POP[cand]
        blank = g == 0
        dead = repeats | (blank & (size == 0)).any(axis=1)
        solved = ~dead & ~blank.any(axis=1)
        live = ~dead & ~solved

        forced = blank & (size == 1) & live[:, None]
        has_forced = forced.any(axis=1)
        g[forced] = _LOW[cand[forced]]
        needs_branch = live & ~has_forced

        if hidden and needs_branch.any():
            h = np.flatnonzero(needs_branch)
            cbits = ((cand[h][:, :, None] >> _DIGIT_BITS) & 1).astype(np.int8)[:, _UNITS]  # (H, 27, 9, 9)
            places = cbits.sum(axis=2)  # (H, 27, 9): cells of a unit that can take a digit
            missing = ((masks[h][:, :, None] >> _DIGIT_BITS) & 1) == 0  # digit not yet in the unit
            nowhere = ((places == 0) & missing).any(axis=(1, 2))
            single = (places == 1) & missing & ~nowhere[:, None, None]
            lane, unit, digit = np.nonzero(single)
            cell = _UNITS[unit, cbits[lane, unit, :, digit].argmax(axis=1)]
            g[h[lane], cell] = digit + 1
            dead[h[nowhere]] = True
            needs_branch[h[nowhere | single.any(axis=(1, 2))]] = False

        if needs_branch.any():
            b = np.flatnonzero(needs_branch)
            if not branch:
                stuck[act[b]] = True
                active[act[b]] = False
            else:
                cell = np.where(blank[b], size[b], 99).argmin(axis=1)
                options = cand[b, cell]
                if rng is None:
                    digit = _LOW[options]
                else:
                    has = ((options[:, None] >> _DIGIT_BITS) & 1).astype(bool)
                    digit = (np.where(has, rng.random(has.shape), -1.0).argmax(axis=1) + 1).astype(np.int8)
                lane, level = act[b], depth[act[b]]
                stack_grid[lane, level] = g[b]
                stack_cell[lane, level] = cell
                stack_left[lane, level] = options & ~_BIT[digit]
                depth[lane] += 1
                g[b, cell] = digit
        grid[act] = g

        if solved.any():
            s = act[solved]
            new = s[count[s] == 0]
            first[new] = grid[new]
            count[s] += 1
        done = solved & (count[act] >= max_solutions)
        active[act[done]] = False
        back = act[(dead | solved) & ~done]
        if back.size:
            exhausted = depth[back] == 0
            active[back[exhausted]] = False
            back = back[~exhausted]
            top = depth[back] - 1
            left = stack_left[back, top]
            digit = _LOW[left]
            grid[back] = stack_grid[back, top]
            grid[back, stack_cell[back, top]] = digit
            left = left & ~_BIT[digit]
            stack_left[back, top] = left
            depth[back] -= left == 0
            guesses[back] += 1
    return _Search(count, first, guesses, stuck)


def _as_grids(puzzles: np.ndarray | Tensor, what: str = "puzzles") -> np.ndarray:
    array = puzzles.detach().cpu().numpy() if isinstance(puzzles, Tensor) else np.asarray(puzzles)
    if array.ndim < 1 or array.size % 81 or (array.shape[-2:] != (9, 9) and array.shape[-1] != 81):
        raise ValueError(f"{what} must have shape (n, 9, 9) or (n, 81), got {array.shape}")
    array = array.reshape(-1, 81)
    if array.size and (array.min() < 0 or array.max() > 9):
        raise ValueError(f"{what} must hold digits 0-9 (0 = blank), got values in [{array.min()}, {array.max()}]")
    return array.astype(np.int8)


@dataclass(frozen=True)
class SolveResult:
    """What :func:`solve` found for each puzzle."""

    solutions: Tensor  # (n,) long: solutions found, capped at max_solutions (1 = unique)
    solution: Tensor  # (n, 9, 9) long: the first solution found, zeros when there is none
    guesses: Tensor  # (n,) long: the rating when max_solutions=2 and the puzzle is unique


def solve(puzzles: np.ndarray | Tensor, max_solutions: int = 2) -> SolveResult:
    """Solve a batch ``(n, 9, 9)`` or ``(n, 81)`` with the rating search (see the module doc).

    ``solutions == 1`` with ``max_solutions >= 2`` proves a puzzle unique; givens that repeat a
    digit in a row, column or box count as unsolvable (``solutions == 0``).
    """
    if isinstance(max_solutions, bool) or not isinstance(max_solutions, int) or max_solutions < 1:
        raise ValueError(f"max_solutions must be a positive int, got {max_solutions!r}")
    grids = _as_grids(puzzles)
    found = _search(grids, max_solutions, hidden=False)
    return SolveResult(
        solutions=torch.from_numpy(found.count),
        solution=torch.from_numpy(found.first.astype(np.int64)).view(-1, 9, 9),
        guesses=torch.from_numpy(found.guesses),
    )


def rate(puzzles: np.ndarray | Tensor) -> Tensor:
    """``(n,)`` long ratings; ``-1`` for puzzles without exactly one solution."""
    result = solve(puzzles, max_solutions=2)
    return torch.where(result.solutions == 1, result.guesses, torch.full_like(result.guesses, -1))


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
            raise ValueError(f"unknown sudoku band {band!r}; expected one of {', '.join(GENERATOR_BANDS)} or (low, high)")
        return GENERATOR_BANDS[band]
    if (
        isinstance(band, tuple)
        and len(band) == 2
        and isinstance(band[0], int)
        and band[0] >= 0
        and (band[1] is None or (isinstance(band[1], int) and band[1] >= band[0]))
    ):
        return band
    raise ValueError(f"band must be a name in {list(GENERATOR_BANDS)} or (low, high or None) ratings, got {band!r}")


def _draw_chunk(low: int, high: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puzzles, solutions and ratings of one chunk's accepted puzzles."""
    solutions = _search(np.zeros((_CHUNK, 81), np.int8), 1, hidden=False, rng=rng).first
    puzzles = solutions.copy()
    order = np.argsort(rng.random((_CHUNK, 81)), axis=1)
    lanes = np.arange(_CHUNK)
    for step in range(81):
        trial = puzzles.copy()
        trial[lanes, order[:, step]] = 0
        if high == 0:  # stay solvable by forced cells alone: rating 0, and unique
            found = _search(trial, 1, hidden=False, branch=False)
            keep = (found.count == 1) & ~found.stuck
        else:  # stay unique; hidden singles only speed the proof up
            keep = _search(trial, 2, hidden=True).count == 1
        puzzles[keep] = trial[keep]
    ratings = np.zeros(_CHUNK, np.int64) if high == 0 else _search(puzzles, 2, hidden=False).guesses
    accept = (ratings >= low) & (True if high is None else ratings <= high)
    return puzzles[accept], solutions[accept], ratings[accept]


@dataclass
class SudokuMeta:
    """Per-puzzle details that come with ``return_meta=True``."""

    ratings: Tensor  # (n,) long; -1 where unknown
    sources: list[str]
    lines: list[int]  # line in the source file; 0 for generated puzzles
    summary: LoadSummary | None = None  # loaders: rows read and skipped
    puzzles_per_second: float | None = None  # generator: the drawing rate (None when cached)


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
    puzzles = np.zeros((0, 81), np.int8)
    solutions = np.zeros((0, 81), np.int8)
    ratings = np.zeros(0, np.int64)
    chunks = 0
    if use_cache and path.exists():
        with np.load(path) as saved:
            puzzles, solutions, ratings = saved["puzzles"], saved["solutions"], saved["ratings"]
            chunks = int(saved["chunks"])
    rate_per_s = None
    if len(puzzles) < n:
        start, before = time.perf_counter(), len(puzzles)
        parts = [(puzzles, solutions, ratings)]
        have = len(puzzles)
        while have < n:
            rng = np.random.default_rng([seed, stream, low, 0 if high is None else high + 1, chunks, _GENERATOR_VERSION])
            part = _draw_chunk(low, high, rng)
            parts.append(part)
            have += len(part[0])
            chunks += 1
            if chunks >= 100 and have < chunks:  # fewer than one puzzle per chunk
                raise RuntimeError(f"sudoku band {band!r} accepted only {have} of {chunks * _CHUNK} drawn puzzles")
        puzzles, solutions, ratings = (np.concatenate(p) for p in zip(*parts))
        seconds = time.perf_counter() - start
        rate_per_s = (len(puzzles) - before) / max(seconds, 1e-9)
        log.info("sudoku: drew %d %s puzzles in %.1f s (%.1f puzzles/s)", len(puzzles) - before, band, seconds, rate_per_s)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez_compressed(tmp, puzzles=puzzles, solutions=solutions, ratings=ratings, chunks=chunks)
            os.replace(tmp, path)
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
    Bad rows raise :class:`~deqloop.tasks.base.DataError`; ``on_error="skip"`` drops them and
    counts them in ``meta.summary``.
    """
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
    for i in sorted(problems):
        problem, value, expected = problems[i]
        rows.bad(lines[i], problem, value, expected)

    rows.summary.loaded = int(keep.sum())
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
        raise ValueError(f"need 0 <= easy_quantile <= hard_quantile <= 1, got {easy_quantile}, {hard_quantile}")
    known = ratings[ratings >= 0].double()
    if known.numel() == 0:
        raise ValueError("no puzzle has a known rating (all are -1)")
    easy_max = torch.quantile(known, easy_quantile, interpolation="lower")
    hard_min = torch.quantile(known, hard_quantile, interpolation="higher")
    easy = torch.nonzero((ratings >= 0) & (ratings <= easy_max)).flatten()
    hard = torch.nonzero((ratings >= hard_min) & (ratings > easy_max)).flatten()
    return easy, hard


# ---------------------------------------------------------------------------------------------
# Metrics


def is_valid_solution(grids: Tensor) -> Tensor:
    """``(n,)`` bool: every row, column and box holds the digits 1-9 once."""
    flat = grids.reshape(-1, 81).long()
    units = flat[:, torch.from_numpy(_UNITS)]  # (n, 27, 9)
    in_range = ((units >= 1) & (units <= 9)).flatten(1).all(dim=1)
    onehot = torch.zeros(*units.shape[:2], 10, dtype=torch.long).scatter_add_(
        2, units.clamp(0, 9), torch.ones_like(units)
    )
    return in_range & (onehot[:, :, 1:] == 1).flatten(1).all(dim=1)


def correct(out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
    """``(n,)`` bool: the predicted grid equals the solution ``y``, or, given the puzzles ``x``,
    is any valid full grid that keeps the givens (the same for unique puzzles)."""
    pred = as_predictions(out, y)
    right = (pred == y).flatten(1).all(dim=1)
    if x is None:
        return right
    if x.shape != y.shape:
        raise ValueError(f"puzzles have shape {tuple(x.shape)}, targets {tuple(y.shape)}; they must match")
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
        raise ValueError(f"x and y must both have shape (n, 9, 9), got {tuple(x.shape)} and {tuple(y.shape)}")
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


_STREAMS = {"train": 0, "val": 1, "hard": 2}


@dataclass(frozen=True)
class Sudoku:
    """The sudoku task.

    Without ``data``: ``train``/``val`` are generated from ``train_band`` (independent streams),
    ``hard`` from ``hard_band``. With ``data`` (a file :func:`load` reads): puzzles are split by
    rating quantiles (:func:`split_by_rating`); ``val`` is a fixed ``val_fraction`` of the easy
    part and ``train`` the rest; each ``make`` draws ``n`` of a part without replacement.
    """

    train_band: str | tuple[int, int | None] = "easy"
    hard_band: str | tuple[int, int | None] = "hard"
    data: str | Path | None = None
    easy_quantile: float = 0.5
    hard_quantile: float = 0.9
    val_fraction: float = 0.1
    cache_dir: str | Path | None = None

    name: ClassVar[str] = "sudoku"
    vocab_size: ClassVar[int] = VOCAB_SIZE
    num_classes: ClassVar[int] = NUM_CLASSES
    grid: ClassVar[tuple[int, ...]] = GRID

    def __post_init__(self) -> None:
        _band_range(self.train_band)
        _band_range(self.hard_band)
        if not 0.0 <= self.easy_quantile <= self.hard_quantile <= 1.0:
            raise ValueError(
                f"Sudoku needs 0 <= easy_quantile <= hard_quantile <= 1, got {self.easy_quantile}, {self.hard_quantile}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"Sudoku.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.data is not None and not Path(self.data).is_file():
            raise FileNotFoundError(f"Sudoku.data: no such file {str(self.data)!r}")

    def make(self, band: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        check_band(band)
        check_count(n)
        if self.data is None:
            source = self.hard_band if band == "hard" else self.train_band
            x, y = generate(n, source, seed, stream=_STREAMS[band], cache_dir=self.cache_dir)  # type: ignore[misc]
            return x, y
        path = Path(self.data)
        x, y, ratings = _load_cached(str(path.resolve()), path.stat().st_mtime_ns)
        easy, hard = split_by_rating(ratings, self.easy_quantile, self.hard_quantile)
        easy = easy[torch.randperm(len(easy), generator=make_generator(0, 1))]
        n_val = max(1, round(self.val_fraction * len(easy)))
        pool = {"train": easy[n_val:], "val": easy[:n_val], "hard": hard}[band]
        if n > len(pool):
            raise ValueError(f"{path}: the {band!r} split has {len(pool)} puzzles, {n} requested")
        pick = pool[torch.randperm(len(pool), generator=make_generator(seed, 2, _STREAMS[band]))[:n]]
        return x[pick], y[pick]

    def correct(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return correct(out, y, x)

    def cell_accuracy(self, out: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        return cell_accuracy(out, y, x)
