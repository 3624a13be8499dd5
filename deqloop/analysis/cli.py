"""``deqloop analyze CKPT --task NAME``: load a checkpoint, analyze a batch of a task, report.

Hook into a command line with subparsers::

    p = subparsers.add_parser("analyze", help="stability analysis of a checkpoint")
    add_analyze_arguments(p)
    ...
    return run_analyze(args)

or run it on its own: ``python -m deqloop.analysis.cli CKPT --task prefix_sums``.

A checkpoint is a ``torch.save``\\ d dict with at least ``"model_config"`` (a dict for
:meth:`LoopedDEQConfig.from_dict`) and ``"model"`` (the state dict), read by
:func:`deqloop.checkpoint.load_model`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from deqloop.analysis.analyze import MEASURES, analyze
from deqloop.analysis.jacobian import EIG_METHODS
from deqloop.model import INITS

__all__ = ["add_analyze_arguments", "load_checkpoint", "main", "run_analyze"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_analyze_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``analyze`` arguments to ``parser`` (a subcommand parser); returns it."""
    from deqloop.tasks import BANDS, TASKS

    parser.add_argument("checkpoint", type=Path, help="checkpoint file (torch.save'd dict with model_config and model)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="task whose inputs to analyze")
    parser.add_argument("--band", default="val", choices=BANDS, help="difficulty band (default: val)")
    parser.add_argument("--n", type=int, default=64, help="number of examples (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples and of the analysis (default: 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for report.json and the plots (default: CKPT's stem + '-analysis' beside it)")
    parser.add_argument("--no-plots", action="store_true", help="write report.json only")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
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


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The :class:`~deqloop.model.LoopedDEQ` of a checkpoint (see :func:`deqloop.checkpoint.load_model`:
    ``compile`` off, eval mode), moved to ``device`` and optionally cast to ``dtype``.

    Raises :class:`deqloop.checkpoint.CheckpointError` for a missing or malformed checkpoint.
    """
    from deqloop.checkpoint import load_model

    model = load_model(path, map_location=device).to(device=device)
    return model if dtype is None else model.to(dtype=dtype)


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``deqloop analyze`` for parsed ``args``: print the summary, write report and plots."""
    from deqloop.tasks import get_task

    if args.n < 1:
        raise SystemExit(f"--n must be ≥ 1, got {args.n}")
    model = load_checkpoint(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype) if args.dtype else None)
    task = get_task(args.task)
    x, _ = task.make(args.band, args.n, seed=args.seed)
    overrides: dict[str, Any] = {"seed": args.seed}
    for name in ("inits", "measures", "solver", "max_iter", "rtol", "eig_method", "directions", "delta"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    report = analyze(model, x, progress=sys.stderr.isatty(), **overrides)
    print(report.summary())
    out = args.out if args.out is not None else args.checkpoint.with_name(args.checkpoint.stem + "-analysis")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json(indent=1))
    written = [out / "report.json"]
    if not args.no_plots:
        from deqloop.analysis.plots import plot_report

        written += plot_report(report, out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deqloop analyze", description="Stability analysis of a LoopedDEQ checkpoint.")
    add_analyze_arguments(parser)
    return run_analyze(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
