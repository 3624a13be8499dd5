"""Every run summary as one row of a pandas DataFrame: the results table that the report and the
claims' rules query.

    frame = runs_frame(load_results(Path("results/runs")))
    frame.groupby(["task", "recall", "norm"])["hard_at"].mean()

One row per run (:data:`COLUMNS` read from the summary, plus the derived columns below); a value a
summary does not hold is NaN, never filled in. :func:`curves_frame` and :func:`traces_frame` give
the long forms of the accuracy curves and of the stability monitor's traces, for the figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.summary import load_summaries, paper_iterations, summarize_sweep

AT = 500
"""The paper's number: accuracy after this many test-time iterations, at the last training step."""
FLOOR = 0.20
"""A claim about accuracy is decided only where one of the compared sides reaches this on the hard split."""
OUTER = ("post", "sandwich")  # the norm on the stream after the add (the paper's outer norm); the rest are inner

# column -> path of the value in a run summary
COLUMNS = {
    "task": "spec.task", "recall": "spec.recall", "norm": "spec.norm", "regime": "spec.regime", "seed": "spec.seed",
    "preset": "preset", "commit": "commit", "command": "command", "steps": "train_config.steps",
    "lr": "train_config.lr", "width": "train_config.width", "alpha": "train_config.alpha",
    "n_hard": "eval.n.hard",
    "adaptive": "eval.settling.hard.accuracy", "adaptive_iters": "eval.settling.hard.iterations_mean",
    "plain_reach": "eval.settling.hard.converged",  # plain iteration's state stopped changing (the paper's reach)
    "solver": "eval.solver.hard.accuracy", "solver_iters": "eval.solver.hard.iterations_mean",
    "anderson_reach": "analysis.hard.converged_fraction",  # Anderson from z0 = e on the probe
    "clusters": "analysis.hard.distinct_fixed_points", "spread": "analysis.hard.fixed_point_spread",
    "rho": "analysis.hard.spectral_radius_median", "contractive": "analysis.hard.contractive_fraction",
    "resolvent": "analysis.hard.resolvent_norm_median", "ift": "analysis.hard.input_sensitivity_median",
    "fd": "analysis.hard.local_smoothness_median", "fd_input": "analysis.hard.input_fd_median",
    "bwd": "analysis.hard.backward_converged_fraction", "probe_n": "analysis_options.n",
    "rho_wx": "analysis.hard.weights.injection_spectral_radius",  # ρ(W_x), the paper's diagnostic
    "grad_median": "train.grad_norm_median", "grad_max": "train.grad_norm_max", "late_loss": "train.late_loss",
    "train_s": "seconds.train",
}


def get(d: Any, path: str) -> Any:
    """The value at a dotted ``path`` of nested dicts; None where any key is missing."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def load_results(root: Path) -> list[dict[str, Any]]:
    """The runs under ``root``, sorted by name: a sweep's runs summarized from their ``result.json``
    and ``metrics.jsonl`` where ``root`` holds any ``result.json``, else the run summaries under it.
    A file that cannot be read raises :class:`~experiments.summary.SummaryError` naming it."""
    root = Path(root)
    if next(root.rglob("result.json"), None) is not None:
        return summarize_sweep(root)
    return load_summaries(root)


def _curve(run: dict[str, Any], split: str) -> tuple[list[int], list[float]]:
    curves = get(run, "eval.curves") or {}
    return curves.get("iters") or [], (curves.get("accuracy") or {}).get(split) or []


def paper_count(run: dict[str, Any]) -> int:
    """The test-time count of a run's paper number: :data:`AT`, or 1 for a model of several untied blocks
    (the paper's "fixed" baseline, trained and tested at one iteration)."""
    return 1 if (get(run, "train_config.blocks") or 1) > 1 else AT


def accuracy_at(run: dict[str, Any], split: str, iters: int | None = None) -> float:
    """Accuracy on ``split`` after ``iters`` test-time iterations (default :func:`paper_count`): the
    summary's own field where it has one (``eval.paper``, :func:`experiments.summary.paper_numbers`),
    else the curve's value at that count; NaN where neither holds it."""
    iters = paper_count(run) if iters is None else iters
    paper = get(run, "eval.paper") or {}
    if paper.get("iterations") == iters and split in (paper.get("accuracy") or {}):
        stored = paper["accuracy"][split]
        return math.nan if stored is None else float(stored)
    counts, acc = _curve(run, split)
    return float(acc[counts.index(iters)]) if iters in counts and len(acc) == len(counts) else math.nan


def best(run: dict[str, Any], split: str) -> tuple[float, float]:
    """The best accuracy on ``split`` over the test-time counts and the first count reaching it (NaN, NaN without a curve)."""
    counts, acc = _curve(run, split)
    if not acc:
        return math.nan, math.nan
    i = int(np.argmax(acc))
    return float(acc[i]), float(counts[i])


def recall_form(run: dict[str, Any]) -> str:
    """Which internal recall a run used: ``"shared"`` (the paper's one injection pair in both
    sublayers) or ``"per_sublayer"``; a run whose configuration predates the option used the
    per-sublayer form. ``"—"`` for the other recalls."""
    if get(run, "spec.recall") != "internal":
        return "—"
    return get(run, "train_config.recall_maps") or "per_sublayer"


def family(recall: str, norm: str, blocks: Any) -> str:
    """The group the framework predicts an order for: recall + outer norm, recall + inner norm, no
    recall; a model of several untied blocks is the baseline."""
    if blocks and int(blocks) > 1:
        return "untied"
    if recall == "none":
        return "no recall"
    return "recall + outer" if norm in OUTER else "recall + inner"


def runs_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: :data:`COLUMNS` and ``hard_at``/``val_at`` (the paper's number: accuracy @:data:`AT`,
    @1 for the untied baseline, :func:`paper_count`), ``hard_best``
    (with ``hard_best_at``, the count), ``hard_last`` (at ``last``, the largest count), ``val_best``, ``recall_form``, ``family``, ``grad_spread``
    (max / median gradient norm over training), ``name``; sorted by name."""
    rows = []
    for r in runs:
        row = {"name": r.get("name")}
        row.update({col: get(r, path) for col, path in COLUMNS.items()})
        row["hard_at"], row["val_at"] = accuracy_at(r, "hard"), accuracy_at(r, "val")
        row["hard_best"], row["hard_best_at"] = best(r, "hard")
        counts, acc = _curve(r, "hard")
        row["last"], row["hard_last"] = (counts[-1], acc[-1]) if acc else (math.nan, math.nan)
        row["val_best"] = best(r, "val")[0]
        row["recall_form"] = recall_form(r)
        row["family"] = family(row["recall"], row["norm"], get(r, "train_config.blocks"))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["name", *COLUMNS, "hard_at", "val_at", "hard_best", "hard_best_at", "last",
                                        "hard_last", "val_best", "recall_form", "family"])
    numeric = [c for c in frame.columns if c not in ("name", "task", "recall", "norm", "regime", "preset", "commit",
                                                     "command", "recall_form", "family")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    frame["grad_spread"] = frame["grad_max"] / frame["grad_median"]
    return frame.sort_values("name", kind="stable").reset_index(drop=True)


def curves_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The accuracy curves in long form: one row per run, split and test-time count."""
    rows = []
    for r in runs:
        counts = get(r, "eval.curves.iters") or []
        for split, acc in (get(r, "eval.curves.accuracy") or {}).items():
            rows += [{"name": r.get("name"), "task": get(r, "spec.task"), "recall": get(r, "spec.recall"),
                      "norm": get(r, "spec.norm"), "regime": get(r, "spec.regime"), "seed": get(r, "spec.seed"),
                      "split": split, "iters": t, "accuracy": a} for t, a in zip(counts, acc)]
    return pd.DataFrame(rows, columns=["name", "task", "recall", "norm", "regime", "seed", "split", "iters", "accuracy"])


def traces_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The stability monitor's records over training in long form (``fraction``: the probe's step over
    the run's steps), one row per run and probe; empty for runs trained without the monitor."""
    rows = []
    for r in runs:
        stab = get(r, "traces.stability") or {}
        steps = get(r, "train.steps") or get(r, "train_config.steps")
        for values in stab.get("rows") or []:
            rec = dict(zip(stab.get("fields") or [], values))
            rows.append({"name": r.get("name"), "task": get(r, "spec.task"), "recall": get(r, "spec.recall"),
                         "norm": get(r, "spec.norm"), "regime": get(r, "spec.regime"), "seed": get(r, "spec.seed"),
                         "fraction": rec["step"] / steps, **{k: v for k, v in rec.items() if k != "step"}})
    return pd.DataFrame(rows)
