"""The traces a run summary keeps (experiments/runlog.py) and their long form in the results table
(experiments/table.py)."""

from __future__ import annotations

import json

import pytest

from deqloop.analysis import WEIGHT_KEYS
from experiments import runlog
from experiments.table import traces_frame


def _stab(step, rho, plain, backward=0.5):
    return {"step": step, "kind": "stability", "probe": 16, "rho": rho, "rho_max": rho + 0.5, "forward_converged": 1.0,
            "plain_converged": plain, "backward_converged": backward, "init_distance": 0.125, "grad_norm/mlp": 3.0,
            "qk_norm_product": 4.0, "attn_out_norm": 0.25, "mlp_norm_product": 2.5}


def test_traces_keep_the_monitor_records_and_the_loss_and_skip_the_rest(tmp_path):
    lines = [json.dumps({"step": 10, "loss": 0.6931471805599453, "accuracy": 0.0}),
             json.dumps(_stab(20, 0.987654321, 1.0)),
             json.dumps({"step": 20, "loss": 0.5, "accuracy": 0.25}),
             json.dumps({"step": 20, "kind": "eval", "iters": [1], "val_accuracy": [0.5]}),
             json.dumps({k: v for k, v in _stab(40, 1.25, 0.25).items() if k != "init_distance"}),
             '{"step": 50, "loss": 0.4']  # torn by a kill (deqloop's metrics reader: the last line only)
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


def test_the_traces_in_long_form_by_fraction_of_training():
    rows = [[25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.0], [100, 1.25, 1.5, 1.0, 0.25, 0.0, 0.125]]
    run = {"name": "prefix_sums/internal-post-progressive-s1", "train": {"steps": 100},
           "spec": {"task": "prefix_sums", "recall": "internal", "norm": "post", "regime": "progressive", "seed": 1},
           "traces": {"stability": {"fields": list(runlog.STABILITY_FIELDS), "rows": rows}}}
    t = traces_frame([run, {**run, "name": "x", "traces": {}}])  # a run without the monitor adds no rows
    assert t.fraction.tolist() == [0.25, 1.0] and t.rho.tolist() == [0.5, 1.25]
    assert t.plain_converged.tolist() == [1.0, 0.25] and set(t.seed) == {1}
