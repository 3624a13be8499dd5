"""The ``deqloop`` command line.

    deqloop train --task NAME --recall internal --norm post --backward implicit --width 128
    deqloop train --import mypackage.tasks --task copy_shifted ...   # a task of your own
    deqloop train --recipe demo --steps 200        # a named recipe, flags on top (--list-recipes)
    deqloop eval runs/NAME/last.pt --iters 1,10,30,100,500
    deqloop analyze runs/NAME/last.pt
    deqloop plot runs/A runs/B --out stability.png   # stability traces (train --stability-every N)
    deqloop demo

Every ``train`` flag is a field of :class:`deqloop.train.TrainConfig` (``--max-iter`` is
``max_iter``) or of the chosen task's settings (``--length`` for prefix sums). The library's own
errors (bad settings, data, checkpoints, memory) and the system's (``OSError``: a full disk, no
permission) are reported in one line on stderr with exit status 2; anything else is a bug and
keeps its traceback (``DEQLOOP_DEBUG=1`` shows it for all). A
``train`` stopped by SIGINT or SIGTERM checkpoints the step it finished, prints the command that
resumes it and exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, NoReturn

from deqloop import __version__
from deqloop.errors import DeqloopError

__all__ = ["CLIError", "build_parser", "main"]

EXIT_USAGE = 2


class CLIError(DeqloopError):
    """A user error of the command line, printed as one line."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``deqloop train: error: ... (see --help)``.
    Abbreviated flags are not accepted (``--step 5`` is an error, not ``--steps 5``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Unparsed(Exception):
    pass


class _Prescan(argparse.ArgumentParser):
    """Reads ``--task``, ``--recipe`` and every ``--import`` before the real parser is built (the
    task's own flags depend on them); anything it cannot read is left to the real parser."""

    def __init__(self) -> None:
        super().__init__(add_help=False, allow_abbrev=False)
        self.add_argument("--task")
        self.add_argument("--recipe")
        self.add_argument("--import", dest="imports", action="append", default=[])

    def error(self, message: str) -> NoReturn:
        raise _Unparsed(message)


def _prescan(argv: list[str]) -> argparse.Namespace:
    try:
        return _Prescan().parse_known_args(argv)[0]
    except _Unparsed:
        return argparse.Namespace(task=None, recipe=None, imports=[])


def import_modules(modules: list[str]) -> None:
    """Import the user's modules (they register their tasks)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise CLIError(f"--import {module}: {e}") from e


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``deqloop`` parser; ``argv`` tells ``train`` which task's flags to offer."""
    from deqloop.cli import analyze, demo, evaluate, plot, train

    pre = _prescan(list(argv or []))
    task = pre.task
    if task is None and pre.recipe is not None:  # the recipe's task, unless --task names another
        from deqloop.train.recipes import recipe_values

        task = recipe_values(pre.recipe).get("task")
    parser = Parser(prog="deqloop", description="Looped transformers as deep equilibrium models: train on easy "
                    "problems, solve harder ones by iterating longer.",
                    epilog="Run 'deqloop COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"deqloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train.add(sub, task, pre.recipe)
    evaluate.add(sub)
    demo.add(sub)
    analyze.add(sub)
    plot.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``deqloop``; returns the exit status (0 on success, 2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import_modules(_prescan(argv).imports)
        parser = build_parser(argv)
    except DeqloopError as e:
        print(f"deqloop: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "train":
        args.argv = argv  # to print the command that resumes an interrupted run
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("deqloop: interrupted", file=sys.stderr)
        return 130
    except (DeqloopError, OSError) as e:  # the library's own errors and the system's are one line; others are bugs
        if os.environ.get("DEQLOOP_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"deqloop {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
