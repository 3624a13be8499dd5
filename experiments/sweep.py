"""Train, evaluate and analyse every configuration of a preset; one ``result.json`` per run.

    python -m experiments.sweep --preset cpu --out runs/sweep                 # the default grid
    python -m experiments.sweep --preset cpu --tasks sudoku --norms pre,peri  # other cells of it
    python -m experiments.sweep --preset cpu --tasks prefix_sums --seeds 1    # another seed
    python -m experiments.report runs/sweep                                   # RESULTS.md
    python -m experiments.sweep --preset cpu --jobs 2                         # two runs at a time
    python -m experiments.sweep --preset gpu --launcher slurm --slurm-partition gpu  # a cluster

A finished run (its ``result.json`` exists) is skipped, and an interrupted one resumes from its
``last.pt``, so the same command continues a sweep. A finished run whose training settings differ
from what the preset gives now (a changed preset, or ``--steps``) stops the sweep before it starts,
naming the run and the fields: its results would be reported under the wrong configuration.
``--jobs N`` runs N runs side by side in local processes, ``--launcher slurm`` submits one Slurm
job per run through submitit (:mod:`experiments.executor`); each run's line is printed, and its
summary written, as it finishes.

Each run measures accuracy on the validation and hard splits at each test-time iteration count
(the paper's number, @500, beside the best over counts), adaptively (each example iterated until it
stops changing) and by Anderson's solve; the stability numbers of :func:`deqloop.analysis.analyze`
from z₀ = e, as the paper's models start for every recall mode, with the finite difference of z* in
e (claim C1); and gradient norms and skipped steps over training (from the run's metrics log).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from deqloop.files import atomic_write
from deqloop.tasks.io import shared_data_dir
from deqloop.train.config import RUNTIME_FIELDS
from experiments.executor import LAUNCHERS, RunJob, SlurmOptions, run_all
from experiments.presets import PRESETS, REGIMES, SPEC_NORMS, SPEC_RECALLS, Preset, RunSpec, get_preset
from experiments.runlog import mean, median, training_numbers
from experiments.summary import PAPER_ITERATIONS, curves_of, summarize, summary_path, write_summary

ANALYSIS_SOLVE = dict(solver="anderson", max_iter=100, rtol=1e-4)
EVAL_SEED = 12345  # the test sets' seed (evaluate_run's default)


def git_commit() -> str:
    """This checkout's short commit, ``+dirty`` where tracked files changed; ``"unknown"`` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stability_numbers(report) -> dict[str, Any]:
    """The scalars of a StabilityReport that the tables compare (``input_fd``, from z₀ = e as the paper's
    models start, is claim C1's; ``weights`` the paper's weight diagnostics, deqloop.analysis.weights)."""
    d, regimes = report.to_dict(), report.regime or []
    reach = d["reachability"][report.reference_init]
    return {
        "converged_fraction": report.converged_fraction, "distinct_fixed_points": report.distinct_fixed_points,
        "fixed_point_spread": report.fixed_point_spread, "agreement": report.agreement,
        "iterations_median": median(reach["iterations"]), "contraction_median": median(reach["contraction"]),
        "spectral_radius_median": median(d.get("spectral_radius") or []),
        "contractive_fraction": regimes.count("contractive") / len(regimes) if regimes else None,
        **{f"{k}_median": median(d.get(k) or []) for k in ("sigma_max", "resolvent_norm", "input_sensitivity",
                                                            "local_smoothness", "input_fd")},
        "backward_converged_fraction": mean(d.get("backward_converged") or []),
        "backward_iterations_median": median(d.get("backward_iterations") or []),
        "seconds": sum(report.timings.values()), "weights": dict(report.weights),
    }


def run_line(result: dict[str, Any], split: str = "hard") -> str:
    """A finished run in a line: the paper's number (accuracy at 500 iterations), the best over the
    counts, and the accuracy at each count, on ``split``."""
    c = curves_of(result["eval"])
    if c is None or split not in c.curves:
        return f"no {split} split evaluated"
    at, (count, best) = c.at(split), c.best(split)
    return (f"{split} @{PAPER_ITERATIONS} {'not scored' if at is None else f'{100 * at:.1f}%'}, best {100 * best:.1f}% "
            f"at {count}; by iterations {c.curves[split]}")


# where and how a run ran (the stability monitor included: it measures, never trains), not what it trained
_NOT_COMPARED = frozenset({"data"}) | RUNTIME_FIELDS


def stale_fields(result: dict[str, Any], preset: Preset, spec: RunSpec) -> list[str]:
    """The training fields of a finished run that differ from what ``preset`` would train now,
    as ``"name: was → now"``; empty when the run still belongs to the preset's grid."""
    stored = result.get("train_config", {})
    diffs = []
    for key, now in preset.train_fields(spec).items():
        if key in _NOT_COMPARED:
            continue
        was = stored.get(key)
        if key == "task_options":  # the preset's settings (not data files: where a run's data lay)
            was = {k: (was or {}).get(k) for k in now if k not in _NOT_COMPARED}
            now = {k: v for k, v in now.items() if k not in _NOT_COMPARED}
        if json.loads(json.dumps(was)) != json.loads(json.dumps(now)):
            diffs.append(f"{key}: {was!r} → {now!r}")
    return diffs


def evaluate_spec(preset: Preset, spec: RunSpec, run: Any, *, device: Any, **options: Any) -> Any:
    """A trained run evaluated as the preset evaluates it (its bands and extra sets, its counts,
    ``eval_n`` examples, the Anderson solve where the preset solves): an
    :class:`~deqloop.eval.EvalReport`. ``options`` go to :func:`deqloop.eval.evaluate_run`."""
    from deqloop.eval import evaluate_run

    extra = dict(run.require_task().extra_split(spec_, preset.eval_n, EVAL_SEED)
                 for spec_ in preset.extra_sets.get(spec.task, ()))
    return evaluate_run(run, iters=preset.eval_iters_for(spec), n=preset.eval_n, splits=extra,
                        solver="anderson" if preset.solves(spec) else None, solver_rtol=1e-4, seed=EVAL_SEED,
                        device=device, **options)


def run_one(preset: Preset, spec: RunSpec, root: Path, *, data: dict[str, dict[str, Any]], device: str = "auto",
            command: str = "", results: Path | None = None) -> dict[str, Any]:
    """Train, evaluate and analyse one run; writes and returns its result, and writes its summary
    under ``results`` (also for a finished run whose summary is missing) unless that is None.
    ``data`` maps a task to task settings that say where its data lies (e.g. chess's files)."""
    from deqloop.analysis import analyze
    from deqloop.device import resolve_device
    from deqloop.run import Run
    from deqloop.train import TrainConfig, Trainer

    out = root / spec.name
    result_path = out / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if results is not None and not summary_path(results, spec.name).exists():
            write_summary(summarize(result, out / "metrics.jsonl"), results)
        return result
    out.mkdir(parents=True, exist_ok=True)
    fields = preset.train_fields(spec)
    fields["task_options"].update(data.get(spec.task, {}))
    resume = (out / "last.pt").exists()
    config = TrainConfig.from_flat(**fields, out=str(out), resume=resume, overwrite=not resume, device=device)
    t0 = time.perf_counter()
    trained = Trainer(config).run()
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    run = Run.load(trained.checkpoint, device=resolve_device(device))
    report = evaluate_spec(preset, spec, run, device=resolve_device(device))
    eval_seconds = time.perf_counter() - t1

    model, task = run.model.eval(), run.require_task()  # analysed on the run's device
    analysis = {}
    t2 = time.perf_counter()
    for band in ("hard", "val") if preset.solves(spec) else ():  # the untied baseline has no loop to analyse
        x = task.make(band, preset.analyze_n, seed=999)[0].to(next(model.parameters()).device)
        full = analyze(model, x, inits=("embed", "zeros", "noise"), **ANALYSIS_SOLVE, **preset.analysis)
        analysis[band] = stability_numbers(full)
    analysis_seconds = time.perf_counter() - t2

    result = {
        "spec": {"task": spec.task, "recall": spec.recall, "norm": spec.norm, "regime": spec.regime, "seed": spec.seed,
                 **({"lr": spec.lr} if spec.lr is not None else {})},
        "name": spec.name,
        "preset": preset.name,
        "train_config": config.to_flat(),  # flat names, as the summaries and the report read them
        "train_depth": config.depth(),
        "train": {**training_numbers(out / "metrics.jsonl"), "steps": trained.step, "seconds": train_seconds},
        "eval": report.to_dict(),
        "analysis": analysis,
        "analysis_options": {**ANALYSIS_SOLVE, **preset.analysis, "n": preset.analyze_n},
        "seconds": {"train": train_seconds, "eval": eval_seconds, "analysis": analysis_seconds},
        "commit": git_commit(),
        "command": command,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "threads": torch.get_num_threads()},
    }
    atomic_write(result_path, json.dumps(result, indent=1, default=float))
    if results is not None:
        write_summary(summarize(result, out / "metrics.jsonl"), results)
    return result


def default_data(shared: Path | None, sudoku_extreme: Path | None = None) -> dict[str, dict[str, Any]]:
    """Task settings that point at data files: the shared Lichess files for chess (train ≤ 1600,
    hard 1601–2000) when present; Sudoku-Extreme's ``train.csv`` and ``test.csv`` in
    ``sudoku_extreme`` when given (for the presets that split it as the paper does)."""
    data: dict[str, dict[str, Any]] = {}
    chess_dir = shared / "chess" if shared is not None else None
    files = sorted(str(p) for p in chess_dir.glob("lichess_puzzles_rating_*.csv")) if chess_dir and chess_dir.is_dir() else []
    if files:
        data["chess"] = {"data": files}
    if sudoku_extreme is not None:
        data["sudoku"] = {"data": str(sudoku_extreme / "train.csv"), "test_data": str(sudoku_extreme / "test.csv")}
    return data


def missing_data(preset: Preset, tasks: set[str], data: dict[str, dict[str, Any]]) -> list[str]:
    """The tasks of ``tasks`` whose settings in ``preset`` (with ``data``) the task rejects, each as
    ``"task: reason"`` (e.g. the paper's sudoku split without its files), found before any run starts."""
    from deqloop.errors import ConfigError
    from deqloop.tasks import get_task

    bad = []
    for task in sorted(tasks):
        options = {**preset.train[task].get("task_options", {}), **data.get(task, {})}
        try:
            get_task(task, **options)
        except ConfigError as err:
            bad.append(f"{task}: {err}")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="grid and scale (default cpu)")
    p.add_argument("--out", default="runs/sweep", help="root folder of the runs (default runs/sweep)")
    p.add_argument("--results", default=None,
                   help="folder of the committed run summaries (default: the preset's, results/runs for all "
                        "but the paper preset; '' writes none)")
    p.add_argument("--tasks", help="comma-separated subset of the preset's tasks")
    p.add_argument("--recalls", help=f"comma-separated, of {', '.join(SPEC_RECALLS)} (default: the preset's grid per "
                                     "task; fixed: the paper's untied baseline)")
    p.add_argument("--norms", help=f"comma-separated, of {', '.join(SPEC_NORMS)} (default: the preset's grid per task; "
                                   "gru: the paper's GRU residual with peri norm)")
    p.add_argument("--lrs", help="comma-separated learning rates (default: the preset's)")
    p.add_argument("--regimes", help=f"comma-separated, of {', '.join(REGIMES)} (default: the preset's grid per task)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--steps", type=int, help="override training steps of every run")
    p.add_argument("--shared", default=str(shared_data_dir()),
                   help="folder of the shared puzzle data (chess trains on its Lichess files when present)")
    p.add_argument("--sudoku-extreme", default=None,
                   help="folder holding Sudoku-Extreme's train.csv and test.csv (the seed presets split them as the "
                        "paper does)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop starting new runs after this many seconds (0: none)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    g = p.add_argument_group("executor", "where the runs execute (experiments/executor.py)")
    g.add_argument("--jobs", type=int, default=1, help="local processes running runs side by side (default 1: "
                   "one after another in this process)")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local (--jobs processes), slurm (one job per run, through submitit), or submitit's local "
                        "and debug executors (the same submission path without a cluster)")
    g.add_argument("--slurm-partition", help="Slurm partition")
    g.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per run (default 1)")
    g.add_argument("--slurm-cpus", type=int, default=8, help="CPU cores per run (default 8)")
    g.add_argument("--slurm-mem-gb", type=int, help="memory per run in GB")
    g.add_argument("--slurm-time", type=int, default=240, help="time limit per job in minutes (default 240); a run "
                   "cut off is requeued and resumes from its last checkpoint")
    g.add_argument("--slurm-parallel", type=int, default=64, help="at most this many runs at once (default 64)")
    g.add_argument("--slurm-extra", type=json.loads, default={}, metavar="JSON",
                   help='other sbatch options as a JSON object, e.g. \'{"account": "lab", "qos": "high"}\'')
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be ≥ 1, got {a.jobs}")
    if a.time_limit and (a.jobs > 1 or a.launcher != "local"):
        p.error("--time-limit stops a sweep that runs one run at a time (--jobs 1, --launcher local)")
    if not isinstance(a.slurm_extra, dict):
        p.error(f"--slurm-extra takes a JSON object, got {a.slurm_extra!r}")

    preset = get_preset(a.preset)
    if a.steps:
        preset = preset.with_(train={t: {**v, "steps": a.steps} for t, v in preset.train.items()})

    def values(flag: str, kind: type = str) -> tuple | None:  # a comma-separated flag's values
        text = getattr(a, flag)
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip()) if text else None
        except ValueError:
            p.error(f"--{flag} takes comma-separated {kind.__name__} values, got {text!r}")

    try:
        specs = preset.runs(task=values("tasks"), recall=values("recalls"), norm=values("norms"),
                            regime=values("regimes"), seed=values("seeds", int), lr=values("lrs", float))
    except ValueError as err:
        p.error(str(err))
    root = Path(a.out)
    stale = []
    for s in specs:
        path = root / s.name / "result.json"
        if path.exists():
            try:
                diffs = stale_fields(json.loads(path.read_text()), preset, s)
            except json.JSONDecodeError as err:
                p.error(f"{path}: not valid JSON ({err}); delete it to redo the run")
            if diffs:
                stale.append(f"  {path}: {'; '.join(diffs)}")
    if stale:
        p.error("these finished runs were trained with other settings than the preset now gives, so they would be "
                "reported under the wrong configuration (nothing was changed; use another --out, or delete them "
                "to redo them):\n" + "\n".join(stale))
    if a.dry_run:
        for s in specs:
            print(s.name, "(done)" if (root / s.name / "result.json").exists() else "")
        return 0
    shared = Path(a.shared)
    data = default_data(shared if shared.is_dir() else None, Path(a.sudoku_extreme) if a.sudoku_extreme else None)
    bad = missing_data(preset, {s.task for s in specs}, data)
    if bad:
        p.error("these tasks cannot run with the data given (nothing was started):\n  " + "\n  ".join(bad))
    command = "python -m experiments.sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    from tqdm.auto import tqdm

    start = time.perf_counter()
    done = 0
    results = Path(preset.results if a.results is None else a.results) if a.results != "" else None
    jobs = [(spec.name, RunJob(run_one, preset, spec, root, data=data, device=a.device, command=command,
                               results=results)) for spec in specs]
    if a.time_limit:  # one at a time, in this process: stop starting new runs after the limit
        jobs = itertools.takewhile(lambda _: time.perf_counter() - start <= a.time_limit, jobs)
    slurm = SlurmOptions(partition=a.slurm_partition, gpus=a.slurm_gpus, cpus=a.slurm_cpus, mem_gb=a.slurm_mem_gb,
                         time_min=a.slurm_time, parallel=a.slurm_parallel, extra=a.slurm_extra)
    bar = tqdm(total=len(specs), desc=f"sweep {preset.name}", unit="run")
    for name, res in run_all(jobs, launcher=a.launcher, workers=a.jobs, folder=root / ".submitit", slurm=slurm):
        done += 1
        bar.update()
        bar.write(f"{name}: {run_line(res)}")
    if done < len(specs):
        bar.write(f"time limit reached after {done} runs; run the same command to continue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
