"""``deqloop eval``: accuracy vs test-time iterations of a checkpoint, on its task's splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deqloop.cli.flags import iters_type, nonempty

__all__ = ["add", "run"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="accuracy vs test-time iterations of a checkpoint",
        description="Evaluate a checkpoint on its task's easy (val) and hard splits at several test-time iteration "
        "counts, and adaptively (each input iterates until it settles). Prints tables, among them the paper's number "
        "(accuracy at 500 iterations) beside the best over counts, and the paper's state diagnostics per count "
        "(‖z_T‖/‖z_1‖ and the cosine of consecutive states); writes eval.json and iterations.png beside the "
        "checkpoint (or in --out).")
    p.add_argument("checkpoint", help="a checkpoint written by deqloop train (e.g. runs/NAME/last.pt)")
    p.add_argument("--iters", type=iters_type, default=[1, 2, 5, 10, 30, 100, 300, 500], metavar="N,N,...",
                   help="iteration counts to score [default: 1,2,5,10,30,100,300,500]")
    p.add_argument("--n", type=int, default=512, help="examples per split [default: 512]")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="evaluate on this task (with its default settings and --task-option changes) instead of the "
                   "checkpoint's own; needed for a weights-only checkpoint")
    p.add_argument("--task-option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="change one of the task's settings for this evaluation (e.g. --task-option data FILE); "
                   "VALUE is read as JSON when it parses, else as text")
    p.add_argument("--extra", nargs="+", metavar="SPEC", default=[],
                   help="more test sets, in the task's own terms (a data file, a length, ...)")
    p.add_argument("--cells", action=argparse.BooleanOptionalAction, default=True,
                   help="also report the fraction of cells right [default: on]")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="an input has settled when its state changes by less than this, relative; reported as "
                   "adaptive accuracy and iterations [default: 1e-3]")
    p.add_argument("--drop-rtol", default="auto", metavar="TOL",
                   help="stop iterating an input once its state changes by at most TOL, relative, and count its "
                   "answer there at every later count: auto (a tenth of --rtol), a number <= --rtol, or none "
                   "(iterate every input to the largest count) [default: auto]")
    p.add_argument("--solver", default="auto", metavar="S",
                   help="also solve each split with this fixed-point solver (e.g. anderson) to --solver-rtol; "
                   "auto: the run's own solver if it was trained at its fixed point (--loss equilibrium), where "
                   "the solve, not plain iteration, gives the model's answer; none: no solve [default: auto]")
    p.add_argument("--solver-rtol", type=float, default=1e-4, help="tolerance of --solver [default: 1e-4]")
    p.add_argument("--examples", type=int, default=4, metavar="K",
                   help="show the first K hard examples with the model's answer at the paper's count (else the last), "
                   "as the task shows them (chess: the position and the puzzle's and the model's moves); 0: none "
                   "[default: 4]")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation sets [default: 12345]")
    p.add_argument("--out", default=None, type=nonempty, help="folder for eval.json and iterations.png [default: the checkpoint's]")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N [default: auto]")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register the checkpoint's task)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from deqloop.errors import ConfigError
    from deqloop.cli.flags import json_or_text
    from deqloop.device import resolve_device
    from deqloop.eval.evaluate import evaluate_run
    from deqloop.files import atomic_write, writable_folder
    from deqloop.run import Run
    from deqloop.solvers import available_solvers
    from deqloop.tasks import get_task
    from deqloop.validate import choice, integer, number

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    integer("--n", args.n)
    integer("--examples", args.examples, minimum=0)
    number("--rtol", args.rtol, low=0, low_open=True)
    number("--solver-rtol", args.solver_rtol, low=0, low_open=True)
    drop_rtol = {"auto": "auto", "none": None}.get(args.drop_rtol)
    if drop_rtol is None and args.drop_rtol != "none":
        try:
            drop_rtol = float(args.drop_rtol)
        except ValueError:
            raise ConfigError(f"--drop-rtol must be auto, none or a number, got {args.drop_rtol!r}") from None
        number("--drop-rtol", drop_rtol, low=0, high=args.rtol, low_open=True)
    if args.solver not in ("auto", "none"):
        choice("solver", args.solver, available_solvers())
    changes = {name: json_or_text(value) for name, value in args.task_option}
    named = get_task(args.task, **changes) if args.task else None
    run_ = Run.load(args.checkpoint, device=device, task=named, imports=args.imports)
    task = run_.require_task()
    if changes and named is None:
        if not dataclasses.is_dataclass(task):
            raise ConfigError(f"task {task.name!r} has no settings to change")
        run_.task = get_task(run_.config.task, **{**task.settings(), **changes})
    out = writable_folder(args.out if args.out else Path(args.checkpoint).parent, "--out")  # before any work
    solver = args.solver
    if solver == "auto":  # the run's own solver when it trained at its fixed point
        config = run_.config
        solver = config.solve.solver if config is not None and config.objective.loss == "equilibrium" else "none"
    solver = None if solver == "none" else solver
    splits = dict(run_.task.extra_split(spec, args.n, args.seed) for spec in args.extra)
    report = evaluate_run(run_, iters=args.iters, n=args.n, splits=splits, settle_rtol=args.rtol, solver=solver,
                          solver_rtol=args.solver_rtol, cells=args.cells, seed=args.seed, device=device,
                          drop_rtol=drop_rtol, examples=args.examples)
    print(report.text())
    atomic_write(out / "eval.json", json.dumps(report.to_dict(), indent=2) + "\n")
    plot = report.curves.plot(out / "iterations.png", title=f"{report.task}: accuracy vs test-time iterations")
    print(f"wrote {out / 'eval.json'} and {plot}")
    return 0
