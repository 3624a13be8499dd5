"""The report's section on the paper's prefix-sums split: rows per seed, the mean, the plot."""

from __future__ import annotations

from experiments import paper_split


def _run(seed, val, hard, adaptive=(1.0, 520.0), train_s=200.0, eval_s=100.0):
    iters = [1, 10, 34, 100, 300, 600]
    return {"spec": {"task": "prefix_sums", "recall": "internal", "norm": "post", "regime": "progressive", "seed": seed},
            "command": "python -m experiments.sweep --preset paper",
            "train_config": {"steps": 1500, "depth_offset": 2, "width": 32, "window": 3, "batch_size": 64,
                             "task_options": {"length": 32, "min_length": 8, "start_length": 8,
                                              "start_min_length": 4, "ramp_steps": 900, "hard_length": 512}},
            "eval": {"n": {"val": 128, "hard": 128}, "curves": {"iters": iters, "accuracy": {"val": val, "hard": hard}},
                     "settling": {"hard": {"accuracy": adaptive[0], "iterations_mean": adaptive[1]}},
                     "solver": {"hard": {"accuracy": 0.5, "iterations_mean": 600.0}}},
            "seconds": {"train": train_s, "eval": eval_s}}


RUNS = [_run(1, [0, .5, 1, 1, 1, 1], [0, 0, 0, .2, .9, .99], adaptive=(0.98, 530.0), train_s=220.0),
        _run(0, [0, .5, 1, 1, 1, 1], [0, 0, 0, .2, 1.0, 1.0], train_s=200.0, eval_s=80.0),
        _run(2, [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], adaptive=(0.0, 600.0), train_s=210.0)]


def test_rows_by_seed_then_the_mean_with_a_failed_seed_kept():
    rows = paper_split.rows(RUNS)
    assert [r[0] for r in rows] == ["0", "1", "2", "mean of 3"]
    # seed 1: best at 512 bits is 99 % first reached at 600 iterations; at the last count 99 %
    assert rows[1][2:4] == ["99.0 (600)", "99.0"]
    # seed 0: 100 % first at 300 iterations; the failed seed's best is 0 at the first count
    assert rows[0][2] == "100.0 (300)" and rows[2][2] == "0.0 (1)"
    assert rows[1][4] == "98.0 / 530"
    # means over the three seeds by hand: hard best (1 + .99 + 0)/3, adaptive (1 + .98 + 0)/3 and (520+530+600)/3
    assert rows[3][2] == "66.3" and rows[3][4] == "66.0 / 550"
    assert rows[3][6] == "210" and rows[3][7] == "93.33"


def test_section_names_the_split_and_draws_the_plot(tmp_path):
    lines = paper_split.section(RUNS, tmp_path / "plots", tmp_path / "RESULTS.md")
    text = "\n".join(lines)
    assert "Trained on 8–32 bits" in text and "from 4–8 bits over the first 900 of 1500 steps" in text
    assert "| seed | val best | hard best | hard@600 |" in text
    assert (tmp_path / "plots" / "prefix_sums_paper_split.png").stat().st_size > 10_000
    assert "](plots/prefix_sums_paper_split.png)" in text
    assert paper_split.section([], tmp_path, tmp_path / "R.md") == []
