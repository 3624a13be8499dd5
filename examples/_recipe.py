"""What every example does: ``deqloop train --recipe NAME`` with the flags you pass on top (they
win over the recipe's values), then ``deqloop eval`` of the result on the task's splits and a few
more sets.

An example is a named recipe (``deqloop/train/recipes.py``; ``deqloop train --list-recipes``) and
what to test it on, not a program.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deqloop.cli import build_parser
from deqloop.cli import main as deqloop
from deqloop.train.recipes import get_recipe


def run(recipe: str, argv: list[str], *, iters: str, n: int, out: str, extra: list[str] = (),
        train: list[str] = (), cells: bool = True, description: str = "") -> dict:
    """Train ``deqloop train --recipe RECIPE *train *argv`` (the flags of ``argv`` win), evaluate at
    ``--iters`` on ``--n`` examples per split plus ``extra`` sets (and the fraction of cells right
    unless ``cells`` is false), and return the evaluation (``eval.json``)."""
    p = argparse.ArgumentParser(description=description, add_help=False)
    p.add_argument("--iters", default=iters, help=f"test-time iteration counts [default: {iters}]")
    p.add_argument("--n", default=str(n), help=f"test examples per split [default: {n}]")
    p.add_argument("--extra", nargs="+", default=list(extra), help="more test sets (the task's terms)")
    p.add_argument("--out", default=out, help=f"run folder [default: {out}]")
    p.add_argument("--no-cells", action="store_true", help="do not report the fraction of cells right")
    p.add_argument("--help", "-h", action="store_true")
    args, train_args = p.parse_known_args(argv)
    if args.help:
        p.print_help()
        print(f"\nEvery other flag goes to `deqloop train --recipe {recipe}` (see `deqloop train --recipe {recipe} "
              "--help`); the recipe's values are:\n  "
              + get_recipe(recipe).listing())
        return {}
    command = ["train", "--recipe", recipe, *train, *train_args, "--out", args.out, "--overwrite"]
    device = getattr(build_parser(command).parse_args(command), "device", "auto")
    code = deqloop(command)
    if code:
        raise SystemExit(code)
    evaluate = ["eval", str(Path(args.out) / "last.pt"), "--iters", args.iters, "--n", args.n, "--device", device]
    if args.extra:
        evaluate += ["--extra", *args.extra]
    if args.no_cells or not cells:
        evaluate.append("--no-cells")
    code = deqloop(evaluate)
    if code:
        raise SystemExit(code)
    return json.loads((Path(args.out) / "eval.json").read_text())
