"""The report's stability-over-training and recipe tables (experiments/stability_report.py,
experiments/recipes_report.py) and the traces a run summary keeps (experiments/runlog.py)."""

from __future__ import annotations

import json
import math

from deqloop.analysis import WEIGHT_KEYS
from experiments import recipes_report, report, runlog, stability_report


def _stab(step, rho, plain, backward=0.5):
    return {"step": step, "kind": "stability", "probe": 16, "rho": rho, "rho_max": rho + 0.5, "forward_converged": 1.0,
            "plain_converged": plain, "backward_converged": backward, "init_distance": 0.125, "grad_norm/mlp": 3.0,
            "qk_norm_product": 4.0, "attn_out_norm": 0.25, "mlp_norm_product": 2.5}


def test_traces_keep_the_monitor_records_and_the_loss_and_skip_the_rest(tmp_path):
    lines = [json.dumps({"step": 10, "loss": 0.6931471805599453, "accuracy": 0.0}),
             json.dumps(_stab(20, 0.987654321, 1.0)),
             json.dumps({"step": 20, "loss": 0.5, "accuracy": 0.25}),
             '{"step": 30, "loss": 0.4',  # torn by a kill
             json.dumps({"step": 20, "kind": "eval", "iters": [1], "val_accuracy": [0.5]}),
             json.dumps({k: v for k, v in _stab(40, 1.25, 0.25).items() if k != "init_distance"})]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    t = runlog.traces(path)
    assert t["loss"] == [[10, 0.6931], [20, 0.5]]
    assert t["stability"]["fields"] == ["step", "rho", "rho_max", "forward_converged", "plain_converged",
                                        "backward_converged", "init_distance", *WEIGHT_KEYS]
    weights = [None] * 5 + [4.0, 0.25, 2.5]  # a run without recall: no injection keys
    assert t["stability"]["rows"] == [[20, 0.9877, 1.488, 1.0, 1.0, 0.5, 0.125, *weights],
                                      [40, 1.25, 1.75, 1.0, 0.25, 0.5, None, *weights]]
    assert runlog.traces(tmp_path / "absent.jsonl") == {"stability": {"fields": list(runlog.STABILITY_FIELDS),
                                                                      "rows": []}, "loss": []}


def test_long_traces_are_thinned_evenly_and_keep_the_last_point():
    assert runlog._thin(list(range(100))) == list(range(100))
    assert runlog._thin(list(range(101))) == list(range(0, 101, 2))  # 51 points, the last (100) among them
    thinned = runlog._thin(list(range(800)))  # stride 8: 0, 8, ..., 792, and 799 replaces 792 (100 at most)
    assert len(thinned) == 100 and thinned[:3] == [0, 8, 16] and thinned[-2:] == [784, 799]
    assert runlog._thin(list(range(250)))[-2:] == [246, 249]  # stride 3: 84 points, 249 appended


def _run(seed, rows, steps=100, hard=(0.0, 0.5), regime="implicit", seconds=10.0):
    """A run summary with what the two report modules read."""
    return {"spec": {"task": "prefix_sums", "recall": "internal", "norm": "post", "regime": regime, "seed": seed},
            "train_config": {"steps": steps}, "train": {"steps": steps, "late_forward_converged": 0.5,
                                                        "late_backward_converged": 0.25},
            "seconds": {"train": seconds}, "train_depth": 10,
            "eval": {"curves": {"iters": [10, 500], "accuracy": {"val": [0.5, 1.0], "hard": list(hard)}},
                     "settling": {"hard": {"accuracy": hard[-1], "iterations_mean": 40.0}},
                     "solver": {"hard": {"accuracy": 1.0, "iterations_mean": 30.0, "converged": 0.75}}},
            "analysis": {"hard": {"spectral_radius_median": 0.875}},
            "traces": {"stability": {"fields": list(runlog.STABILITY_FIELDS),
                                     "rows": [[s, r, r, 1.0, p, b, 0.0] for s, r, p, b in rows]},
                       "loss": [[10, 0.69], [100, 0.25]]}}


def test_crossings_by_hand():
    run = _run(0, [(25, 0.98, 0.75, 0.5), (50, 1.02, 0.5, 0.25), (75, 1.25, 0.25, 0.0), (100, 0.9, 0.75, 1.0)])
    assert stability_report.crossings(run) == {"rho_first": 0.98, "rho_last": 0.9, "rho_above_1": 0.5,
                                               "unreachable": 0.75, "reachable_last": 0.75, "backward_last": 1.0}
    never = stability_report.crossings(_run(0, [(50, 0.5, 1.0, 1.0), (100, 0.75, 0.5, 1.0)]))
    assert never["rho_above_1"] == math.inf and never["unreachable"] == math.inf  # 0.5 is not below 50 %
    assert stability_report.crossings({"train": {"steps": 1}, "traces": None}) == {}


def test_when_table_takes_medians_over_seeds_with_never_counted():
    runs = [_run(0, [(25, 1.5, 0.25, 0.5)]), _run(1, [(50, 1.5, 1.0, 0.5)]), _run(2, [(25, 0.5, 1.0, 0.5)])]
    cfg = report.group(runs)
    header, rows = stability_report.when_table(list(cfg.values()))
    assert header[4:8] == ["ρ first", "ρ > 1 at", "ρ last", "reachable < 50 % at"]
    # ρ > 1 at 0.25, 0.5, never → median 0.5; reachable < 50 % at 0.25, never, never → never
    assert rows == [["internal", "post", "implicit", "3", "1.500", "0.50", "1.500", "never", "1.00", "0.50"]]


def test_recipe_rows_show_every_seed_and_the_time_against_progressive():
    runs = [_run(s, [], regime="progressive", hard=(0.0, h), seconds=10.0) for s, h in enumerate((1.0, 0.5, 0.0))]
    runs += [_run(s, [], regime="phantom", hard=(h, 0.0), seconds=15.0) for s, h in enumerate((0.25, 0.75))]
    runs += [_run(0, [], regime="implicit", hard=(0.0, 0.0), seconds=30.0)]
    runs[1]["eval"]["solver"]["hard"]["accuracy"] = 0.25  # seed 1's Anderson solve: its own column
    rows = recipes_report.recipe_rows(list(report.group(runs).values()), "internal", "post")
    assert [r[0] for r in rows] == ["progressive", "implicit", "phantom"]
    prog, _, phantom = rows
    assert prog[1:6] == ["3", "100 / 50 / 0", "100 / 25 / 100", "100.0", "50.0 (500)"] and prog[-2:] == ["10", "1.00"]
    assert phantom[1:6] == ["2", "25 / 75", "100 / 100", "100.0", "50.0 (10)"] and phantom[-2:] == ["15", "1.50"]
    assert phantom[6:13] == ["0.0", "0.0 / 40", "100.0 / 30", "0.75", "0.50", "0.25", "0.875"]
    assert recipes_report.recipe_rows(list(report.group(runs[:2]).values()), "internal", "post") == []


def test_the_report_draws_the_traces_and_prints_the_tables(tmp_path):
    runs = [_run(0, [(50, 1.5, 0.25, 0.5), (100, 1.25, 0.0, 0.5)], regime=g) for g in ("progressive", "implicit")]
    path = stability_report.plot_traces(list(report.group(runs).values()), "prefix_sums", tmp_path / "s.png")
    assert path.stat().st_size > 10_000
    assert stability_report.plot_traces(list(report.group([_run(0, [])]).values()), "t", tmp_path / "n.png") is None


def test_the_target_line_counts_seeds_and_time_by_hand():
    prog = [_run(s, [], regime="progressive", hard=(0.0, 1.0), seconds=100.0) for s in range(3)]
    # phantom: plain iteration 96 / 50 / 99 % in 150 s (1.5×) → met by plain iteration; solver 1.0 each → met
    phantom = [_run(s, [], regime="phantom", hard=(0.0, h), seconds=150.0) for s, h in enumerate((0.96, 0.5, 0.99))]
    # implicit: 2 seeds ≥ 95 % but 250 s (2.5× progressive) → met by neither
    implicit = [_run(s, [], regime="implicit", hard=(0.0, 1.0), seconds=250.0) for s in range(2)]
    # neumann: one seed at 95 % by iteration; its solver is right in two seeds, in exactly 2× the time → met by
    # the solve only
    neumann = [_run(s, [], regime="neumann+budget", hard=(0.0, h), seconds=200.0) for s, h in enumerate((0.95, 0.2))]
    neumann[1]["eval"]["solver"]["hard"]["accuracy"] = 0.95
    line = recipes_report.targets(list(report.group(prog + phantom + implicit + neumann).values()), "internal", "post")
    assert line == ("Target (≥ 95 % hard accuracy in ≥ 2 seeds, training within 2× the progressive loss's 100 s) met "
                    "by plain iteration: phantom; by the Anderson solve: neumann+budget, phantom.")
    assert recipes_report.targets(list(report.group(phantom).values()), "internal", "post") is None
