"""benchmarks/gpu_check.py, the first GPU run's script, runs end to end on the CPU with --tiny."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a minute or more: three trainings, solves and a grid cell end to end
def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    report = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "1", "--cell-steps", "2", "--out", str(tmp_path)])
    assert (tmp_path / "gpu_check.json").is_file()
    rows = report["training"]
    assert [(r["task"], r["regime"]) for r in rows] == [("sudoku", "progressive"), ("prefix_sums", "progressive"),
                                                        ("sudoku", "phantom")]
    assert all(r["step_s"] > 0 and r["loss"] > 0 and r["peak_mib"] is None for r in rows)
    assert rows[2]["converged"] is not None  # the fixed-point loss reports its solves
    bf16 = report["bf16"]
    assert bf16["float32 map"] >= bf16["bf16 map"]  # bf16's rounding can only keep solves from rtol 1e-4
    assert report["cell"]["analysed"] == ["hard", "val"]
    assert report["cell"]["cell"] == "prefix_sums/internal-peri-paper-lr0.0001-s0"  # seed-gpu's first cell
    stored = json.loads((tmp_path / "cell" / "prefix_sums" / "internal-peri-paper-lr0.0001-s0" / "config.json").read_text())
    assert (stored["model"]["width"], stored["solve"]["max_iter"], stored["optim"]["schedule"],
            stored["objective"]["alpha"], stored["optim"]["lr"]) == (16, 30, "paper", 1.0, 1e-4)


@pytest.mark.slow  # a minute or more
def test_gpu_check_takes_its_cuda_paths_on_a_fake_device(tmp_path):
    from fake_cuda import fake_cuda

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    with fake_cuda():
        report = gpu_check.main(["--tiny", "--device", "cuda:0", "--steps", "1", "--cell-steps", "2",
                                 "--out", str(tmp_path)])
    assert report["device"] == "cuda:0" and report["name"] == "fake cuda:0" and report["amp"] == "torch.bfloat16"
    assert all(r["peak_mib"] == 0 and r["syncs_per_step"] == 0 for r in report["training"])  # mocked counters
    assert report["cell"]["analysed"] == ["hard", "val"]
