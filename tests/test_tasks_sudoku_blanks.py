"""Sudoku by number of blanks: the generator, the naked-singles depth, the task's settings and
its blanks-only loss."""

from __future__ import annotations

import math

import pytest
import torch

from deqloop.tasks import sudoku_blanks
from deqloop.tasks.sudoku_blanks import generate_blanks
from deqloop.tasks.sudoku_solver import is_valid_solution, naked_singles_depth, rate, solve
from deqloop.train.objectives import cross_entropy

ANSWER = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
EASY = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def grid(text: str) -> torch.Tensor:
    return torch.tensor([0 if c in ".0" else int(c) for c in text]).view(1, 9, 9)


# --------------------------------------------------------------------------------------------- naked singles


def test_naked_singles_depth_on_hand_made_grids():
    full = grid(ANSWER)
    one = full.clone()
    one[0, 4, 4] = 0  # one blank: one round
    row = full.clone()
    row[0, 0] = 0  # a whole row: each cell's column leaves one digit, one round
    cross = full.clone()
    cross[0, 0] = 0
    cross[0, :, 0] = 0  # row 0 and column 0: all but the corner are singles, the corner comes second
    rectangle = full.clone()  # 6 7 / 7 6 in rows 0 and 3, columns 3 and 4 (two boxes): two solutions
    rectangle[0, 0, 3:5] = 0
    rectangle[0, 3, 3:5] = 0
    puzzles = torch.cat([full, one, row, cross, rectangle, torch.zeros(1, 9, 9, dtype=torch.long)])
    depth = naked_singles_depth(puzzles)
    assert depth.tolist() == [0, 1, 1, 2, math.inf, math.inf]
    assert solve(rectangle).solutions.item() == 2


def test_naked_singles_depth_is_stuck_on_contradictions():
    clash = grid(ANSWER)
    clash[0, 0, 0] = 0
    clash[0, 0, 1] = 4  # row 0 holds 4 twice
    assert naked_singles_depth(clash).tolist() == [math.inf]


# --------------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("band", [(4, 24), (46, 55)])
def test_generated_puzzles_are_unique_valid_and_within_the_band(tmp_path, band):
    x, y = generate_blanks(40, band, seed=0, cache_dir=tmp_path)
    assert x.shape == y.shape == (40, 9, 9)
    blanks = (x == 0).flatten(1).sum(dim=1)
    assert ((blanks >= band[0]) & (blanks <= band[1])).all()
    result = solve(x, max_solutions=2)
    assert result.solutions.tolist() == [1] * 40  # exactly one solution, proved by the search
    assert torch.equal(result.solution, y)
    assert is_valid_solution(y).all() and ((x == 0) | (x == y)).all()


def test_blank_counts_spread_over_the_band(tmp_path):
    x, _ = generate_blanks(200, (4, 24), seed=0, cache_dir=tmp_path)
    counts = set((x == 0).flatten(1).sum(dim=1).tolist())
    assert counts <= set(range(4, 25)) and len(counts) >= 15


def test_generation_is_seeded_prefix_stable_and_cached_by_band(tmp_path, monkeypatch):
    a = generate_blanks(30, (25, 35), seed=1, use_cache=False)
    b = generate_blanks(30, (25, 35), seed=1, cache_dir=tmp_path)
    c = generate_blanks(30, (25, 35), seed=2, use_cache=False)
    d = generate_blanks(30, (25, 35), seed=1, stream=1, use_cache=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    generate_blanks(5, (4, 24), seed=1, cache_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "sudoku").glob("*.npz")) == [
        "b25-35-stream0-seed1-v1.npz", "b4-24-stream0-seed1-v1.npz"]

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cached set should have been reused")

    monkeypatch.setattr(sudoku_blanks, "_draw_chunk", no_drawing)
    x, y = generate_blanks(10, (25, 35), seed=1, cache_dir=tmp_path)
    assert torch.equal(x, a[0][:10]) and torch.equal(y, a[1][:10])


# --------------------------------------------------------------------------------------------- the loss


def test_masked_cross_entropy_is_the_mean_over_the_masked_cells():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    y = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[False, True, True]])
    # cell 1: -log(e^0 / (e^0 + e^1)) = log(1 + e); cell 2: log 2
    expected = (math.log(1 + math.e) + math.log(2)) / 2
    assert cross_entropy(logits, y, mask).item() == pytest.approx(expected)
    everything = (math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(2)) / 3
    assert cross_entropy(logits, y).item() == pytest.approx(everything)
    assert cross_entropy(logits, y, torch.zeros_like(mask)).item() == 0.0
