"""The report's sections on sweeps kept apart from the main grid (experiments/report.py): the long
chess run beside its baselines, the recipes at another number of
steps, the choice by preset, and the baselines line that a task without baselines must not print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments import report
from experiments.summary import SummaryError


def _chess(seed, hard, random=0.05, greedy=0.3):
    iters = [1, 4, 12, 48]
    scores = {"random/correct": random, "random/correct_legal": random + 0.01, "greedy/correct": greedy,
              "greedy/correct_legal": greedy + 0.02}
    return {"name": f"chess/internal-post-progressive-s{seed}",
            "spec": {"task": "chess", "recall": "internal", "norm": "post", "regime": "progressive", "seed": seed},
            "preset": "chess", "command": "python -m experiments.sweep --preset chess",
            "train_config": {"recall": "internal", "norm": "post", "width": 64, "heads": 4, "attention": "full",
                             "alpha": 0.5, "max_iter": 12, "steps": 3000, "batch_size": 64,
                             "task_options": {"data": ["/x/lichess_puzzles_rating_0000_1600.csv"]}},
            "eval": {"n": {"val": 1024, "hard": 1024},
                     "curves": {"iters": iters, "accuracy": {"val": [0, .3, .5, .5], "hard": hard}},
                     "baselines": {"val": dict(scores), "hard": dict(scores)}},
            "seconds": {"train": 3600.0, "eval": 100.0}}


def _recipe(seed, regime, hard):
    return {"name": f"prefix_sums/internal-post-{regime}-s{seed}", "preset": "recipes",
            "command": "python -m experiments.sweep --preset recipes --steps 1500",
            "spec": {"task": "prefix_sums", "recall": "internal", "norm": "post", "regime": regime, "seed": seed},
            "train_config": {"recall": "internal", "norm": "post", "width": 32, "steps": 1500},
            "eval": {"curves": {"iters": [10, 500], "accuracy": {"val": [0.5, 1.0], "hard": [0.0, hard]}},
                     "settling": {"hard": {"accuracy": hard, "iterations_mean": 40.0}},
                     "solver": {"hard": {"accuracy": 1.0, "iterations_mean": 30.0}}},
            "seconds": {"train": 10.0}}


def squeeze(text: str) -> str:
    return re.sub(r" +", " ", text)


def test_the_model_against_both_baselines_by_hand():
    runs = [_chess(0, [0, .1, .2, .1]), _chess(1, [0, .05, .1, .1])]
    # mean best (0.2 + 0.1) / 2 = 15 % = 3.0× the 5 % random baseline; greedy 30 % is not beaten
    assert report.baselines(runs)[1] == (
        "Hard (mean best over seeds): 15.0 % = 3.0× the random-legal baseline (5.0 %; target ≥ 3×: met); the greedy "
        "baseline scores 30.0 %: the model does not beat it.")
    assert "2.0×" in report.baselines([_chess(0, [0, .1, .1, .1])])[1]
    assert "not met" in report.baselines([_chess(0, [0, .1, .1, .1])])[1]
    assert "beats it" in report.baselines([_chess(0, [0, .4, .4, .4])])[1]
    bare = _chess(0, [0, .1, .2, .1])
    bare["eval"]["baselines"] = {"val": {}, "hard": {}}
    assert report.baselines([bare]) == []


def test_the_chess_section_prints_both_metrics_the_verdict_and_a_figure(tmp_path):
    text = squeeze(report.section(Path("results/chess_long"), [_chess(0, [0, .1, .2, .1])], tmp_path / "plots",
                                  tmp_path / "RESULTS.md"))
    assert "hard: random 5.0 / 6.0, greedy 30.0 / 32.0" in text and "20.0 % = 4.0× the random-legal" in text
    # seed 0: val best 50 % (first at 12), hard best 20 % at 12, no count 500: no paper number; 10 % at 48
    assert "| progressive | 0 | 50.0 | 20.0 (12) | — | 10.0 (48) |" in text
    assert "3000 steps" in text and "lichess" not in text  # where the data lay on one machine is not shown
    assert (tmp_path / "plots" / "chess_long.png").stat().st_size > 10_000


def test_a_recipes_sweep_at_other_steps_gets_its_own_table(tmp_path):
    runs = [_recipe(s, g, h) for s, h in enumerate((1.0, 0.5)) for g in ("progressive", "phantom")]
    text = squeeze(report.section(Path("results/recipes_1500"), runs, tmp_path, tmp_path / "R.md"))
    assert text.startswith("## prefix_sums: the fixed-point training recipes at another number of steps")
    assert "| progressive | 0 | 100.0 | 100.0 (500) | 100.0 | 100.0 (500) | 100.0 / 40 | 100.0 / 30 | 10 |" in text
    assert "| phantom | 1 | 100.0 | 50.0 (500) |" in text and "--steps 1500" in text
    assert text.index("| progressive | 1 |") < text.index("| phantom | 0 |")  # the presets' order of regimes


def test_sections_are_chosen_by_preset_and_a_mixed_folder_is_an_error(tmp_path):
    chess = [_chess(0, [0, .1, .2, .1])]
    other = dict(_chess(1, [0, 0, 0, 0]), preset="cpu")
    with pytest.raises(SummaryError, match="one preset of paper, recipes, chess, seed-cpu, seed-gpu; these are of chess, cpu"):
        report.section(Path("x"), chess + [other], tmp_path, tmp_path / "R.md")


def test_a_task_without_baselines_prints_no_baselines_line():
    sudoku = {"spec": {"task": "sudoku"}, "eval": {"baselines": {"val": {}, "hard": {}}, "n": {"val": 8}}}
    assert report.baselines([sudoku]) == [] and report.baselines([{"eval": {}}]) == []
    chess = _chess(0, [0, 0, 0, 0])
    chess["eval"]["baselines"]["hard"] = {}  # val only: its line, and no comparison on the hard split
    lines = report.baselines([chess])
    assert len(lines) == 1 and "val: random 5.0 / 6.0, greedy 30.0 / 32.0." in lines[0]
