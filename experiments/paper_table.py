"""Results in the paper's layout: a row per recall × residual, a column per learning rate, each cell
the mean ± standard error over seeds of a run's hard accuracy at 500 test-time iterations at the end
of training (the paper's number; ``metric="best"``: the best over the counts instead).

    python -m experiments.paper_table results/runs --task prefix_sums
    python -m experiments.paper_table results/runs --task sudoku --metric best --where regime=progressive

    header, rows = paper_table(load_summaries(root), task="prefix_sums")
    print(markdown(header, rows))

The paper reports one table per learning rate (1e-4, 3e-4, 1e-3; sudoku also 3e-3) with rows
recall ∈ {none, external, internal, fixed} × residual ∈ {pre, peri, gru, post}; here the learning
rates are the columns of one table. Rows and columns come from the summaries: the spec fields named
by ``rows`` (default recall and norm, the residual's placement) and ``train_config["lr"]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.claims import mean_se, pct
from experiments.summary import (PAPER_ITERATIONS, SummaryError, accuracy_at, best_accuracy, load_summaries,
                                 paper_iterations)

__all__ = ["METRICS", "ORDER", "markdown", "paper_table", "run_value"]

METRICS = ("at", "best")
# the paper's order of rows; values it does not name follow, by name
ORDER = {"recall": ("none", "external", "internal", "fixed"), "norm": ("pre", "peri", "gru", "post", "sandwich")}


def run_value(summary: dict[str, Any], split: str = "hard", metric: str = "at",
              iterations: int = PAPER_ITERATIONS) -> float | None:
    """One run's number: accuracy on ``split`` after ``iterations`` (``"at"``) or its best over the
    counts (``"best"``); None where the run did not score that count or split."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    curves = summary["eval"]["curves"]
    if metric == "at":
        if iterations == PAPER_ITERATIONS:  # the untied baseline's number is at its one iteration
            iterations = paper_iterations(summary.get("train_config"))
        return accuracy_at(curves, split, iterations)
    best = best_accuracy(curves, split)
    return None if best is None else best[1]


def _key(field: str, value: Any) -> tuple[int, str]:
    order = ORDER.get(field, ())
    return (order.index(value) if value in order else len(order), str(value))


def _cell(values: pd.Series) -> str:
    """``mean ± s.e.`` in % of a cell's numbers; ``(n of m)`` where only n of its m runs have one."""
    m, se, n = mean_se(values)
    return "—" if n == 0 else f"{pct(m)} ± {pct(se)}" + (f" ({n} of {len(values)})" if n < len(values) else "")


def paper_table(summaries: Sequence[dict[str, Any]], *, task: str, split: str = "hard", metric: str = "at",
                iterations: int = PAPER_ITERATIONS, rows: Sequence[str] = ("recall", "norm"),
                where: dict[str, Any] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings, for :func:`markdown`) of the paper's layout for ``task``'s runs that
    match ``where`` (spec fields → values): a row per combination of the spec fields ``rows``, a
    column per learning rate, each cell ``mean ± s.e.`` in % over the runs' seeds (:func:`run_value`;
    ``± —`` for one seed, ``—`` where no run has the number, ``(n of m)`` where only n of the cell's m
    runs have it).

    A cell's runs must differ in their seed alone: runs that differ in another spec field (e.g.
    two regimes) raise ``ValueError`` naming it; narrow them with ``where``."""
    run_value({"eval": {"curves": {}}}, split, metric, iterations)  # checks the metric
    runs = [s for s in summaries if s["spec"].get("task") == task
            and all(s["spec"].get(k) == v for k, v in (where or {}).items())]
    if not runs:
        raise ValueError(f"no runs of task {task!r}" + (f" with {where}" if where else ""))
    frame = pd.DataFrame([{**{k: str(v) for k, v in s["spec"].items() if k != "seed"}, "lr": float(s["train_config"]["lr"]),
                           "value": run_value(s, split, metric, iterations)} for s in runs])
    frame["value"] = frame["value"].astype(float)
    keys = [*rows, "lr"]
    for (*row, lr), cell in frame.groupby(keys, sort=False):
        for field in sorted(set(frame.columns) - {*keys, "value"}):
            values = sorted(cell[field].dropna().unique())
            if len(values) > 1:
                raise ValueError(f"the cell {tuple(row)} at lr {lr:g} mixes runs with {field} {', '.join(values)}; "
                                 f"choose one with where={{{field!r}: ...}}")
    table = frame.pivot_table(index=list(rows), columns="lr", values="value", aggfunc=_cell)
    ordered = sorted(table.index, key=lambda r: [_key(f, v) for f, v in zip(rows, r if len(rows) > 1 else (r,))])
    table = table.loc[ordered].fillna("—")
    header = [*rows, *(f"lr {lr:g}" for lr in table.columns)]
    return header, [[*(str(v) for v in (r if len(rows) > 1 else (r,))), *line] for r, line in
                    zip(table.index, table.to_numpy().tolist())]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """The table in Markdown (tabulate's pipe format)."""
    return pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.paper_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", help="folder of run summaries (e.g. results/runs)")
    p.add_argument("--task", required=True, help="the task whose runs to tabulate")
    p.add_argument("--split", default="hard", help="evaluation split (default hard)")
    p.add_argument("--metric", default="at", choices=METRICS,
                   help=f"at: accuracy at --iterations (the paper's number); best: the best over counts (default at)")
    p.add_argument("--iterations", type=int, default=PAPER_ITERATIONS,
                   help=f"the test-time count of --metric at (default {PAPER_ITERATIONS})")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                   help="keep runs whose spec has this value (e.g. regime=progressive); repeatable")
    a = p.parse_args(argv)
    where = {}
    for item in a.where:
        field, sep, value = item.partition("=")
        if not sep or not field:
            p.error(f"--where takes FIELD=VALUE, got {item!r}")
        where[field] = int(value) if field == "seed" and value.lstrip("-").isdigit() else value
    root = Path(a.summaries)
    if not root.is_dir():
        p.error(f"no such folder: {root}")
    try:
        header, rows = paper_table(load_summaries(root), task=a.task, split=a.split, metric=a.metric,
                                   iterations=a.iterations, where=where)
    except (SummaryError, ValueError) as err:
        p.error(str(err))
    print(markdown(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
