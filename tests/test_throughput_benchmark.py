"""benchmarks/throughput.py: its FLOP count against a hand count and against torch's own counter
on real training steps, and a smoke run of its output (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from deqloop.train import Trainer
from deqloop.train.objectives import progressive_draw

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tp = load_benchmark()


def test_iteration_flops_by_hand():
    # 2-D 3×3 grid (N = 9), width 4, hidden 16, internal recall, full attention:
    # qkvo 2·9·4·16 = 1152; attention 4·9·9·4 = 1296; MLP 4·9·4·16 = 2304; recall 4·2·9·4·4 = 1152
    assert tp.iteration_flops((3, 3), 4, 16, "internal") == 1152 + 1296 + 2304 + 1152
    # 1-D, 600 tokens, window 3: banded (M = 3): attention 4·600·3·4 = 28800; no recall
    assert tp.iteration_flops((600,), 4, 16, "none", "local", 3) == 2 * 600 * 4 * 16 + 28800 + 4 * 600 * 4 * 16
    # the same at 12 tokens is computed densely with the mask: M = N = 12
    assert tp.iteration_flops((12,), 4, 16, "external", "local", 3) == (
        2 * 12 * 4 * 16 + 4 * 12 * 12 * 4 + 4 * 12 * 4 * 16 + 2 * 2 * 12 * 4 * 4)
    assert tp.readout_flops((5,), 4, 3) == 2 * 5 * (16 + 12)


@pytest.mark.parametrize("alpha, n, k, expected", [
    (1.0, 0, 3, (0, 3, 1)),   # the paper's: no plain iterations at n = 0
    (1.0, 4, 2, (4, 2, 1)),
    (0.5, 4, 2, (0, 14 + 2, 2)),  # every iteration with gradient (z_n from that pass), two readouts
    (0.0, 0, 0, (0, 14, 1)),
])
def test_progressive_counts(alpha, n, k, expected):
    assert tp.progressive_counts(alpha, 14, n, k, detach_z0=False) == expected


@pytest.mark.parametrize("cell", ["prefix_sums", "sudoku"])
def test_step_flops_equal_torchs_count_of_a_real_step(cell):
    """The formula against FlopCounterMode (matmuls forward and backward), attention by the math
    backend so that its products are matmuls too. The formula counts every graded iteration's
    backward as two matmuls per matmul; when the graded segment starts from a detached state, its
    first state matmul needs no input gradient (one N·D·D product per example: under 1 %)."""
    with tempfile.TemporaryDirectory() as out:
        config = tp.cell_config(cell, "eager", True, out)
        config.objective.alpha = 0.5  # no no-grad segment (the counter cannot track modules under no_grad)
        trainer = Trainer(config)
        trainer.model.block.attn.backend = "math"
        for step in range(2):
            grid = tuple(trainer.batches(step)[0].shape[1:])
            with FlopCounterMode(display=False) as counter:
                trainer.step(step)
            n, _ = progressive_draw(config.run.seed, step, config.depth())  # the draw the formula reads
            detached = 2 * config.optim.batch_size * math.prod(grid) * config.model.width**2 if n > 0 or config.objective.detach_z0 else 0
            assert counter.get_total_flops() + detached == tp.step_flops(config, grid, step, trainer.task.num_classes)


def test_quick_run_prints_consistent_ratios(capsys):
    assert tp.main(["--quick", "--cells", "prefix_sums", "--modes", "eager,bf16"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["eager"], ["bf16"])}
    assert set(rows) == {"eager", "bf16"}
    assert float(rows["eager"][3]) == 1.0  # × eager of eager itself
    step_e, step_b, ratio_b = float(rows["eager"][1]), float(rows["bf16"][1]), float(rows["bf16"][3])
    assert ratio_b == pytest.approx(step_e / step_b, rel=0.01, abs=0.006)
    flops = float(out.split("FLOPs per step: ")[1].split()[0]) * 1e9
    for row in rows.values():  # GFLOP/s = FLOPs per step / step time
        assert float(row[5]) == pytest.approx(flops / float(row[1]) / 1e9, rel=0.01, abs=0.06)
    assert "measured peak" in out
    with pytest.raises(SystemExit):
        tp.main(["--cells", "chess9"])
