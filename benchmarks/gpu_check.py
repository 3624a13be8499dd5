"""The first run on a GPU, in 2–4 minutes: does every path work there, how fast, how much memory.

    python benchmarks/gpu_check.py [--device cuda] [--out runs/gpu_check]   # on the GPU machine
    python benchmarks/gpu_check.py --tiny                                   # the same code, seconds on a CPU

Prints, and writes to ``OUT/gpu_check.json``:

1. the machine: torch, the device, its compute capability, the autocast dtype ``amp=auto`` picks;
2. training steps at the ``gpu`` preset's size (width 256, 8 heads, batch 256) on sudoku and
   prefix sums, progressive loss, and on sudoku with the phantom-gradient fixed-point loss: the
   median seconds a step (batches made ahead by the trainer's prefetch threads) beside the
   seconds to make one batch on the CPU (the GPU waits for the data when that is larger), peak
   GPU memory, and host synchronisations per step (counted by ``torch.cuda.set_sync_debug_mode``);
3. bf16: the fraction of forward solves (Anderson, rtol 1e-4, 100 iterations) that converge under
   autocast with the solver's map in float32 (the default), in bf16, and in bf16 at the rtol
   ``precision="autocast"`` raises to;
4. the first cell of the paper's grid (``experiments.sweep.run_one`` with the ``seed-gpu`` preset,
   prefix sums, internal recall, peri residual, the paper regime, lr 1e-4) for a few steps: train,
   evaluate, analyse on the device, end to end.

``--tiny`` runs the same code with the ``tiny`` preset's sizes and the grid cell shrunk (width 16,
batch 16, tested at 64 bits): seconds on a CPU; the test suite runs it. Sections that need CUDA (memory, sync counts) print ``n/a`` elsewhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, run as a script

from deqloop.device import resolve_device  # noqa: E402
from deqloop.model.config import BF16_RTOL  # noqa: E402
from deqloop.solvers import BatchedMap, solve  # noqa: E402
from deqloop.solvers.loop import PrecisionWarning  # noqa: E402
from deqloop.train import TrainConfig, Trainer, runtime  # noqa: E402
from deqloop.train.data import Prefetcher  # noqa: E402

GPU_FIELDS = {  # the gpu preset's sizes (experiments/presets.py), a few steps
    "sudoku": dict(task="sudoku", task_options=dict(augment=True), width=256, heads=8, max_iter=32, batch_size=256),
    "prefix_sums": dict(task="prefix_sums", task_options=dict(length=32, min_length=8, hard_length=512),
                        depth_offset=4, width=256, heads=8, attention="local", window=5, max_iter=36, batch_size=256),
}
TINY_FIELDS = {
    "sudoku": dict(task="sudoku", task_options=dict(blanks=(4, 8), hard_blanks=(9, 12)), width=16, heads=2,
                   max_iter=4, batch_size=8),
    "prefix_sums": dict(task="prefix_sums", task_options=dict(length=8, min_length=4, hard_length=16),
                        depth_offset=2, width=16, heads=2, attention="local", window=3, max_iter=10, batch_size=8),
}
REGIMES = {"progressive": dict(loss="progressive"),
           "phantom": dict(loss="equilibrium", solver="anderson", backward="phantom",
                           backward_options={"steps": 5, "tau": 0.8}, pretrain_steps=0)}


def cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def sync_count(device: torch.device, fn) -> int | None:
    """Host synchronisations ``fn()`` makes on CUDA (``None`` elsewhere)."""
    if not cuda(device):
        fn()
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def train_steps(fields: dict[str, Any], regime: str, device: torch.device, steps: int, out: Path) -> dict[str, Any]:
    """Time ``steps`` training steps after two warm-up steps; the batch-making time; memory; syncs."""
    config = TrainConfig.from_flat(**fields, **REGIMES[regime], steps=steps + 3, warmup_steps=1, lr=5e-4, log_every=1,
                         eval_size=0, checkpoint_every=10**6, progress=False, device=str(device), out=str(out))
    trainer = Trainer(config)
    start = time.perf_counter()
    x, _ = trainer.batches(0)
    batch_seconds = time.perf_counter() - start
    trainer._prefetch = Prefetcher(trainer.batches, config.run.prefetch, pin=cuda(device))
    try:
        for step in range(2):
            trainer.step(step)
        if cuda(device):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        seconds, metrics = [], {}
        for step in range(2, 2 + steps):
            t0 = time.perf_counter()
            metrics = trainer.step(step)
            if cuda(device):
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - t0)
        syncs = sync_count(device, lambda: trainer.step(2 + steps))
    finally:
        trainer._prefetch.close()
        trainer._prefetch = None
    return {
        "task": fields["task"], "regime": regime, "tokens": int(x[0].numel()), "batch": config.optim.batch_size,
        "step_s": statistics.median(seconds), "batch_s": batch_seconds,
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda(device) else None,
        "syncs_per_step": syncs, "loss": metrics.get("loss"), "converged": metrics.get("converged"),
        "trainer": trainer,
    }


@torch.no_grad()
def bf16_convergence(trainer: Trainer, n: int, amp: torch.dtype | None) -> dict[str, float]:
    """Converged fractions of 100-iteration Anderson solves at rtol 1e-4 under bf16 autocast: the map
    in float32 (the default), in bf16, and in bf16 at the rtol ``precision="autocast"`` raises to."""
    model, device = trainer.model.eval(), trainer.device
    x = trainer.task.make("val", n, seed=1)[0].to(device)
    e = model.embed(x)
    z0 = model.initial_state(e)
    out = {}
    for name, step, rtol in (("float32 map", model._solver_step, 1e-4), ("bf16 map", model.step, 1e-4),
                             (f"bf16 map, rtol {BF16_RTOL:g}", model.step, BF16_RTOL)):
        with runtime.autocast(amp or torch.bfloat16, device), warnings.catch_warnings():
            warnings.simplefilter("ignore", PrecisionWarning)  # rtol 1e-4 with a bf16 map: measured, not advised
            sol = solve(BatchedMap(step, e), z0, method="anderson", rtol=rtol, max_iter=100)
        out[name] = float(sol.converged.float().mean())
    return out


def grid_cell(device: torch.device, steps: int, out: Path, tiny: bool) -> dict[str, Any]:
    """The first cell of the ``seed-gpu`` preset (the paper's grid: prefix sums, internal recall, peri
    residual, the paper regime, lr 1e-4, seed 0) trained ``steps`` steps, then evaluated and analysed
    as the sweep does; ``tiny`` shrinks the model, batch and test length to seconds on a CPU."""
    from experiments import sweep
    from experiments.presets import get_preset

    preset = get_preset("seed-gpu")
    spec = preset.runs(task=("prefix_sums",))[0]
    fields = {**preset.train["prefix_sums"], "steps": steps, "stability_every": max(1, steps // 2)}
    if tiny:
        fields |= dict(width=16, heads=2, batch_size=16, amp="auto",
                       task_options={**fields["task_options"], "hard_length": 64})
    preset = preset.with_(tasks=("prefix_sums",), task_grid={}, train={"prefix_sums": fields},
                          eval_n=16 if tiny else 64, analyze_n=8, eval_iters=(1, 8, 32),
                          analysis={**preset.analysis, "eig_maxiter": 5, "resolvent_maxiter": 2, "directions": 2})
    start = time.perf_counter()
    result = sweep.run_one(preset, spec, out, data={}, device=str(device), results=None)
    acc = result["eval"]["curves"]["accuracy"]
    return {"cell": spec.name, "steps": steps, "seconds": time.perf_counter() - start,
            "val_accuracy": acc["val"][-1], "hard_accuracy": acc["hard"][-1],
            "analysed": sorted(result["analysis"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: seconds on a CPU")
    p.add_argument("--steps", type=int, default=0, help="timed training steps per configuration (0: 10, tiny 2)")
    p.add_argument("--cell-steps", type=int, default=0, help="training steps of the grid cell (0: 100, tiny 3)")
    p.add_argument("--out", default="", help="folder for the runs and gpu_check.json [a temporary one]")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    steps = a.steps or (2 if a.tiny else 10)
    cell_steps = a.cell_steps or (3 if a.tiny else 100)
    fields = TINY_FIELDS if a.tiny else GPU_FIELDS
    amp = runtime.amp_dtype("auto", device)
    report: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "amp": str(amp)}
    if cuda(device):
        report |= {"name": torch.cuda.get_device_name(device),
                   "capability": ".".join(map(str, torch.cuda.get_device_capability(device)))}
    print(" ".join(f"{k} {v}" for k, v in report.items()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out or tmp)
        rows = []
        print(f"\n{'task':<12}{'regime':<12}{'tokens':>7}{'batch':>6}{'s/step':>9}{'s/batch (CPU)':>15}"
              f"{'peak MiB':>10}{'syncs/step':>11}{'loss':>8}")
        for task, regime in (("sudoku", "progressive"), ("prefix_sums", "progressive"), ("sudoku", "phantom")):
            row = train_steps(fields[task], regime, device, steps, root / f"{task}-{regime}")
            rows.append(row)
            na = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
            print(f"{task:<12}{regime:<12}{row['tokens']:>7}{row['batch']:>6}{row['step_s']:>9.3f}"
                  f"{row['batch_s']:>15.3f}{na(row['peak_mib'], '.0f'):>10}{na(row['syncs_per_step'], 'd'):>11}"
                  f"{row['loss']:>8.3f}")
        bf16 = bf16_convergence(rows[-1]["trainer"], 32 if a.tiny else 256, amp)
        print(f"\nbf16 autocast, the sudoku model after {steps + 3} phantom steps, Anderson solves converged: "
              + ", ".join(f"{k} {v:.1%}" for k, v in bf16.items()))
        cell = grid_cell(device, cell_steps, root / "cell", a.tiny)
        print(f"\ngrid cell {cell['cell']}: {cell['steps']} steps trained, evaluated and analysed in "
              f"{cell['seconds']:.0f} s; accuracy val {cell['val_accuracy']:.3f}, hard {cell['hard_accuracy']:.3f}")
        report |= {"training": [{k: v for k, v in r.items() if k != "trainer"} for r in rows], "bf16": bf16,
                   "cell": cell}
        (root / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {root / 'gpu_check.json'}" if a.out else "")
    return report


if __name__ == "__main__":
    main()
