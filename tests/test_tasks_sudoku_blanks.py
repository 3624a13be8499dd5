"""Sudoku by number of blanks: the generator, the naked-singles depth, the task's settings and
its blanks-only loss."""

from __future__ import annotations

import math

import pytest
import torch

from deqloop.tasks.sudoku_solver import is_valid_solution, naked_singles_depth, rate, solve

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
