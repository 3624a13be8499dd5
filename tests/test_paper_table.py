"""The paper's results layout (experiments/table.py ``paper_layout``) on hand-made summaries, against
means and standard errors worked out by hand."""

from __future__ import annotations

from experiments.table import paper_layout, runs_frame


def run(recall, norm, lr, seed, hard, iters=(1, 30, 500)):
    """A summary with what the table reads: spec, learning rate, the hard curve."""
    return {"name": f"prefix_sums/{recall}-{norm}-lr{lr:g}-s{seed}",
            "spec": {"task": "prefix_sums", "recall": recall, "norm": norm, "regime": "paper", "seed": seed},
            "train_config": {"lr": lr},
            "eval": {"curves": {"iters": list(iters), "accuracy": {"hard": list(hard), "val": [1.0] * len(iters)}}}}


RUNS = [
    # internal/post at 1e-3: @500 0.5, 0.75, 1.0 → mean 0.75, s.d. 0.25, s.e. 0.25/√3 = 0.1443;
    # best 0.75, 0.75, 1.0 → mean 0.8333, s.d. 0.1443, s.e. 0.0833
    run("internal", "post", 1e-3, 0, [0.0, 0.75, 0.5]),
    run("internal", "post", 1e-3, 1, [0.0, 0.5, 0.75]),
    run("internal", "post", 1e-3, 2, [0.0, 1.0, 1.0]),
    # internal/post at 3e-4: one seed
    run("internal", "post", 3e-4, 0, [0.125, 0.25, 0.25]),
    # none/pre at 1e-3: @500 0.0 and 0.5 → mean 0.25, s.d. √0.125, s.e. 0.25; best 0.5 and 0.5
    run("none", "pre", 1e-3, 0, [0.5, 0.0, 0.0]),
    run("none", "pre", 1e-3, 1, [0.0, 0.25, 0.5]),
    # external/gru at 1e-3: one run scored 500, one did not (its counts end at 100); best 0.875 and
    # 0.125 (its own last count) → mean 0.5, s.d. 0.5303, s.e. 0.375
    run("external", "gru", 1e-3, 0, [0.0, 0.0, 0.875]),
    run("external", "gru", 1e-3, 1, [0.0, 0.0, 0.125], iters=(1, 30, 100)),
]


def test_at_500_and_best_by_hand_in_the_papers_row_order():
    table = paper_layout(runs_frame(RUNS))
    assert table.columns.tolist() == ["recall", "norm", "lr 0.0003 @500", "lr 0.001 @500", "lr 0.0003 best",
                                      "lr 0.001 best"]
    assert table.to_numpy().tolist() == [
        ["none", "pre", "—", "25.0 ± 25.0", "—", "50.0 ± 0.0"],
        ["external", "gru", "—", "87.5 ± — (1 of 2)", "—", "50.0 ± 37.5"],
        ["internal", "post", "25.0 ± —", "75.0 ± 14.4", "25.0 ± —", "83.3 ± 8.3"],
    ]


def test_the_command_prints_the_table_and_names_what_is_missing(tmp_path, capsys):
    import json

    import pytest

    from experiments import table

    for r in RUNS:
        path = tmp_path / "runs" / r["name"] / "result.json"  # a sweep's layout: summarized on the fly
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))
    assert table.main([str(tmp_path / "runs")]) == 0
    assert "| internal | post   | 25.0 ± —         | 75.0 ± 14.4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        table.main([str(tmp_path / "runs"), "--task", "sudoku"])
    assert "no runs of task 'sudoku' in regime 'paper'" in capsys.readouterr().err
