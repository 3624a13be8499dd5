"""Sudoku's combinatorics: a batched most-constrained-cell search that solves, counts
solutions (uniqueness) and rates puzzles by the number of guesses it makes.

Encoding: a puzzle is 81 cells in row-major order, ``0`` for a blank and ``1``–``9`` for a given.
A puzzle's *rating* is the number of guesses a most-constrained-cell backtracking search makes
while proving the solution unique: the search fills forced cells (one candidate left) without
guessing, branches on the first cell in row-major order with the fewest candidates, tries digits
in increasing order, and counts every digit tried after the first at a branching cell; it stops
after exhausting the tree or finding a second solution. Rating 0 means the puzzle falls to forced
cells alone. This is the rating in ``../shared/data/sudoku``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deqloop.errors import ConfigError
from deqloop.seeds import LaneStreams

__all__ = ["GENERATOR_BANDS", "GRID", "NUM_CLASSES", "SolveResult", "VOCAB_SIZE", "is_valid_solution", "naked_singles_depth",
           "rate", "solve"]

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
    rng: np.random.Generator | LaneStreams | None = None,
) -> _Search:
    """Depth-first search over a batch of grids ``(L, 81)``, all lanes stepping together.

    Each step a lane either fills every cell with one candidate (forced; no guess), or with
    ``hidden`` also fills digits that fit one cell of a unit, or branches on the first cell
    with the fewest candidates. Lanes stop at ``max_solutions`` solutions or an exhausted tree.
    ``rng`` picks branch digits at random (to draw random solution grids) instead of lowest first;
    with :class:`~deqloop.seeds.LaneStreams` each lane's digits come from its own stream.
    """
    if len(grids) > _STACK_LANES:
        parts = [
            _search(grids[i : i + _STACK_LANES], max_solutions, hidden=hidden, branch=branch,
                    rng=rng[i : i + _STACK_LANES] if isinstance(rng, LaneStreams) else rng)
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
                    u = rng.random_rows(act[b], 9) if isinstance(rng, LaneStreams) else rng.random(has.shape)
                    digit = (np.where(has, u, -1.0).argmax(axis=1) + 1).astype(np.int8)
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
        raise ConfigError(f"{what} must have shape (n, 9, 9) or (n, 81), got {array.shape}")
    array = array.reshape(-1, 81)
    if array.size and (array.min() < 0 or array.max() > 9):
        raise ConfigError(f"{what} must hold digits 0-9 (0 = blank), got values in [{array.min()}, {array.max()}]")
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
        raise ConfigError(f"max_solutions must be a positive int, got {max_solutions!r}")
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


def is_valid_solution(grids: Tensor) -> Tensor:
    """``(n,)`` bool: every row, column and box holds the digits 1-9 once."""
    flat = grids.reshape(-1, 81).long()
    units = flat[:, torch.from_numpy(_UNITS).to(flat.device)]  # (n, 27, 9)
    in_range = ((units >= 1) & (units <= 9)).flatten(1).all(dim=1)
    onehot = torch.zeros(*units.shape[:2], 10, dtype=torch.long, device=flat.device).scatter_add_(
        2, units.clamp(0, 9), torch.ones_like(units)
    )
    return in_range & (onehot[:, :, 1:] == 1).flatten(1).all(dim=1)


def naked_singles_depth(puzzles: np.ndarray | Tensor) -> Tensor:
    """``(n,)`` float: rounds of naked singles each puzzle needs; ``inf`` where they get stuck.

    A round fills, all at once, every blank that has exactly one candidate left (a digit no
    row, column or box of the cell holds yet). The depth is the number of rounds until no blank
    is left: 0 for a full grid. A puzzle gets stuck (``inf``) when a round finds no such cell
    while blanks remain, or finds a contradiction (a repeated digit, a blank without candidates).
    """
    grid = _as_grids(puzzles).copy()
    depth = np.zeros(len(grid), np.float64)
    active = np.ones(len(grid), bool)
    while (act := np.flatnonzero(active)).size:
        g = grid[act]
        cand, _, repeats = _candidates(g)
        blank = g == 0
        size = _POP[cand]
        solved = ~repeats & ~blank.any(axis=1)
        forced = blank & (size == 1)
        stuck = ~solved & (repeats | (blank & (size == 0)).any(axis=1) | ~forced.any(axis=1))
        depth[act[stuck]] = np.inf
        active[act[solved | stuck]] = False
        go = ~solved & ~stuck
        g[forced & go[:, None]] = _LOW[cand[forced & go[:, None]]]
        grid[act] = g
        depth[act[go]] += 1
    return torch.from_numpy(depth)
