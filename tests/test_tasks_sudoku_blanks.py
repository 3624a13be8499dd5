"""Sudoku by number of blanks: the generator, the naked-singles depth, the task's settings and
its blanks-only loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deqloop.errors import ConfigError
from deqloop.tasks import get_task, sudoku_blanks
from deqloop.tasks.sudoku import Sudoku
from deqloop.tasks.sudoku_blanks import generate_blanks
from deqloop.tasks.sudoku_solver import is_valid_solution, naked_singles_depth, rate, solve
from deqloop.train import TrainConfig, Trainer
from deqloop.train.objectives import Progressive, cross_entropy

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


# --------------------------------------------------------------------------------------------- the task


def test_task_reports_the_deepest_puzzle_or_none():
    cross = grid(ANSWER)
    cross[0, 0] = 0
    cross[0, :, 0] = 0
    task = Sudoku()
    assert task.propagation_depth() is None
    assert task.propagation_depth(torch.cat([grid(ANSWER), cross])) == 2
    assert task.propagation_depth(torch.cat([cross, torch.zeros(1, 9, 9, dtype=torch.long)])) is None


def test_task_draws_each_split_from_its_source(tmp_path):
    task = get_task("sudoku", blanks=[4, 24], hard_blanks="46-55", cache_dir=str(tmp_path))
    assert task.blanks == (4, 24) and task.hard_blanks == (46, 55)
    x_train, y_train = task.make("train", 20, seed=0)
    x_val, _ = task.make("val", 20, seed=0)
    x_hard, _ = task.make("hard", 20, seed=0)
    assert torch.equal(x_train, generate_blanks(20, (4, 24), 0, stream=0, cache_dir=tmp_path)[0])
    assert not torch.equal(x_train, x_val)
    train_blanks = (x_train == 0).flatten(1).sum(dim=1)
    hard_blanks = (x_hard == 0).flatten(1).sum(dim=1)
    assert ((train_blanks >= 4) & (train_blanks <= 24)).all() and ((hard_blanks >= 46) & (hard_blanks <= 55)).all()
    mixed = Sudoku(hard_blanks=(36, 45), cache_dir=str(tmp_path))  # train by rating (easy), hard by blanks
    assert rate(mixed.make("train", 5)[0]).tolist() == [0] * 5
    assert Sudoku(**task.settings()) == task  # a checkpoint's settings rebuild the task


@pytest.mark.parametrize("settings, message", [
    ({"blanks": (0, 10)}, "Sudoku.blanks must be a pair (lo, hi) of blank counts with 1 <= lo <= hi <= 64 "
                          "(or 'lo-hi'), got (0, 10)"),
    ({"blanks": (30, 20)}, "Sudoku.blanks must be a pair (lo, hi) of blank counts with 1 <= lo <= hi <= 64 "
                           "(or 'lo-hi'), got (30, 20)"),
    ({"hard_blanks": (50, 65)}, "Sudoku.hard_blanks must be a pair (lo, hi) of blank counts with "
                                "1 <= lo <= hi <= 64 (or 'lo-hi'), got (50, 65)"),
    ({"blanks": "4 to 24"}, "Sudoku.blanks must be a pair (lo, hi) of blank counts with 1 <= lo <= hi <= 64 "
                            "(or 'lo-hi'), got '4 to 24'"),
    ({"blanks": (4, 24), "train_band": "easy"},
     "Sudoku.train_band and Sudoku.blanks both choose the training puzzles (by rating and by blanks); set one of them"),
    ({"hard_blanks": (4, 24), "hard_band": [5, None]},
     "Sudoku.hard_band and Sudoku.hard_blanks both choose the hard puzzles (by rating and by blanks); set one of them"),
    ({"loss_cells": "givens"}, "unknown Sudoku.loss_cells 'givens'; allowed: 'all', 'blanks'"),
])
def test_settings_are_validated_with_exact_messages(settings, message):
    with pytest.raises(ConfigError) as e:
        Sudoku(**settings)
    assert str(e.value) == message


def test_blanks_and_a_data_file_are_exclusive(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(EASY + "\n")
    with pytest.raises(ConfigError) as e:
        Sudoku(data=str(path), blanks=(4, 24))
    assert str(e.value) == ("Sudoku.data and Sudoku.blanks both choose the training puzzles (from a file and by "
                            "blanks); set one of them")


def test_the_task_chooses_blanks_and_the_objective_uses_its_mask(tmp_path):
    x, y = grid(EASY), grid(ANSWER)
    assert Sudoku().loss_mask(x, y) is None
    assert torch.equal(Sudoku(loss_cells="blanks").loss_mask(x, y), x == 0)
    config = TrainConfig.from_flat(task="sudoku", task_options={"loss_cells": "blanks"}, width=16, heads=2, steps=1,
                         batch_size=2, loss="progressive", alpha=0.0, max_iter=2, eval_size=0, threads=1, progress=False,
                         out=str(tmp_path))
    trainer = Trainer(config)
    objective = trainer.objective
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])
    loss, logits, _ = objective(x2, y2, 2, 0)
    blank = (x2 == 0).flatten()
    by_hand = F.cross_entropy(logits.detach().reshape(-1, 10)[blank], y2.flatten()[blank])
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    plain = Progressive(trainer.model, alpha=0.0, seed=0)(x2, y2, 2, 0)[0]
    assert plain.item() == pytest.approx(F.cross_entropy(logits.detach().reshape(-1, 10), y2.flatten()).item(),
                                         rel=1e-5)


# --------------------------------------------------------------------------------------------- command line


def test_blank_bands_parse_as_lo_hi_or_two_numbers(capsys):
    from deqloop.cli import build_parser

    argv = ["train", "--task", "sudoku", "--blanks", "4-24", "--hard-blanks", "46", "55", "--loss-cells", "blanks"]
    args = build_parser(argv).parse_args(argv)
    assert (args.blanks, args.hard_blanks, args.loss_cells) == ((4, 24), (46, 55), "blanks")
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args(["train", "--task", "sudoku", "--blanks", "4-x"])
    assert "--blanks: expected two integers as 'lo hi' or 'lo-hi', got '4-x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args(["train", "--task", "sudoku", "--help"])
    assert "--blanks LO[-HI] [HI ...]" in capsys.readouterr().out


def test_the_band_table_script_runs(capsys):
    from experiments import sudoku_bands

    assert sudoku_bands.main(["--n", "5", "--bands", "4-6", "40-41"]) == 0
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]  # cells without padding
    assert out[0].startswith("| blanks | puzzles |") and out[2].startswith("| 4-6 | 5 |") and out[3].startswith("| 40-41 | 5 |")


def test_draw_cached_extends_the_cache_with_only_the_missing_chunks(tmp_path):
    import numpy as np

    from deqloop.tasks.sudoku_data import draw_cached

    calls = []

    def draw(chunk):  # two rows per chunk, their values naming the chunk
        calls.append(chunk)
        return (np.full((2, 3), chunk, np.int8),)

    empty = {"rows": np.zeros((0, 3), np.int8)}
    path = tmp_path / "set.npz"
    arrays, drawn, _ = draw_cached(path, 3, empty, draw, use_cache=True, failure="x")
    assert calls == [0, 1] and drawn == 4 and arrays["rows"][:, 0].tolist() == [0, 0, 1, 1]
    arrays, drawn, _ = draw_cached(path, 7, empty, draw, use_cache=True, failure="x")
    assert calls == [0, 1, 2, 3] and drawn == 4 and arrays["rows"][:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert draw_cached(path, 5, empty, draw, use_cache=True, failure="x")[1] == 0 and len(calls) == 4
    fresh, _, _ = draw_cached(tmp_path / "other.npz", 7, empty, draw, use_cache=False, failure="x")
    assert np.array_equal(fresh["rows"], arrays["rows"]) and not (tmp_path / "other.npz").exists()
    with pytest.raises(RuntimeError, match="too few: only 0 accepted in 100 chunks"):
        draw_cached(path, 1000, empty, lambda c: (np.zeros((0, 3), np.int8),), use_cache=False, failure="too few")


def test_extra_blank_bands_are_their_own_stream_and_named_by_band(tmp_path):
    task = Sudoku(blanks=(4, 24), hard_blanks=(25, 35), cache_dir=str(tmp_path))
    name, (x, y) = task.extra_split("blanks:25-35", 12, seed=5)
    assert name == "25-35 blanks" and x.shape == (12, 9, 9)
    blanks = (x == 0).flatten(1).sum(1)
    assert bool(((blanks >= 25) & (blanks <= 35)).all())
    assert bool(((x == 0) | (x == y)).all())  # the givens are the solution's digits
    hard, _ = task.make("hard", 12, seed=5)
    assert not torch.equal(x, hard)  # the same band, another stream than the hard split
    assert torch.equal(task.extra_split("blanks:25-35", 12, seed=5)[1][0], x)  # seeded
    with pytest.raises(ConfigError, match="extra set 'blanks:30-20'"):
        task.extra_split("blanks:30-20", 4, seed=0)
    with pytest.raises(ConfigError, match="blanks:LO-HI"):
        task.extra_split("no_such_file.csv", 4, seed=0)
