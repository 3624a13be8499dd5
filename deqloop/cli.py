"""The ``deqloop`` command line.

    deqloop train --task sudoku --recall internal --norm post --backward implicit --width 128
    deqloop eval runs/sudoku/last.pt --iters 1,10,30,100,500
    deqloop demo

Every ``train`` flag is a field of :class:`deqloop.train.TrainConfig` (``--max-iter`` is
``max_iter``). Errors are reported in one line on stderr with exit status 2, no traceback
(set ``DEQLOOP_DEBUG=1`` to see it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error, printed as one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``deqloop train: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"m\": 5}}', got {text!r}")
    return value


def _iters(text: str) -> list[int]:
    from deqloop.evaluate import parse_iters

    try:
        return parse_iters(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _choices() -> dict[str, tuple[str, ...]]:
    from deqloop.model import ATTENTIONS, INITS, NORMS, RECALLS
    from deqloop.train import AMP_MODES, EQUILIBRIUM_BACKWARDS, LOSSES, SCHEDULES, TASK_NAMES

    return {
        "task": TASK_NAMES,
        "recall": RECALLS,
        "norm": NORMS,
        "attention": ATTENTIONS,
        "init": INITS,
        "loss": LOSSES,
        "backward": EQUILIBRIUM_BACKWARDS,
        "schedule": SCHEDULES,
        "amp": AMP_MODES,
    }


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field; defaults are the dataclass's (shown in help)."""
    from deqloop.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    choices = _choices()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name == "out":
            help_text += " [default: runs/<task>]"
        elif default not in (None, (), {}):
            help_text += f" [default: {default}]"
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name == "data":
            kw.update(nargs="+", metavar="PATH")
        elif f.name == "eval_iters":
            kw.update(type=_iters, metavar="N,N,...")
        elif typing.get_origin(hint) is dict:
            kw.update(type=_json_object, metavar="JSON")
        else:
            args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            kw["type"] = args[0]
            if f.name in choices:
                kw["choices"] = choices[f.name]
            else:
                kw["metavar"] = {int: "N", float: "X", str: "S"}.get(args[0], "V")
        parser.add_argument(flag, help=help_text, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The ``deqloop`` parser with its ``train``, ``eval``, ``demo`` and ``analyze`` commands."""
    parser = _Parser(
        prog="deqloop",
        description="Looped transformers as deep equilibrium models: train on easy problems, "
        "solve harder ones by iterating longer.",
        epilog="Run 'deqloop COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a looped model on a task",
        description="Train a looped transformer. Writes OUT/config.json, OUT/metrics.jsonl (JSON lines) "
        "and OUT/last.pt (atomic checkpoint). Under torchrun the same command trains with "
        "DistributedDataParallel.",
    )
    _add_config_flags(p)

    p = sub.add_parser(
        "eval",
        help="accuracy vs test-time iterations of a checkpoint",
        description="Evaluate a checkpoint on its task's easy (val) and hard splits at several "
        "test-time iteration counts, and adaptively (each input iterates until it settles). Prints "
        "tables, writes eval.json and iterations.png beside the checkpoint (or in --out).",
    )
    p.add_argument("checkpoint", help="a checkpoint written by deqloop train (e.g. runs/sudoku/last.pt)")
    p.add_argument("--iters", type=_iters, default=[1, 2, 5, 10, 30, 100, 300, 500], metavar="N,N,...",
                   help="iteration counts to score [default: 1,2,5,10,30,100,300,500]")
    p.add_argument("--n", type=int, default=512, help="examples per split [default: 512]")
    p.add_argument("--data", nargs="+", metavar="PATH", default=None,
                   help="data files for the task instead of those it was trained with")
    p.add_argument("--extra", nargs="+", metavar="PATH", default=[],
                   help="more test sets to score (sudoku or Lichess CSV files), named by file name")
    p.add_argument("--lengths", type=_iters, default=None, metavar="L,L,...",
                   help="prefix_sums: also score these input lengths")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="an input has settled when its state changes by less than this, relative; "
                   "reported as adaptive accuracy and iterations [default: 1e-3]")
    p.add_argument("--solver", default=None, metavar="S",
                   help="also solve each split with this fixed-point solver (e.g. anderson) to --solver-rtol")
    p.add_argument("--solver-rtol", type=float, default=1e-4, help="tolerance of --solver [default: 1e-4]")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation sets [default: 12345]")
    p.add_argument("--out", default=None, help="folder for eval.json and iterations.png [default: the checkpoint's]")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N [default: auto]")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")

    p = sub.add_parser(
        "demo",
        help="train on short prefix sums on CPU, solve 4x and 8x longer ones",
        description="Train a small looped transformer on prefix sums (parity of every prefix of a bit "
        "string) of up to 12 bits on CPU, then score exact match at 12, 48 and 96 bits across "
        "test-time iterations. About 2.5 minutes on 2 CPU cores. Prints the tables and writes "
        "OUT/iterations.png, OUT/demo.json and the training run (OUT/last.pt, OUT/metrics.jsonl).",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long run of the same code (for tests)")
    p.add_argument("--out", default="runs/demo", help="output folder [default: runs/demo]")
    p.add_argument("--seed", type=int, default=0, help="seed [default: 0]")
    p.add_argument("--steps", type=int, default=None, help="training steps [default: the recipe's]")
    p.add_argument("--n", type=int, default=None, help="random test inputs per length [default: 256]")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch; the model is tiny, so one is usually fastest [default: 1]")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar [default: on]")

    _add_analyze(sub)
    return parser


def _add_analyze(sub: Any) -> None:
    """``deqloop analyze``, from :mod:`deqloop.analysis.cli`."""
    try:
        from deqloop.analysis.cli import add_analyze_arguments, run_analyze
    except ImportError:  # the analysis package is optional for training and evaluation
        return
    p = sub.add_parser(
        "analyze",
        help="stability analysis of a checkpoint's fixed points",
        description="Stability of a checkpoint's fixed points on a batch of a task: reachability from "
        "several initial states, spectrum of the loop Jacobian, input sensitivity. Prints a summary, "
        "writes report.json and plots.",
    )
    add_analyze_arguments(p)
    p.set_defaults(func=run_analyze)


# ----------------------------------------------------------------------------------------------
# Commands


def _cmd_train(args: argparse.Namespace) -> int:
    from deqloop.train import TrainConfig, train

    values = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    if "data" in values:
        for path in values["data"]:
            if not Path(path).is_file():
                raise CLIError(f"no such data file: {path}")
    config = TrainConfig.from_dict(values)
    result = train(config)
    if result.rank != 0:  # under torchrun, rank 0 reports
        return 0
    line = f"trained {result.step} steps in {result.seconds:.0f} s"
    if result.skipped:
        line += f" ({result.skipped} skipped: non-finite)"
    print(f"{line}; checkpoint {result.checkpoint}")
    if result.eval_metrics:
        e = result.eval_metrics
        for band in ("val", "hard"):
            accs = ", ".join(f"{t}: {100 * a:.1f}%" for t, a in zip(e["iters"], e[f"{band}_accuracy"]))
            print(f"{band} accuracy by iterations: {accs}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from deqloop.checkpoint import load_checkpoint
    from deqloop.evaluate import evaluate_checkpoint
    from deqloop.train import TrainConfig, build_task

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        raise CLIError(f"unknown device {args.device!r}; allowed: auto, cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"device {args.device!r} requested but CUDA is not available")
    if args.n < 1:
        raise CLIError(f"--n must be a positive integer, got {args.n}")
    if not args.rtol > 0 or not args.solver_rtol > 0:
        raise CLIError(f"--rtol and --solver-rtol must be > 0, got {args.rtol} and {args.solver_rtol}")
    if args.solver is not None:
        from deqloop.solvers import available_solvers

        if args.solver not in available_solvers():
            raise CLIError(f"unknown solver {args.solver!r}; allowed: {', '.join(available_solvers())}")
    state = load_checkpoint(args.checkpoint)
    config = TrainConfig.from_dict({**state.get("train_config", {}), "resume": False, "overwrite": False})
    if args.data is not None:
        for path in args.data:
            if not Path(path).is_file():
                raise CLIError(f"no such data file: {path}")
        config = dataclasses.replace(config, data=tuple(args.data))
    task = build_task(config)
    splits: dict[str, Any] = {}
    if args.lengths:
        if config.task != "prefix_sums":
            raise CLIError(f"--lengths applies to prefix_sums, not {config.task}")
        from deqloop.tasks.prefix_sums import generate

        for length in args.lengths:
            splits[f"{length} bits"] = generate(args.n, length, seed=args.seed, stream=3)
    for path in args.extra:
        splits[Path(path).stem] = _load_extra(config.task, path, args.n)
    report = evaluate_checkpoint(args.checkpoint, iters=args.iters, n=args.n, splits=splits, task=task,
                                 settle_rtol=args.rtol, solver=args.solver, solver_rtol=args.solver_rtol,
                                 seed=args.seed, device=args.device)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    print(report.text())
    (out / "eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plot = report.curves.plot(out / "iterations.png", title=f"{report.task}: accuracy vs test-time iterations")
    print(f"wrote {out / 'eval.json'} and {plot}")
    return 0


def _load_extra(task: str, path: str, n: int):
    if not Path(path).is_file():
        raise CLIError(f"no such file: {path}")
    if task == "sudoku":
        from deqloop.tasks.sudoku import load

        x, y = load(path)[:2]
    elif task == "chess":
        from deqloop.tasks.chess import load_lichess

        x, y = load_lichess(path, limit=n)[:2]
    else:
        raise CLIError(f"--extra takes sudoku or chess files, not for task {task}")
    return x[:n], y[:n]


def _cmd_demo(args: argparse.Namespace) -> int:
    from deqloop.demo import run_demo

    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be a positive integer, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be a positive integer, got {args.steps}")
    run_demo(quick=args.quick, out=args.out, seed=args.seed, steps=args.steps, n=args.n, threads=args.threads,
             progress=args.progress)
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Run ``deqloop``; returns the exit status (0 on success, 2 on a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = getattr(args, "func", None) or COMMANDS.get(args.command)
    if command is None:
        parser.error(f"unknown command {args.command!r}")
    try:
        return int(command(args) or 0)
    except KeyboardInterrupt:
        print("deqloop: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — user errors become one line; bugs keep their traceback
        if not _is_user_error(e) or os.environ.get("DEQLOOP_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"deqloop {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(e: Exception) -> bool:
    from deqloop.checkpoint import CheckpointError
    from deqloop.train import TrainingError

    return isinstance(e, (CLIError, CheckpointError, TrainingError, ValueError, TypeError, FileNotFoundError,
                          PermissionError, IsADirectoryError))


if __name__ == "__main__":
    sys.exit(main())
