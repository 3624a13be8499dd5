"""The per-task examples run end to end with tiny settings (same code as their defaults)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_outputs(out: Path, report: dict, splits: set[str], iters: list[int]) -> None:
    assert set(report["curves"]["accuracy"]) == splits
    assert report["curves"]["iters"] == iters
    assert all(len(acc) == len(iters) for acc in report["curves"]["accuracy"].values())
    assert json.loads((out / "eval.json").read_text())["curves"] == report["curves"]
    assert (out / "iterations.png").stat().st_size > 1000
    assert (out / "last.pt").is_file()


def test_prefix_sums_example(tmp_path, capsys):
    out = tmp_path / "ps"
    report = load_example("prefix_sums").main(
        ["--steps", "3", "--batch-size", "8", "--length", "6", "--min-length", "3", "--hard-length", "12",
         "--extra", "24", "--width", "16", "--heads", "2", "--n", "8", "--iters", "1,4,8", "--out", str(out),
         "--no-progress"])
    check_outputs(out, report, {"val", "hard", "24 bits"}, [1, 4, 8])
    config = json.loads((out / "config.json").read_text())
    assert config["task_options"] == {"length": 6, "min_length": 3, "hard_length": 12, "start_length": None,
                                      "start_min_length": None, "ramp_steps": 0}  # flags override defaults
    assert config["optim"]["steps"] == 3 and config["model"]["width"] == 16 and config["objective"]["depth_offset"] == 2
    assert "adaptive" in capsys.readouterr().out


def test_prefix_sums_example_defaults_to_the_papers_split_schedule(tmp_path):
    out = tmp_path / "ps"
    load_example("prefix_sums").main(
        ["--steps", "2", "--batch-size", "8", "--hard-length", "12", "--extra", "24", "--width", "16", "--heads", "2",
         "--n", "4", "--iters", "1,4", "--out", str(out), "--no-progress"])
    config = json.loads((out / "config.json").read_text())
    assert config["task_options"] == {"length": 32, "min_length": 8, "hard_length": 12, "start_length": 8,
                                      "start_min_length": 4, "ramp_steps": 900}
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_lengths"] == [4, 8]  # the schedule's start, in the metrics log


def test_prefix_sums_example_equilibrium_regime(tmp_path):
    out = tmp_path / "ps"
    report = load_example("prefix_sums").main(
        ["--loss", "equilibrium", "--backward", "phantom", "--max-iter", "5", "--steps", "2", "--batch-size", "8",
         "--length", "6", "--hard-length", "12", "--extra", "24", "--width", "16", "--heads", "2", "--n", "4",
         "--iters", "2,5", "--out", str(out), "--no-progress"])
    check_outputs(out, report, {"val", "hard", "24 bits"}, [2, 5])


def test_examples_folder_on_sys_path_does_not_shadow_python_chess():
    """``python examples/X.py`` puts examples/ first on sys.path, where chess.py would shadow the
    python-chess package: configs of the other tasks must not import it."""
    code = (f"import sys; sys.path.insert(0, {str(EXAMPLES)!r}); from deqloop.train import TrainConfig; "
            "TrainConfig.from_flat(task='sudoku'); TrainConfig.from_flat(task='prefix_sums', depth_offset=2, loss='progressive'); "
            "assert 'deqloop.tasks.chess' not in sys.modules and 'chess' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_sudoku_example(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("DEQLOOP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sudoku"
    report = load_example("sudoku").main(
        ["--steps", "2", "--batch-size", "8", "--width", "16", "--heads", "1",
         "--max-iter", "3", "--n", "4", "--iters", "1,3", "--out", str(out), "--no-progress"])
    splits = {"val", "hard", "36-45 blanks", "46-55 blanks", "magictour_top1465", "sudoku17_1500"}
    check_outputs(out, report, splits, [1, 3])
    options = json.loads((out / "config.json").read_text())["task_options"]
    assert options["blanks"] == [4, 24] and options["hard_blanks"] == [25, 35] and options["augment"]
    # a rating band for the training puzzles replaces the default blank band (not a conflict)
    load_example("sudoku").main(
        ["--train-band", "easy", "--steps", "1", "--batch-size", "4", "--width", "8", "--heads", "1",
         "--max-iter", "2", "--n", "2", "--iters", "1", "--out", str(out), "--no-progress"])
    options = json.loads((out / "config.json").read_text())["task_options"]
    assert options["blanks"] is None and options["train_band"] == "easy" and options["hard_blanks"] == [25, 35]


def test_chess_example_runs_as_a_script(tmp_path):
    """As ``python examples/chess.py``: the script's folder must not shadow the python-chess package."""
    out = tmp_path / "chess"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "chess.py"), "--synthetic", "--train-size", "8", "--epochs", "1",
         "--batch-size", "8", "--width", "16", "--heads", "1", "--max-iter", "3", "--n", "4", "--iters", "1,3",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=EXAMPLES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    check_outputs(out, report, {"val", "hard"}, [1, 3])
    assert report["cells"] is None  # chess squares right say nothing: not reported
    assert json.loads((out / "config.json").read_text())["task_options"]["data"] is None  # generated positions


@pytest.mark.slow
def test_chess_example_on_the_shared_puzzles(tmp_path, shared_data):
    out = tmp_path / "chess"
    report = load_example("chess").main(
        ["--train-size", "32", "--epochs", "1", "--batch-size", "16",
         "--width", "16", "--heads", "1", "--max-iter", "3", "--n", "16", "--iters", "1,3", "--out", str(out),
         "--no-progress"])
    check_outputs(out, report, {"val", "hard"}, [1, 3])
    data = json.loads((out / "config.json").read_text())["task_options"]["data"]
    assert [p.rsplit("/", 1)[-1] for p in data] == ["lichess_puzzles_rating_0000_1600.csv",
                                                     "lichess_puzzles_rating_1601_2000.csv"]


def test_sudoku_example_fixed_point_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DEQLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEQLOOP_SHARED", str(tmp_path / "no-shared"))  # no collections: a quick run
    out = tmp_path / "sudoku"
    report = load_example("sudoku").main(
        ["--loss", "equilibrium", "--backward", "phantom", "--steps", "1", "--batch-size", "4", "--width", "8",
         "--heads", "1", "--max-iter", "3", "--n", "2", "--iters", "1,3", "--out", str(out), "--no-progress"])
    config = json.loads((out / "config.json").read_text())
    assert config["objective"]["loss"] == "equilibrium" and config["objective"]["alpha"] != 0.5  # the example's alpha dropped
    assert report["curves"]["iters"] == [1, 3]
