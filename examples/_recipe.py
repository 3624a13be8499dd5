"""What every example does: ``deqloop train`` with the example's defaults (any flag you pass
overrides them), then ``deqloop eval`` of the result on the task's splits and a few more sets.

An example is a list of defaults, not a program: read the defaults at the top of each file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deqloop.cli import main as deqloop


def run(train_defaults: list[str], argv: list[str], *, iters: str, n: int, out: str, extra: list[str] = (),
        description: str = "") -> dict:
    """Train with ``train_defaults + argv`` (the last value of a flag wins), evaluate at ``--iters``
    on ``--n`` examples per split plus ``extra`` sets, and return the evaluation (``eval.json``)."""
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
        print("\nEvery other flag goes to `deqloop train` (see `deqloop train --task NAME --help`); "
              "the example's defaults are:\n  " + " ".join(train_defaults))
        return {}
    code = deqloop(["train", *train_defaults, *train_args, "--out", args.out, "--overwrite"])
    if code:
        raise SystemExit(code)
    device = train_args[train_args.index("--device") + 1] if "--device" in train_args else "auto"
    evaluate = ["eval", str(Path(args.out) / "last.pt"), "--iters", args.iters, "--n", args.n, "--device", device]
    if args.extra:
        evaluate += ["--extra", *args.extra]
    if args.no_cells:
        evaluate.append("--no-cells")
    code = deqloop(evaluate)
    if code:
        raise SystemExit(code)
    return json.loads((Path(args.out) / "eval.json").read_text())
