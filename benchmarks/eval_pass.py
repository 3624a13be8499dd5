"""Evaluation time against training time for one run of a preset (the issue's target: the paper
split's evaluation — 128 strings of 512 bits, counts up to 600, adaptive and the Anderson solve —
no slower than its training). Printed side by side, never asserted by a test.

    python benchmarks/eval_pass.py --train --out /tmp/eval-pass           # train the paper run, then evaluate
    python benchmarks/eval_pass.py --out /tmp/eval-pass                   # evaluate the run trained there
    python benchmarks/eval_pass.py --run runs/sweep/prefix_sums/NAME      # a run a sweep trained (its result.json)
    python benchmarks/eval_pass.py --preset seed-cpu --recall internal --norm post --lr 1e-3 --train --out /tmp/s

The run is the preset's first run of ``--task`` (default prefix sums), ``--recall``, ``--norm``
and ``--lr``. Each evaluation mode runs
:func:`experiments.sweep.evaluate_spec`, the sweep's own evaluation:

* ``full``: every example iterated to the largest count (the evaluation before examples were
  dropped), then the solve;
* ``drop``: the sweep stops iterating an example once its state changes by a tenth of the
  settling tolerance (``drop_rtol="auto"``, the default) and carries its answer forward, then the
  solve.

Each mode loads the run afresh, so each compiles its own block where compiling pays (torch's
on-disk compile cache may make the second compile cheaper: alternate ``--modes`` to check).
Times are wall and CPU time of this process (``time.process_time``; with one thread CPU time is
what the work costs without other jobs on the machine) with the load average beside them. The
training time is measured here with ``--train``; with ``--run`` it is the wall time the sweep
recorded in ``result.json`` (CPU time unknown), so compare it on a machine as loaded as then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, run as a script
from experiments.presets import get_preset  # noqa: E402
from experiments.sweep import evaluate_spec  # noqa: E402

MODES = {"full": None, "drop": "auto"}


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def timed(fn) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def train(preset, spec, out: Path) -> dict[str, float]:
    """Train the preset's run into ``out`` (from scratch), timed."""
    from deqloop.train import TrainConfig, Trainer

    config = TrainConfig.from_flat(preset.train_fields(spec), out=str(out), overwrite=True, device="cpu")
    before = load()
    _, wall, cpu = timed(lambda: Trainer(config).run())
    times = {"wall": wall, "cpu": cpu, "load_before": before, "load_after": load()}
    (out / "train_seconds.json").write_text(json.dumps(times, indent=2) + "\n")
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--task", default="prefix_sums")
    p.add_argument("--recall", default=None, help="the run's recall (default: the preset's first)")
    p.add_argument("--norm", default=None, help="the run's residual (default: the preset's first)")
    p.add_argument("--lr", type=float, default=None, help="the run's learning rate (default: the preset's first)")
    p.add_argument("--out", type=Path, default=None, help="the run's folder (with --train: where to train it)")
    p.add_argument("--run", type=Path, default=None, help="a run trained by experiments.sweep (with result.json)")
    p.add_argument("--train", action="store_true", help="train the run first (timed)")
    p.add_argument("--modes", default="full,drop", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes must name some of {', '.join(MODES)}, got {args.modes!r}")
    if (args.out is None) == (args.run is None):
        p.error("give --out (a run trained here) or --run (a run a sweep trained)")
    preset = get_preset(args.preset)
    only = {"task": (args.task,), "recall": args.recall and (args.recall,), "norm": args.norm and (args.norm,),
            "lr": args.lr and (args.lr,)}
    spec = preset.runs(**only)[0]
    folder = args.out or args.run
    if args.train:
        if args.run is not None:
            p.error("--train trains into --out, not into a sweep's --run")
        folder.mkdir(parents=True, exist_ok=True)
        print(f"training {preset.name} {spec.name} ({load()}) ...", flush=True)
        trained = train(preset, spec, folder)
    elif args.out is not None:
        trained = json.loads((folder / "train_seconds.json").read_text())
    else:
        result = json.loads((folder / "result.json").read_text())
        trained = {"wall": result["seconds"]["train"], "cpu": None, "load_before": "?", "load_after": "?"}

    from deqloop.run import Run

    print(f"{preset.name} {spec.name}: {preset.eval_n} examples a split, counts up to "
          f"{max(preset.eval_iters_for(spec))}, threads {torch.get_num_threads()}")
    cpu = "?" if trained["cpu"] is None else f"{trained['cpu']:.0f}"
    print(f"  training          wall {trained['wall']:7.0f} s  cpu {cpu:>6} s   "
          f"({trained['load_before']} → {trained['load_after']})")
    reports = {}
    for mode in modes:
        run = Run.load(folder / "last.pt", device="cpu")  # afresh: each mode compiles its own block
        before = load()
        report, wall, cpu_s = timed(lambda: evaluate_spec(preset, spec, run, device="cpu", drop_rtol=MODES[mode]))
        reports[mode] = report
        parts = "  ".join(f"{k}{' (compiled)' if report.compiled.get(k) else ''}: "
                          + " + ".join(f"{part} {s:.0f}" for part, s in v.items()) for k, v in report.seconds.items())
        print(f"  evaluation {mode:<6} wall {wall:7.0f} s  cpu {cpu_s:6.0f} s   ({before} → {load()})   "
              f"wall per part: {parts}; loop evaluations an example: "
              + ", ".join(f"{k} {v:.0f}" for k, v in report.evaluations.items()), flush=True)
        for name, res in report.solver.items():
            print(f"    {name} solve: {100 * res['converged']:.1f} % reached the tolerance, "
                  f"{res['iterations_mean']:.0f} evaluations an example on average", flush=True)
    if len(reports) == 2:
        a, b = (reports[m] for m in modes)
        same = a.curves.curves == b.curves.curves and a.settling == b.settling and a.solver == b.solver
        print(f"  curves, adaptive and solve results identical across modes: {same}")
        for name in a.curves.curves:
            gap = lambda c, d: max(abs(u - v) for u, v in zip(c.curves[name], d.curves[name]))  # noqa: E731
            cells = f", cells {gap(a.cells, b.cells):.2g}" if a.cells is not None and b.cells is not None else ""
            print(f"    {name}: largest difference over the counts: exact match {gap(a.curves, b.curves):.2g}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
