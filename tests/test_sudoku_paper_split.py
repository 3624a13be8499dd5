"""Sudoku-Extreme as the paper splits it (train below the training file's 80th rating percentile,
the first 50k rows; test at or above it, the first 10k), on small files in its column layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import random_split

from deqloop.cli import main
from deqloop.errors import ConfigError
from deqloop.tasks import get_task
from deqloop.tasks.sudoku import paper_split

ANSWER = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
TRAIN_RATINGS = [7, 19, 0, 12, 15, 3, 16, 1, 18, 9, 4, 17, 2, 14, 6, 11, 5, 13, 8, 10]  # 0..19, shuffled
TEST_RATINGS = [3, 20, 15, 16, 30, 2, 15]


def puzzle(i: int) -> str:
    """A distinct puzzle of ANSWER: cells i .. i + 29 blanked."""
    return "".join("." if i <= c < i + 30 else d for c, d in enumerate(ANSWER))


def write_csv(path: Path, ratings: list[int], start: int) -> Path:
    rows = ["source,question,answer,rating"]
    rows += [f"gen,{puzzle(start + i)},{ANSWER},{r}" for i, r in enumerate(ratings)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_csv(tmp_path / "train.csv", TRAIN_RATINGS, 0), write_csv(tmp_path / "test.csv", TEST_RATINGS, 30)


def as_strings(x: torch.Tensor) -> set[str]:
    return {"".join(str(int(v)) for v in row).replace("0", ".") for row in x.flatten(1)}


def test_paper_split_against_its_formula_by_hand():
    train, test = torch.tensor(TRAIN_RATINGS), torch.tensor(TEST_RATINGS)
    q80 = float(np.quantile(np.arange(20.0), 0.8))  # ratings 0..19: 15.2 (linear interpolation)
    easy, hard, threshold = paper_split(train, test)
    assert threshold == pytest.approx(q80) == pytest.approx(15.2)
    assert easy.tolist() == [i for i, r in enumerate(TRAIN_RATINGS) if r < 15.2]  # file order
    assert hard.tolist() == [1, 3, 4]  # ratings 20, 16, 30 (15 is below 15.2)
    # the first rows only: 5 training rows below q80, 2 test rows at or above it, in file order
    easy5, hard2, _ = paper_split(train, test, train_rows=5, test_rows=2)
    assert easy5.tolist() == [0, 2, 3, 4, 5] and hard2.tolist() == [1, 3]
    unrated = torch.tensor([-1, -1, 0, 10])  # unrated rows count in neither the quantile nor a part
    assert paper_split(unrated, unrated)[0].tolist() == [2]
    with pytest.raises(ConfigError, match="no training puzzle has a known rating"):
        paper_split(torch.tensor([-1, -1]), test)


def test_the_task_trains_below_q80_and_tests_above_it(files):
    train_csv, test_csv = files
    task = get_task("sudoku", data=str(train_csv), test_data=str(test_csv), split="paper")
    assert task.val_fraction == 0.2 and task.loss_cells == "all" and task.loss_mask(None, None) is None
    easy = [puzzle(i) for i, r in enumerate(TRAIN_RATINGS) if r < 15.2]  # 16 puzzles
    # train / val: 80 / 20 of them as torch's random_split seeded 42 draws them (the paper's)
    train_part, val_part = random_split(easy, [12, 4], generator=torch.Generator().manual_seed(42))
    x, y = task.make("train", 12, seed=3)
    assert as_strings(x) == set(train_part) and (y.flatten(1) == torch.tensor([int(d) for d in ANSWER])).all()
    assert as_strings(task.make("val", 4, seed=3)[0]) == set(val_part)
    hard = {puzzle(30 + i) for i in (1, 3, 4)}
    assert as_strings(task.make("hard", 3, seed=0)[0]) == hard
    with pytest.raises(ConfigError, match=r"test.csv: the 'hard' split has 3 puzzles, 4 requested"):
        task.make("hard", 4)
    # the default split of a single file stays the quantile split
    assert get_task("sudoku", data=str(train_csv)).split == "quantiles"


@pytest.mark.parametrize("options, message", [
    ({"split": "paper"}, "needs data .* and test_data"),
    ({"split": "halves"}, "unknown Sudoku.split 'halves'; allowed: 'quantiles', 'paper'"),
    ({"test_data": "TEST"}, "test_data is the paper's test file: it needs split='paper'"),
])
def test_the_paper_split_is_validated(files, options, message):
    train_csv, test_csv = files
    options = {k: (str(test_csv) if v == "TEST" else v) for k, v in options.items()}
    with pytest.raises(ConfigError, match=message):
        get_task("sudoku", data=str(train_csv), **options)


def test_the_cli_trains_on_the_papers_split(files, tmp_path):
    train_csv, test_csv = files
    out = tmp_path / "run"
    code = main(["train", "--task", "sudoku", "--data", str(train_csv), "--test-data", str(test_csv), "--split",
                 "paper", "--loss", "progressive", "--max-iter", "2", "--width", "8", "--heads", "2", "--steps", "2",
                 "--batch-size", "4", "--eval-size", "3", "--threads", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    options = json.loads((out / "config.json").read_text())["task_options"]
    assert (options["split"], options["test_data"], options["val_fraction"]) == ("paper", str(test_csv), 0.2)
