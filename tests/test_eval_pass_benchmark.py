"""benchmarks/eval_pass.py: a smoke run on the tiny preset (its output lines; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_eval_pass_benchmark_trains_evaluates_both_ways_and_compares(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_pass", ROOT / "benchmarks" / "eval_pass.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_pass"] = module
    spec.loader.exec_module(module)
    assert module.main(["--preset", "tiny", "--train", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "training          wall" in out and "evaluation full" in out and "evaluation drop" in out
    assert "curves, adaptive and solve results identical across modes: True" in out
    assert (tmp_path / "train_seconds.json").exists()
    # a second call reuses the run trained there and its recorded training time
    assert module.main(["--preset", "tiny", "--out", str(tmp_path), "--modes", "drop"]) == 0
    out = capsys.readouterr().out
    assert "evaluation drop" in out and "evaluation full" not in out
    with pytest.raises(SystemExit):
        module.main(["--preset", "tiny", "--out", str(tmp_path), "--modes", "fast"])
