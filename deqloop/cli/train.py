"""``deqloop train``: a flag per setting of the TrainConfig tree (by flat name) and per setting of the
chosen task, on top of a named recipe (``--recipe NAME``, :mod:`deqloop.train.recipes`) when one is
given."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from typing import Any

from deqloop.cli.flags import add_dataclass_flags, iters_type, nonempty

__all__ = ["add", "run"]


def compile_mode(text: str) -> bool | str:
    """``--compile`` [auto|true|false]."""
    value = {"auto": "auto", "true": True, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"--compile takes auto, true or false, got {text!r}")
    return value


def segment_mode(text: str) -> int | str:
    """``--compile-segment`` auto|N."""
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--compile-segment takes auto or an integer, got {text!r}") from None


def _choices() -> dict[str, tuple[str, ...]]:
    from deqloop.model import (ATTENTIONS, INITS, NORM_WEIGHTS, NORMS, QK_NORM_ORDERS, RECALL_MAPS, RECALLS,
                               RESIDUALS)
    from deqloop.model.config import PRECISIONS
    from deqloop.model.attention import ATTENTION_BACKENDS
    from deqloop.train.config import AMP_MODES, LOGGERS, LOSSES, SCHEDULES

    return {"recall": RECALLS, "recall_maps": RECALL_MAPS, "norm": NORMS, "norm_weights": NORM_WEIGHTS,
            "residual": RESIDUALS, "qk_norm_order": QK_NORM_ORDERS, "attention": ATTENTIONS, "init": INITS,
            "train_init": INITS, "loss": LOSSES, "schedule": SCHEDULES, "attention_backend": ATTENTION_BACKENDS,
            "amp": AMP_MODES, "logger": LOGGERS, "solve_precision": PRECISIONS}


class ListRecipes(argparse.Action):
    """``--list-recipes``: print each recipe's name and what it is for, then exit."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from deqloop.train.recipes import RECIPES

        width = max(map(len, RECIPES))
        print("".join(f"{name:<{width}}  {r.about}\n" for name, r in RECIPES.items()), end="")
        parser.exit(0)


def add(sub: Any, task: str | None, recipe: str | None = None) -> None:
    """The ``train`` subcommand, with the flags of ``task``; ``recipe`` (when the command line names
    one) lists its values below the flags, since they replace the defaults shown."""
    from deqloop.errors import ConfigError
    from deqloop.tasks import task_class, task_names
    from deqloop.train import TrainConfig
    from deqloop.train.recipes import get_recipe, recipe_names

    epilog = None
    if recipe is not None:
        epilog = (f"recipe {recipe} (its values replace the defaults above; the flags given win): "
                  + get_recipe(recipe).listing())
    p = sub.add_parser(
        "train", help="train a looped model on a task",
        description="Train a looped transformer. Writes OUT/config.json, OUT/metrics.jsonl (JSON lines) and "
        "OUT/last.pt (atomic checkpoint). Under torchrun the same command trains with DistributedDataParallel. "
        "The task's own settings are flags too (see them with --task NAME --help).", epilog=epilog)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register tasks with deqloop.tasks.register_task)")
    p.add_argument("--recipe", metavar="NAME", default=argparse.SUPPRESS,
                   help="start from a named recipe; the flags given set what differs (they win). One of: "
                   + ", ".join(recipe_names()) + " (--list-recipes says what each is for)")
    p.add_argument("--list-recipes", action=ListRecipes, help="list the named recipes and exit")
    from deqloop.train.config import DEFAULT_RECIPE, EQUILIBRIUM_BACKWARDS

    default = f"{DEFAULT_RECIPE['backward']} with {json.dumps(DEFAULT_RECIPE['backward_options'])}"
    flags = add_dataclass_flags(
        p, TrainConfig, choices=_choices(), skip=("task_options",),
        special={"eval_iters": dict(type=iters_type, metavar="N,N,..."),
                 "compile": dict(nargs="?", const=True, type=compile_mode, metavar="auto|true|false"),
                 "compile_segment": dict(type=segment_mode, metavar="auto|N"),
                 "out": dict(type=nonempty, metavar="DIR"),
                 "task": dict(type=str, metavar="{" + ",".join(task_names()) + "}|module:Class"),
                 "backward": dict(type=str, choices=EQUILIBRIUM_BACKWARDS, help=(
                     "equilibrium loss: the gradient through the fixed point (default: DEFAULT_RECIPE, "
                     f"{default}; given explicitly, a mode's options default to its own, phantom's to one "
                     "undamped step); not used by the progressive loss"))})
    cls = task_class(task or TrainConfig.task)
    if dataclasses.is_dataclass(cls):
        group = p.add_argument_group(f"settings of task {task or TrainConfig.task!r}")
        clash = sorted({f.name for f in dataclasses.fields(cls)} & set(flags))
        if clash:
            raise ConfigError(f"task {task!r} has settings named like training flags ({', '.join(clash)}); "
                              "rename them to use the task from the command line")
        p.set_defaults(task_fields=add_dataclass_flags(group, cls))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; on SIGINT/SIGTERM print how to resume and return 128 + the signal's number."""
    from deqloop.errors import TrainingInterrupted
    from deqloop.train import train
    from deqloop.train.interrupt import resume_command
    from deqloop.train.recipes import config_from_flat, recipe

    values = dict(vars(args))
    values.pop("task_fields", None)
    argv = values.pop("argv", None)
    for key in ("command", "func", "imports"):
        values.pop(key, None)
    name = values.pop("recipe", None)
    config = recipe(name, **values) if name is not None else config_from_flat(values)
    try:
        result = train(config)
    except TrainingInterrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
            command = resume_command(argv) if argv is not None else "the same command with --resume"
            print(f"deqloop train: interrupted by {signal.Signals(e.signal).name} at step {e.step} of {config.optim.steps}; "
                  f"checkpoint {e.checkpoint}; resume with: {command}", file=sys.stderr)
        return e.exit_status
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
