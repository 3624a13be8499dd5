"""What every example does: ``deqloop train`` with the example's defaults (any flag you pass
overrides them), then ``deqloop eval`` of the result on the task's splits and a few more sets.

An example is a list of defaults, not a program: read the defaults at the top of each file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deqloop.cli import main as deqloop


# Defaults that only the progressive loss (or a warm start into fixed-point training) uses: dropped
# from an example's defaults when the command line asks for another loss without a warm start, so
# that `--loss equilibrium` works with every example as it stands.
PROGRESSIVE_ONLY = ("--alpha", "--depth-offset")
PROGRESSIVE_SWITCHES = ("--detach-z0", "--no-detach-z0")  # the same, flags without a value
WARM_START = ("--pretrain-steps",)


def _last(argv: list[str], flag: str) -> str | None:
    """The value the command line gives ``flag`` last (``--flag value`` or ``--flag=value``)."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def defaults_for(train_defaults: list[str], argv: list[str]) -> list[str]:
    """``train_defaults`` without the progressive loss's own flags when ``argv`` picks another loss
    and no warm start (flags the user gives are kept: a mistaken combination still gets its error)."""
    loss = _last(argv, "--loss") or _last(train_defaults, "--loss")
    warm = any(_last(argv, f) not in (None, "0") for f in WARM_START)
    if loss in (None, "progressive") or warm:
        return list(train_defaults)
    kept: list[str] = []
    skip = False
    for a in train_defaults:
        if skip:
            skip = False
        elif a in PROGRESSIVE_ONLY:
            skip = True  # and its value
        elif a in PROGRESSIVE_SWITCHES:
            continue
        elif not a.startswith(tuple(f + "=" for f in PROGRESSIVE_ONLY)):
            kept.append(a)
    return kept


def run(train_defaults: list[str], argv: list[str], *, iters: str, n: int, out: str, extra: list[str] = (),
        description: str = "") -> dict:
    """Train with ``train_defaults + argv`` (the last value of a flag wins), evaluate at ``--iters``
    on ``--n`` examples per split plus ``extra`` sets, and return the evaluation (``eval.json``).
    The progressive loss's own defaults are left out when ``argv`` asks for another loss
    (:func:`defaults_for`)."""
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
    code = deqloop(["train", *defaults_for(train_defaults, train_args), *train_args, "--out", args.out, "--overwrite"])
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
