"""The stored chess baselines: matched to runs evaluated on the same examples, and shown in the report."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from experiments import chess_baselines as cb

SCORES = {"random/correct": 0.05, "random/correct_legal": 0.05, "greedy/correct": 0.4, "greedy/correct_legal": 0.4}
FILES = ["/data/chess/lichess_puzzles_rating_0000_1600.csv", "/data/chess/lichess_puzzles_rating_1601_2000.csv"]
STORED = {"format": cb.FORMAT, "sets": [{"task": "chess", "data": sorted(f.rsplit("/", 1)[1] for f in FILES),
                                         "task_options": {"train_max_rating": 1600}, "n": 256, "seed": 12345,
                                         "baselines": {"val": SCORES, "hard": {**SCORES, "greedy/correct": 0.3}}}]}


def run(n: int = 256, own=None, data=FILES, options=None):
    return {"spec": {"task": "chess"}, "train_config": {"task_options": {"data": data, **(options or {})}},
            "eval": {"n": {"val": n, "hard": n}, **({"baselines": own} if own is not None else {})}}


def test_a_run_without_baselines_gets_the_stored_set_of_its_examples():
    assert cb.baselines_for(run(), STORED) == STORED["sets"][0]["baselines"]
    assert cb.baselines_for(run(n=512), STORED) is None  # other examples
    assert cb.baselines_for(run(data=[]), STORED) is None  # generated positions
    assert cb.baselines_for(run(options={"train_max_rating": 1400}), STORED) is None
    assert cb.baselines_for(run(), None) is None
    own = {"val": {"random/correct": 0.1}}
    assert cb.baselines_for(run(own=own), STORED) == own  # a run's own baselines come first


def test_the_report_line_names_each_split_and_metric():
    line = cb.baseline_line([run(), run()], STORED)
    assert "val: random 5.0 / 5.0, greedy 40.0 / 40.0; hard: random 5.0 / 5.0, greedy 30.0 / 40.0." in line
    assert "`correct` / `correct_legal`" in line
    assert cb.baseline_line([run(n=512)], STORED) is None


def test_load_checks_the_format(tmp_path):
    assert cb.load(tmp_path / "none.json") is None
    (tmp_path / "b.json").write_text(json.dumps(STORED))
    assert cb.load(tmp_path / "b.json") == STORED
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="format"):
        cb.load(tmp_path / "bad.json")


def test_the_committed_file_matches_the_sweeps_evaluation():
    from deqloop.eval import evaluate_run

    stored = cb.load(Path(__file__).resolve().parents[1] / cb.DEFAULT_PATH)
    if stored is None:
        pytest.skip("no results/chess_baselines.json")
    seed = inspect.signature(evaluate_run).parameters["seed"].default
    assert all(s["seed"] == seed and set(s["baselines"]) == {"val", "hard"} for s in stored["sets"])
