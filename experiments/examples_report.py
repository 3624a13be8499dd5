"""The report's section on the per-task example runs (``examples/*.py``), kept beside the sweeps.

An example trains one model with its defaults and evaluates it on the task's splits and a few
more sets (sudoku: four blank bands and the shared collections). Its record is committed as
``results/examples/<task>/<name>.json``: the command, the training configuration, the training
time and the evaluation (``eval.json``), a few kB, no checkpoint::

    python examples/sudoku.py --out runs/sudoku/b
    python -m experiments.examples_report add runs/sudoku/b --name default \\
        --command "python examples/sudoku.py --out runs/sudoku/b"
    python -m experiments.report                      # RESULTS.md gains the section

The section gives, per run, exact-match accuracy on every evaluated set at every test-time
iteration count, the adaptive accuracy (each example iterated until its state stops changing)
with its mean iterations, and a line per run on the training set: its best accuracy, its accuracy
at the largest count and the change between them (does more thinking keep the answer?), and the
best accuracy on the hard split. A plot per task draws the curves of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from experiments import figures
from experiments.markdown import num, pct, table
from experiments.seed_table import best
from experiments.summary import SummaryError

DEFAULT_ROOT = "results/examples"
RECORD_FORMAT = 1
PANELS_PER_ROW = 3  # the plot wraps its panels (a run each) onto rows of this many


def record(run_dir: Path, command: str) -> dict[str, Any]:
    """The committed record of the example run in ``run_dir`` (``config.json``, ``eval.json`` and
    the last line of ``metrics.jsonl`` for the training time)."""
    run_dir = Path(run_dir)
    files = {name: run_dir / name for name in ("config.json", "eval.json", "metrics.jsonl")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SummaryError(f"{run_dir}: not a finished, evaluated example run (missing {', '.join(missing)})")
    lines = [json.loads(line) for line in files["metrics.jsonl"].read_text().splitlines() if line.strip()]
    train = [r for r in lines if "loss" in r and "time" in r]
    if not train:
        raise SummaryError(f"{files['metrics.jsonl']}: no training lines (with 'loss' and 'time')")
    ev = json.loads(files["eval.json"].read_text())
    ev.pop("checkpoint", None)  # a path on the machine that ran it
    return {"record_format": RECORD_FORMAT, "command": command, "config": json.loads(files["config.json"].read_text()),
            "train_seconds": train[-1]["time"], "steps": train[-1]["step"], "final_loss": train[-1]["loss"],
            "eval": ev}


def load(root: Path) -> dict[str, list[dict[str, Any]]]:
    """The records under ``root`` (``<task>/<name>.json``) by task, each with its ``name``."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(root).glob("*/*.json")):
        try:
            r = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SummaryError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(r, dict) or r.get("record_format") != RECORD_FORMAT:
            raise SummaryError(f"{path}: not an example record of format {RECORD_FORMAT}")
        if r["eval"].get("task") != path.parent.name:
            raise SummaryError(f"{path}: a {r['eval'].get('task')!r} run filed under {path.parent.name!r}")
        by_task.setdefault(path.parent.name, []).append({**r, "name": path.stem})
    return by_task


def training_line(r: dict[str, Any]) -> str:
    """The training set's best accuracy, its accuracy at the largest count and the change; the hard
    split's best."""
    curves = r["eval"]["curves"]
    iters, acc = curves["iters"], curves["accuracy"]
    parts = []
    if "val" in acc:
        v = acc["val"]
        top, at = best(r, "val")
        parts.append(f"training set (val) best {pct(top)} % at {at} iterations, {pct(v[-1])} % at "
                     f"{iters[-1]} ({100 * (v[-1] - top):+.1f} points)")
    if "hard" in acc:
        top, at = best(r, "hard")
        parts.append(f"hard best {pct(top)} % at {at}")
    return "; ".join(parts)


def _best_cell(r: dict[str, Any], split: str) -> str:
    top, at = best(r, split)
    return f"{pct(top)} ({at})"


def overview(runs: list[dict[str, Any]]) -> str:
    """A table with a row per run, to compare recipes and seeds at a glance: the training set's
    best accuracy (its count), its accuracy at the largest count, the hard split's best (its count)
    and, for a run trained at its fixed point, its own solve on the hard split (accuracy / mean
    iterations)."""
    rows = []
    for r in runs:
        ev, cfg = r["eval"], r["config"]
        acc = ev["curves"]["accuracy"]
        cells = [_best_cell(r, name) if name in acc else "—" for name in ("val", "hard")]
        last = pct(acc["val"][-1]) if "val" in acc else "—"
        solve = (ev.get("solver") or {}).get("hard")
        rows.append([f"**{r['name']}**", f"{cfg['loss']} ({recipe(cfg)})", str(cfg.get("seed", "—")), str(r["steps"]),
                     f"{r['train_seconds'] / 60:.0f}", cells[0], last, cells[1],
                     f"{pct(solve['accuracy'])} / {num(solve['iterations_mean'])}" if solve else "—"])
    return table(["run", "loss", "seed", "steps", "train min", "val best (count)", "val at last count",
                  "hard best (count)", "hard: own solve"], rows)


def recipe(cfg: dict[str, Any]) -> str:
    """The loss's settings in a few words: alpha for the progressive loss; the backward mode, its
    options and the recipes in use for fixed-point training."""
    if cfg["loss"] == "progressive":
        return f"alpha {cfg['alpha']}"
    parts = [f"backward {cfg.get('backward')} {json.dumps(cfg.get('backward_options') or {})}"]
    unset = {"pretrain_steps": 0, "jac_reg": 0.0, "fp_states": 1, "train_init": None, "gate": None}
    parts += [f"{k} {cfg[k]}" for k, off in unset.items() if cfg.get(k, off) not in (off, None)]
    return ", ".join(parts)


def plot(task: str, runs: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against test-time iterations, one panel per run (rows of ``PANELS_PER_ROW``), a line
    per evaluated set."""
    plt = figures.pyplot()
    cols = min(PANELS_PER_ROW, len(runs))
    nrows = -(-len(runs) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, runs):
        curves = r["eval"]["curves"]
        for name, acc in curves["accuracy"].items():
            ax.plot(curves["iters"], [100 * a for a in acc], marker="o", markersize=3, label=name)
        if curves.get("train_depth"):
            ax.axvline(curves["train_depth"], color="gray", linestyle="--", linewidth=1, label="training depth")
        ax.set_xscale("log")
        ax.set_ylim(-2, 102)
        ax.set_xlabel("test-time iterations")
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"{task}: {r['name']}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return figures.save(fig, path)


def section(by_task: dict[str, list[dict[str, Any]]], plots: Path, out: Path) -> list[str]:
    """RESULTS.md's lines for the example runs."""
    doc: list[str] = []
    for task, runs in sorted(by_task.items()):
        doc += ["", f"## {task}: the example runs", "",
                f"`examples/{task}.py` with its defaults or the flags shown (records in `{DEFAULT_ROOT}/{task}`, "
                "added by `python -m experiments.examples_report add`); exact-match accuracy in % per evaluated set "
                "and test-time iteration count, then adaptive compute (each example iterated until its state "
                "changes by less than the relative tolerance: accuracy / mean iterations), and for a run trained at its "
                "fixed point its own solver's answer (accuracy / mean iterations). First every run in a line "
                "(the counts of iterations in parentheses; *val* is the training set's distribution, *hard* the "
                "harder split), then each run in full.", "", overview(runs)]
        for r in runs:
            ev, cfg = r["eval"], r["config"]
            iters = ev["curves"]["iters"]
            solved = ev.get("solver") or {}
            rows = []
            for name, acc in ev["curves"]["accuracy"].items():
                settle = ev.get("settling", {}).get(name, {})
                rows.append([name, str(ev["n"].get(name, "—"))] + [pct(a) for a in acc]
                            + [f"{pct(settle.get('accuracy'))} / {num(settle.get('iterations_mean'))}"]
                            + ([f"{pct(solved[name]['accuracy'])} / {num(solved[name]['iterations_mean'])}"
                                if name in solved else "—"] if solved else []))
            doc += ["", f"**{r['name']}** — `{r['command']}`: loss {cfg['loss']} ({recipe(cfg)})"
                    + f", training depth {cfg['max_iter']}, {r['steps']} steps in {r['train_seconds'] / 60:.0f} min "
                    f"({cfg.get('threads')} thread(s)), final training loss {num(r['final_loss'])}.", "",
                    table(["set", "n", *map(str, iters), "adaptive"]
                          + ([f"{ev.get('solver_name')} solve (rtol {num(ev.get('solver_rtol'))})"] if solved else []),
                          rows), "", training_line(r) + "."]
        path = plot(task, runs, plots / f"{task}_examples.png")
        doc += ["", f"![{task} examples]({os.path.relpath(path, out.parent)})"]
    return doc


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
