"""The report's sections on sweeps kept apart from the main grid: the long chess run beside its
baselines (experiments/chess_long.py), the recipes at another number of steps, the dispatch by
preset (experiments/report.py) and the baselines line that a task without baselines must not print."""

from __future__ import annotations

import pytest

from experiments import chess_baselines, chess_long, recipes_report, report
from experiments.summary import SummaryError
from tests.test_stability_report import _run as _recipe_run


def _chess(seed, hard, random=0.05, greedy=0.3):
    iters = [1, 4, 12, 48]
    scores = {"random/correct": random, "random/correct_legal": random + 0.01, "greedy/correct": greedy,
              "greedy/correct_legal": greedy + 0.02}
    return {"spec": {"task": "chess", "recall": "internal", "norm": "post", "regime": "progressive", "seed": seed},
            "preset": "chess", "command": "python -m experiments.sweep --preset chess",
            "train_config": {"recall": "internal", "norm": "post", "width": 64, "heads": 4, "attention": "full",
                             "alpha": 0.5, "max_iter": 12, "steps": 3000, "batch_size": 64,
                             "task_options": {"data": ["/x/lichess_puzzles_rating_0000_1600.csv"]}},
            "eval": {"n": {"val": 1024, "hard": 1024},
                     "curves": {"iters": iters, "accuracy": {"val": [0, .3, .5, .5], "hard": hard}},
                     "baselines": {"val": dict(scores), "hard": dict(scores)}},
            "seconds": {"train": 3600.0, "eval": 100.0}}


def test_the_verdict_compares_the_mean_best_with_both_baselines_by_hand():
    runs = [_chess(0, [0, .1, .2, .1]), _chess(1, [0, .05, .1, .1])]
    # mean best (0.2 + 0.1) / 2 = 15 % = 3.0× the 5 % random baseline; greedy 30 % is not beaten
    assert chess_long.verdict(runs) == ("Hard (mean best over seeds): 15.0 % = 3.0× the random-legal baseline (5.0 %; "
                                        "target ≥ 3×: met); the greedy baseline scores 30.0 %: the model does not "
                                        "beat it.")
    assert "2.0×" in chess_long.verdict([_chess(0, [0, .1, .1, .1])]) and "not met" in chess_long.verdict(
        [_chess(0, [0, .1, .1, .1])])
    assert "beats it" in chess_long.verdict([_chess(0, [0, .4, .4, .4])])
    bare = _chess(0, [0, .1, .2, .1])
    bare["eval"]["baselines"] = {"val": {}, "hard": {}}
    assert chess_long.verdict([bare]) == "No baselines stored with these runs."


def test_the_chess_section_prints_both_metrics_and_draws_the_baselines(tmp_path):
    text = "\n".join(chess_long.section([_chess(0, [0, .1, .2, .1])], tmp_path / "plots", tmp_path / "RESULTS.md"))
    assert "hard: random 5.0 / 6.0, greedy 30.0 / 32.0" in text
    assert "| 0 | 50.0 (12) | 20.0 (12) | 10.0 |" in text
    assert "3000 steps of batch 64" in text and "lichess_puzzles_rating_0000_1600.csv" in text
    assert (tmp_path / "plots" / "chess_long.png").stat().st_size > 10_000
    assert chess_long.section([], tmp_path, tmp_path / "R.md") == []


def test_a_recipes_sweep_at_other_steps_gets_its_own_table():
    runs = [_recipe_run(s, [], steps=1500, regime=g, hard=(0.0, h)) for s, h in enumerate((1.0, 0.5))
            for g in ("progressive", "phantom", "implicit")]
    for r in runs:
        r["command"] = "python -m experiments.sweep --preset recipes --steps 1500"
    text = "\n".join(recipes_report.section(runs))
    assert "## prefix_sums: fixed-point training recipes at 1500 steps (internal recall, post norm)" in text
    assert "| progressive | 2 | 100 / 50 |" in text and "--steps 1500" in text
    assert recipes_report.section([]) == []
    alone = "\n".join(recipes_report.section(runs[:1]))  # a sweep in progress: one regime so far
    assert "| progressive | 1 | 100 |" in alone


def test_sections_are_chosen_by_preset_and_a_mixed_folder_is_an_error(tmp_path):
    chess = [_chess(0, [0, .1, .2, .1])]
    assert report.section(chess, tmp_path, tmp_path / "R.md")[1] == "## chess: the long CPU run"
    other = dict(_chess(1, [0, 0, 0, 0]), preset="cpu")
    with pytest.raises(SummaryError, match="one preset of paper, recipes, chess; these are of chess, cpu"):
        report.section(chess + [other], tmp_path, tmp_path / "R.md")


def test_a_task_without_baselines_prints_no_baselines_line():
    sudoku = {"spec": {"task": "sudoku"}, "eval": {"baselines": {"val": {}, "hard": {}}, "n": {"val": 8}}}
    assert chess_baselines.baselines_for(sudoku, None) is None
    assert chess_baselines.baseline_line([sudoku], None) is None
    chess = _chess(0, [0, 0, 0, 0])
    chess["eval"]["baselines"]["hard"] = {}
    assert chess_baselines.baselines_for(chess, None) == {"val": chess["eval"]["baselines"]["val"]}
