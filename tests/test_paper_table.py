"""The paper's results layout (experiments/paper_table.py) on hand-made summaries, against means and
standard errors worked out by hand."""

from __future__ import annotations

import json

import pytest

from experiments import paper_table as pt


def run(recall, norm, lr, seed, hard, regime="progressive", iters=(1, 30, 500)):
    """A summary with what the table reads: spec, learning rate, the hard curve."""
    return {"spec": {"task": "prefix_sums", "recall": recall, "norm": norm, "regime": regime, "seed": seed},
            "train_config": {"lr": lr},
            "eval": {"curves": {"iters": list(iters), "accuracy": {"hard": list(hard), "val": [1.0] * len(iters)}}}}


RUNS = [
    # internal/post at 1e-3: @500 0.5, 0.75, 1.0 → mean 0.75, s.d. 0.25, s.e. 0.25/√3 = 0.1443
    run("internal", "post", 1e-3, 0, [0.0, 0.75, 0.5]),
    run("internal", "post", 1e-3, 1, [0.0, 0.5, 0.75]),
    run("internal", "post", 1e-3, 2, [0.0, 1.0, 1.0]),
    # internal/post at 3e-4: one seed
    run("internal", "post", 3e-4, 0, [0.125, 0.25, 0.25]),
    # none/pre at 1e-3: @500 0.0 and 0.5 → mean 0.25, s.d. √0.125, s.e. 0.25; best 0.5 and 0.5
    run("none", "pre", 1e-3, 0, [0.5, 0.0, 0.0]),
    run("none", "pre", 1e-3, 1, [0.0, 0.25, 0.5]),
    # external/gru at 1e-3: one run scored 500, one did not (its counts end at 100)
    run("external", "gru", 1e-3, 0, [0.0, 0.0, 0.875]),
    run("external", "gru", 1e-3, 1, [0.0, 0.0, 0.125], iters=(1, 30, 100)),
    # another task: left out
    {**run("internal", "post", 1e-3, 0, [1.0, 1.0, 1.0]), "spec": {"task": "sudoku", "recall": "internal",
                                                                   "norm": "post", "regime": "progressive", "seed": 0}},
]


def test_at_500_by_hand_in_the_papers_row_order():
    header, rows = pt.paper_table(RUNS, task="prefix_sums")
    assert header == ["recall", "norm", "lr 0.0003", "lr 0.001"]
    assert rows == [
        ["none", "pre", "—", "25.0 ± 25.0"],
        ["external", "gru", "—", "87.5 ± — (1 of 2)"],
        ["internal", "post", "25.0 ± —", "75.0 ± 14.4"],
    ]


def test_best_over_counts_by_hand():
    _, rows = pt.paper_table(RUNS, task="prefix_sums", metric="best")
    # internal/post 1e-3: best 0.75, 0.75, 1.0 → mean 0.8333, s.d. 0.1443, s.e. 0.0833; external/gru:
    # best 0.875 and 0.125 (its own last count) → mean 0.5, s.d. 0.5303, s.e. 0.375
    assert rows == [
        ["none", "pre", "—", "50.0 ± 0.0"],
        ["external", "gru", "—", "50.0 ± 37.5"],
        ["internal", "post", "25.0 ± —", "83.3 ± 8.3"],
    ]
    _, rows = pt.paper_table(RUNS, task="prefix_sums", iterations=30)
    assert rows[2] == ["internal", "post", "25.0 ± —", "75.0 ± 14.4"]  # 0.75, 0.5, 1.0 at 30


def test_a_cell_that_mixes_regimes_is_an_error_until_narrowed():
    mixed = RUNS + [run("none", "pre", 1e-3, 0, [1.0, 1.0, 1.0], regime="implicit")]
    with pytest.raises(ValueError, match="mixes runs with regime implicit, progressive"):
        pt.paper_table(mixed, task="prefix_sums")
    _, rows = pt.paper_table(mixed, task="prefix_sums", where={"regime": "implicit"})
    assert rows == [["none", "pre", "100.0 ± —"]]
    with pytest.raises(ValueError, match="no runs of task 'chess'"):
        pt.paper_table(RUNS, task="chess")
    with pytest.raises(ValueError, match="metric must be one of at, best"):
        pt.paper_table(RUNS, task="prefix_sums", metric="last")


def test_command_line_prints_the_markdown_table(tmp_path, capsys):
    root = tmp_path / "runs"
    for i, s in enumerate(RUNS[:6]):
        s = {**s, "summary_format": 1, "name": f"prefix_sums/r{i}", "preset": "x", "train_depth": 30, "train": {},
             "analysis": {}, "commit": "c", "machine": {}}
        (root / "prefix_sums").mkdir(parents=True, exist_ok=True)
        (root / "prefix_sums" / f"r{i}.json").write_text(json.dumps(s))
    assert pt.main([str(root), "--task", "prefix_sums", "--where", "regime=progressive"]) == 0
    header, rows = pt.paper_table(RUNS[:6], task="prefix_sums")
    assert capsys.readouterr().out == pt.markdown(header, rows) + "\n"
    assert "| none     | pre    | —           | 25.0 ± 25.0 |" in pt.markdown(header, rows)
    with pytest.raises(SystemExit):
        pt.main([str(root), "--task", "prefix_sums", "--where", "regime"])


def test_the_sweep_prints_the_papers_number_beside_the_best():
    from experiments.sweep import run_line

    assert run_line(RUNS[0]) == "hard @500 50.0%, best 75.0% at 30; by iterations [0.0, 0.75, 0.5]"
    assert run_line(RUNS[7]) == "hard @500 not scored, best 12.5% at 100; by iterations [0.0, 0.0, 0.125]"
    assert run_line(RUNS[0], "test") == "no test split evaluated"
