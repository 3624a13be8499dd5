"""Chess baselines for the sweep's evaluation sets, for runs whose summaries predate them.

A sweep's evaluation now stores each task's model-free baselines per split (``eval.baselines``,
from :meth:`deqloop.tasks.base.Task.baselines`). Runs evaluated before that lack them; this
computes them on the very examples those runs were evaluated on — the chess task on the shared
Lichess files as the sweep configures it, the ``val`` and ``hard`` bands drawn by
:func:`deqloop.eval.evaluate_run` with its default seed, ``n`` = each chess preset's ``eval_n`` —
and writes them to ``results/chess_baselines.json``, which the report reads for such runs::

    python -m experiments.chess_baselines [--out results/chess_baselines.json] [--n 256,2048]

Reading (:func:`baselines_for`, :func:`baseline_line`) needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("results/chess_baselines.json")
FORMAT = 1


def _data_names(files: Any) -> list[str]:
    return sorted(Path(f).name for f in files or ())


def load(path: Path = DEFAULT_PATH) -> dict[str, Any] | None:
    """The stored baselines file, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise ValueError(f"{path}: not a baselines file of format {FORMAT}")
    return stored


def baselines_for(run: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, dict[str, float]] | None:
    """The baselines per split of a run (a summary or ``result.json``): its own ``eval.baselines``,
    else the stored set evaluated on the same examples (same task, data files, seed and ``n`` per
    split), else None."""
    own = {split: scores for split, scores in ((run.get("eval") or {}).get("baselines") or {}).items() if scores}
    if own:  # a task without baselines (sudoku, prefix sums) stores an empty dict per split
        return own
    if not stored:
        return None
    task = run.get("spec", {}).get("task")
    options = (run.get("train_config") or {}).get("task_options") or {}
    data = _data_names(options.get("data"))
    sizes = (run.get("eval") or {}).get("n") or {}
    for entry in stored.get("sets", []):
        if entry["task"] != task or entry["data"] != data or not data:
            continue
        if any(k in options and options[k] != v for k, v in entry.get("task_options", {}).items()):
            continue
        splits = {k: v for k, v in entry["baselines"].items() if sizes.get(k) == entry["n"]}
        if splits:
            return splits
    return None


def baseline_line(runs: list[dict[str, Any]], stored: dict[str, Any] | None) -> str | None:
    """One line for the report: the baselines the runs were evaluated beside, per split (several
    sets when the runs were evaluated on different examples); None when none are known."""
    sets: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        found = baselines_for(run, stored)
        if found:
            sets.setdefault(json.dumps(found, sort_keys=True), found)
    if not sets:
        return None
    parts = []
    for found in sets.values():
        for split, scores in found.items():
            names = sorted({k.split("/")[0] for k in scores}, key=lambda b: (b != "random", b))
            cells = [f"{b} " + " / ".join(f"{100 * scores[k]:.1f}" for k in sorted(scores) if k.split("/")[0] == b)
                     for b in names]
            parts.append(f"{split}: " + ", ".join(cells))
    metrics = sorted({k.split("/", 1)[1] for found in sets.values() for s in found.values() for k in s})
    return ("Baselines on the same examples, no model (accuracy %, " + " / ".join(f"`{m}`" for m in metrics)
            + "; exact expectations over their random choices; chess: *random* a uniformly random legal move, "
            "*greedy* a mate in one, else the most valuable capture, else random; the table's accuracies are "
            "`correct`): " + "; ".join(parts) + ".")


def versus(runs: list[dict[str, Any]], stored: dict[str, Any] | None = None, target: float = 3.0) -> str | None:
    """The runs' mean best hard accuracy against the hard split's baselines: its multiple of the
    random-legal baseline (against ``target``) and whether it beats the greedy one; None without them."""
    found = [(max(r["eval"]["curves"]["accuracy"]["hard"]), (baselines_for(r, stored) or {}).get("hard") or {})
             for r in runs]
    if not found or not all("random/correct" in b and "greedy/correct" in b for _, b in found):
        return None
    model = sum(m for m, _ in found) / len(found)
    random = sum(b["random/correct"] for _, b in found) / len(found)
    greedy = sum(b["greedy/correct"] for _, b in found) / len(found)
    return (f"Hard (mean best over seeds): {100 * model:.1f} % = {model / random:.1f}× the random-legal baseline "
            f"({100 * random:.1f} %; target ≥ {target:g}×: {'met' if model / random >= target else 'not met'}); the "
            f"greedy baseline scores {100 * greedy:.1f} %: the model {'beats' if model > greedy else 'does not beat'} it.")


def compute(shared: Path, sizes: list[int], seed: int) -> list[dict[str, Any]]:
    """The baselines of the chess task on the shared Lichess files, per ``n`` in ``sizes``."""
    from deqloop.tasks import get_task
    from experiments.sweep import default_data

    options = default_data(shared if shared.is_dir() else None).get("chess")
    if not options:
        raise SystemExit(f"error: no Lichess puzzle files under {shared / 'chess'}; pass --shared")
    task = get_task("chess", **options)
    defaults = {k: v for k, v in task.settings().items() if k != "data"}
    sets = []
    for n in sizes:
        baselines = {band: task.baselines(*task.make(band, n, seed=seed)) for band in ("val", "hard")}
        sets.append({"task": "chess", "data": _data_names(options["data"]), "task_options": defaults, "n": n,
                     "seed": seed, "baselines": baselines})
    return sets


def main(argv: list[str] | None = None) -> int:
    import inspect

    from deqloop.eval import evaluate_run
    from deqloop.tasks.io import shared_data_dir
    from experiments.presets import PRESETS
    from experiments.sweep import git_commit

    p = argparse.ArgumentParser(prog="python -m experiments.chess_baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_PATH), help=f"the JSON to write (default {DEFAULT_PATH})")
    p.add_argument("--shared", default=str(shared_data_dir()), help="folder of the shared puzzle data")
    p.add_argument("--n", help="comma-separated evaluation sizes (default: every chess preset's eval_n)")
    a = p.parse_args(argv)
    if a.n:
        try:
            sizes = sorted({int(v) for v in a.n.split(",")})
        except ValueError:
            p.error(f"--n takes comma-separated integers, got {a.n!r}")
    else:
        sizes = sorted({pr.eval_n for pr in PRESETS.values() if "chess" in pr.tasks})
    seed = inspect.signature(evaluate_run).parameters["seed"].default
    sets = compute(Path(a.shared), sizes, seed)
    command = " ".join(["python -m experiments.chess_baselines", *(argv if argv is not None else sys.argv[1:])])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format": FORMAT, "command": command, "commit": git_commit(), "sets": sets},
                              indent=1) + "\n")
    for s in sets:
        for band, scores in s["baselines"].items():
            print(f"n={s['n']} {band}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
