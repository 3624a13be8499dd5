"""``deqloop analyze CKPT``: load a run, analyze a batch of its task, report.

The task is the one the checkpoint trained on, with the settings (data files, lengths) it trained
with (:class:`deqloop.run.Run`); ``--task`` names another task for a weights-only checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from deqloop.analysis.analyze import MEASURES, analyze
from deqloop.cli.flags import nonempty
from deqloop.analysis.jacobian import EIG_METHODS
from deqloop.model import INITS

__all__ = ["add", "add_analyze_arguments", "run_analyze"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_analyze_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``analyze`` arguments to ``parser`` (a subcommand parser); returns it."""
    from deqloop.tasks import BANDS

    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by deqloop train (or a weights-only one)")
    parser.add_argument("--task", default=None, metavar="NAME",
                        help="analyze inputs of this task (default settings) instead of the checkpoint's own task "
                        "with its training settings; needed for a weights-only checkpoint")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it may register the task)")
    parser.add_argument("--band", default="val", choices=BANDS, help="difficulty band (default: val)")
    parser.add_argument("--n", type=int, default=64, help="number of examples (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples and of the analysis (default: 0)")
    parser.add_argument("--out", type=nonempty, default=None,
                        help="directory for report.json and the plots (default: CKPT's stem + '-analysis' beside it)")
    parser.add_argument("--no-plots", action="store_true", help="write report.json only")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast the model to this dtype first (float64 for precise geometry)")
    parser.add_argument("--inits", nargs="+", choices=INITS, default=None,
                        help="initial states to solve from; the first is the reference (default: embed zeros noise)")
    parser.add_argument("--measures", nargs="*", choices=MEASURES, default=None,
                        help="what to compute besides reachability (default: all; none: reachability only)")
    parser.add_argument("--solver", default=None, help="forward solver (default: the model's)")
    parser.add_argument("--max-iter", type=int, default=None, help="iteration budget (default: the model's)")
    parser.add_argument("--rtol", type=float, default=None, help="forward tolerance (default: the model's)")
    parser.add_argument("--eig-method", choices=EIG_METHODS, default=None, help="eigenvalue method (default: krylov)")
    parser.add_argument("--directions", type=int, default=None, help="random directions for the sensitivity (default: 4)")
    parser.add_argument("--delta", type=float, default=None, help="regime margin δ (default: 0.05)")
    return parser


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``deqloop analyze`` for parsed ``args``: print the summary, write report and plots."""
    from deqloop.device import resolve_device
    from deqloop.files import atomic_write, writable_folder
    from deqloop.run import Run
    from deqloop.tasks import get_task
    from deqloop.validate import integer

    integer("--n", args.n)
    device = resolve_device(args.device)
    run = Run.load(args.checkpoint, device=device, task=get_task(args.task) if args.task else None,
                   imports=args.imports)
    task = run.require_task()
    default_out = args.checkpoint.with_name(args.checkpoint.stem + "-analysis")
    out = writable_folder(Path(args.out) if args.out is not None else default_out, "--out")  # before any work
    model = run.model if args.dtype is None else run.model.to(dtype=DTYPES[args.dtype])
    x, _ = task.make(args.band, args.n, seed=args.seed)
    overrides: dict[str, Any] = {"seed": args.seed}
    for name in ("inits", "measures", "solver", "max_iter", "rtol", "eig_method", "directions", "delta"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    report = analyze(model, x, progress=sys.stderr.isatty(), **overrides)
    print(report.summary())
    atomic_write(out / "report.json", report.to_json(indent=1))
    written = [out / "report.json"]
    if not args.no_plots:
        from deqloop.analysis.plots import plot_report

        written += plot_report(report, out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add(sub: Any) -> None:
    """``deqloop analyze`` on the command line's subparsers."""
    p = sub.add_parser(
        "analyze", help="stability analysis of a checkpoint's fixed points",
        description="Stability of a checkpoint's fixed points on a batch of its task: reachability from several "
        "initial states, spectrum of the loop Jacobian, input sensitivity. Prints a summary, writes report.json "
        "and plots.")
    add_analyze_arguments(p)
    p.set_defaults(func=run_analyze)
