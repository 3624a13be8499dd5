"""The report's section on the per-task example runs (``examples/*.py``), kept beside the sweeps.

An example trains one model with its defaults and evaluates it on the task's splits and a few
more sets (sudoku: four blank bands and the shared collections). Its record is committed as
``results/examples/<task>/<name>.json``: the command, the training configuration, the training
time and the evaluation (``eval.json``), a few kB, no checkpoint::

    python examples/sudoku.py --out runs/sudoku/b
    python -m experiments.examples_report add runs/sudoku/b --name default \\
        --command "python examples/sudoku.py --out runs/sudoku/b"
    python -m experiments.report                      # RESULTS.md gains the section

The section (:func:`section`, the template's ``examples`` block) gives every run in a line, then its
accuracy on every evaluated set at every test-time count, and a figure with a panel per run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from deqloop.train.config import stored_flat
from experiments.figures import ITERS, figure
from experiments.runlog import records
from experiments.summary import SummaryError, curves_of, read_json
from experiments.table import curves_frame, fill, md, num, pct

DEFAULT_ROOT = "results/examples"
RECORD_FORMAT = 1


def record(run_dir: Path, command: str) -> dict[str, Any]:
    """The committed record of the example run in ``run_dir`` (``config.json``, ``eval.json`` and
    the last line of ``metrics.jsonl`` for the training time)."""
    run_dir = Path(run_dir)
    files = {name: run_dir / name for name in ("config.json", "eval.json", "metrics.jsonl")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SummaryError(f"{run_dir}: not a finished, evaluated example run (missing {', '.join(missing)})")
    train = [r for r in records(files["metrics.jsonl"]) if "loss" in r and "time" in r]
    if not train:
        raise SummaryError(f"{files['metrics.jsonl']}: no training lines (with 'loss' and 'time')")
    ev = json.loads(files["eval.json"].read_text())
    ev.pop("checkpoint", None)  # a path on the machine that ran it
    config = stored_flat(json.loads(files["config.json"].read_text()))  # flat names, as the records before nesting
    return {"record_format": RECORD_FORMAT, "command": command, "config": config,
            "train_seconds": train[-1]["time"], "steps": train[-1]["step"], "final_loss": train[-1]["loss"],
            "eval": ev}


def load(root: Path) -> dict[str, list[dict[str, Any]]]:
    """The records under ``root`` (``<task>/<name>.json``) by task, each with its ``name``."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(root).glob("*/*.json")):
        r = read_json(path, "example record")
        if r.get("record_format") != RECORD_FORMAT:
            raise SummaryError(f"{path}: not an example record of format {RECORD_FORMAT}")
        if r["eval"].get("task") != path.parent.name:
            raise SummaryError(f"{path}: a {r['eval'].get('task')!r} run filed under {path.parent.name!r}")
        by_task.setdefault(path.parent.name, []).append({**r, "name": path.stem})
    return by_task


def recipe(cfg: dict[str, Any]) -> str:
    """The loss's settings in a few words: alpha for the progressive loss; the backward mode, its
    options and the recipes in use for fixed-point training."""
    if cfg["loss"] == "progressive":
        return f"alpha {cfg['alpha']}"
    parts = [f"backward {cfg.get('backward')} {json.dumps(cfg.get('backward_options') or {})}"]
    unset = {"pretrain_steps": 0, "jac_reg": 0.0, "fp_states": 1, "train_init": None, "gate": None}
    parts += [f"{k} {cfg[k]}" for k, off in unset.items() if cfg.get(k, off) not in (off, None)]
    return ", ".join(parts)


def overview(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """A row per run: its recipe, seed, steps and time, the training set's best (count) and value at the
    largest count, the hard split's best (count), and for a run trained at its fixed point its own solve."""
    def best(r: dict[str, Any], split: str) -> str:
        c = curves_of(r["eval"])
        return f"{pct(c.best(split)[1])} ({c.best(split)[0]})" if c is not None and split in c.curves else "—"

    def solve(r: dict[str, Any]) -> str:
        s = (r["eval"].get("solver") or {}).get("hard")
        return f"{pct(s['accuracy'])} / {num(s['iterations_mean'])}" if s else "—"

    return pd.DataFrame([{"run": f"**{r['name']}**", "loss": f"{r['config']['loss']} ({recipe(r['config'])})",
                          "seed": str(r["config"].get("seed", "—")), "steps": str(r["steps"]),
                          "train min": f"{r['train_seconds'] / 60:.0f}", "val best (count)": best(r, "val"),
                          "val at last count": pct((r["eval"]["curves"]["accuracy"].get("val") or [math.nan])[-1]),
                          "hard best (count)": best(r, "hard"), "hard: own solve": solve(r)} for r in runs])


def section(task: str, runs: list[dict[str, Any]], plots: Path, out: Path) -> str:
    """RESULTS.md's section on the example runs of ``task``: every run in a line, the accuracy of every
    run on every evaluated set at every count, and a figure with a panel per run."""
    c = curves_frame(runs).rename(columns={"name": "run", "split": "set"})
    table = c.pivot_table(index=["run", "set"], columns="iters", values="accuracy", sort=False).map(pct)
    table.insert(0, "n", pd.Series({(r["name"], k): str(v) for r in runs for k, v in r["eval"]["n"].items()}))

    def column(key: str) -> pd.Series:  # accuracy / mean iterations of the adaptive or the solver's answer
        return pd.Series({(r["name"], k): f"{pct(v.get('accuracy'))} / {num(v.get('iterations_mean'))}"
                          for r in runs for k, v in (r["eval"].get(key) or {}).items()}, dtype=object)

    table["adaptive"] = column("settling")
    if any(r["eval"].get("solver") for r in runs):
        table["own solve"] = column("solver")
    return fill("examples", task=task, root=DEFAULT_ROOT, overview=md(overview(runs)),
                table=md(table.reset_index().fillna("—")),
                commands="; ".join(f"**{r['name']}** `{r['command']}`" for r in runs),
                figure=figure(c, f"{task}_examples", plots, out, f"{task} examples", facet="run", hue="set", cols=3,
                              title=f"{task}: the example runs, accuracy against test-time iterations", **ITERS)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.examples_report", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="commit an example run's record under results/examples/<task>/<name>.json")
    add.add_argument("run", help="the example's run folder (its --out)")
    add.add_argument("--name", required=True, help="the record's name (a file name, e.g. default or alpha1)")
    add.add_argument("--command", required=True, help="the command that produced the run, as shown in RESULTS.md")
    add.add_argument("--root", default=DEFAULT_ROOT, help=f"records folder (default {DEFAULT_ROOT})")
    a = p.parse_args(argv)
    if not a.name or "/" in a.name or a.name.startswith("."):
        p.error(f"--name must be a plain file name, got {a.name!r}")
    try:
        r = record(Path(a.run), a.command)
    except SummaryError as err:
        p.error(str(err))
    path = Path(a.root) / r["eval"]["task"] / f"{a.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
