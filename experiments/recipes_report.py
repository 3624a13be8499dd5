"""The fixed-point training recipes side by side in the report: one row per training regime of one
cell (the ``recipes`` preset's: prefix sums, internal recall, post norm), with every seed's hard
accuracy, so that a recipe that works in one seed of three reads as such.

``configs`` are the report's per-configuration groups (``recall``, ``norm``, ``regime``, ``runs``
and the accessors ``best``, ``at``, ``settle``, ``solver``, ``stab``, ``train``).
"""

from __future__ import annotations

import statistics
from typing import Any

from experiments.configs import group
from experiments.markdown import table

INTRO = ("the hard accuracy (best over the test-time counts of plain iteration) of each seed, and the accuracy "
         "of each seed's Anderson solve (*solver*: the fixed point a DEQ answers with; a model trained at its fixed "
         "point need not reach it by plain iteration), then means over the seeds; *solver conv* "
         "the fraction of hard examples whose Anderson solve converged at evaluation; *train fwd/bwd conv* the "
         "converged fractions of the training solves over the last quarter of training; *ρ end* the median spectral "
         "radius at the end (hard examples); *train s* the mean training wall time and its ratio to the progressive "
         "loss's.")
HEADER = ["regime", "seeds", "hard best per seed", "solver per seed", "val best", "hard best", "hard@500", "adaptive", "solver",
          "solver conv", "train fwd conv", "train bwd conv", "ρ end", "train s", "× progressive"]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _pct0(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}"


def _num(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def train_seconds(run: dict[str, Any]) -> float | None:
    """A run's training wall time in seconds."""
    return (run.get("seconds") or {}).get("train") or run["train"].get("seconds")


TARGET = 0.95  # the fixed-point training target: this hard accuracy ...
TARGET_SEEDS = 2  # ... in at least this many seeds ...
TARGET_TIME = 2.0  # ... within this multiple of the progressive loss's training time


def _seconds(c: Any) -> float | None:
    values = [s for s in (train_seconds(r) for r in c.runs) if s is not None]
    return statistics.fmean(values) if values else None


def _plain_best(run: dict[str, Any]) -> float:
    """A run's best hard accuracy over the test-time counts of plain iteration."""
    return max(run["eval"]["curves"]["accuracy"]["hard"])


def _solver_accuracy(run: dict[str, Any]) -> float | None:
    """A run's hard accuracy by the Anderson solve (None when it was not solved)."""
    return ((run["eval"].get("solver") or {}).get("hard") or {}).get("accuracy")


def targets(configs: list[Any], recall: str, norm: str) -> str | None:
    """Which fixed-point regimes of the cell reach the target — ≥ 95 % hard accuracy in ≥ 2 seeds
    within 2× the progressive loss's mean training time — by plain iteration (best count) and by
    the Anderson solve; None without a progressive configuration to time against."""
    cell = [c for c in configs if c.recall == recall and c.norm == norm]
    base = next((_seconds(c) for c in cell if c.regime == "progressive"), None)
    if not base:
        return None
    parts = []
    for how, accuracy in (("by plain iteration", _plain_best), ("by the Anderson solve", _solver_accuracy)):
        met = [c.regime for c in sorted(cell, key=lambda c: c.regime) if c.regime != "progressive"
               and sum((accuracy(r) or 0.0) >= TARGET for r in c.runs) >= TARGET_SEEDS
               and (_seconds(c) or float("inf")) <= TARGET_TIME * base]
        parts.append(f"{how}: {', '.join(met) if met else 'none'}")
    return (f"Target (≥ {100 * TARGET:.0f} % hard accuracy in ≥ {TARGET_SEEDS} seeds, training within "
            f"{TARGET_TIME:g}× the progressive loss's {base:.0f} s) met " + "; ".join(parts) + ".")


def recipe_rows(configs: list[Any], recall: str, norm: str, minimum: int = 3) -> list[list[str]]:
    """The rows of the (``recall``, ``norm``) cell's regimes, progressive first; [] when that cell has
    fewer than ``minimum`` regimes (no ablation there)."""
    cell = [c for c in configs if c.recall == recall and c.norm == norm]
    if len(cell) < minimum:
        return []

    base = next((_seconds(c) for c in cell if c.regime == "progressive"), None)
    rows = []
    for c in sorted(cell, key=lambda c: (c.regime != "progressive", c.regime)):
        per_seed = sorted(c.runs, key=lambda r: r["spec"]["seed"])
        seeds = " / ".join(_pct0(_plain_best(r)) for r in per_seed)
        solved = " / ".join(_pct0(_solver_accuracy(r)) for r in per_seed)
        hb, hi = c.best("hard")
        last = c.iters[-1]
        s = _seconds(c)
        rows.append([c.regime, str(len(c.runs)), seeds, solved, _pct(c.best("val")[0]), f"{_pct(hb)} ({hi})",
                     _pct(c.at("hard", last)),
                     f"{_pct(c.settle('hard', 'accuracy'))} / {_num(c.settle('hard', 'iterations_mean'), 0)}",
                     f"{_pct(c.solver('hard', 'accuracy'))} / {_num(c.solver('hard', 'iterations_mean'), 0)}",
                     _num(c.solver("hard", "converged")), _num(c.train("late_forward_converged")),
                     _num(c.train("late_backward_converged")), _num(c.stab("spectral_radius_median"), 3),
                     _num(s, 0), _num(s / base if s is not None and base else None)])
    return rows


def section(runs: list[dict[str, Any]]) -> list[str]:
    """The report's section on a recipes sweep kept apart from the main grid (e.g. at another
    number of steps, ``--steps``): the ablation table of each of its cells."""
    if not runs:
        return []
    steps = sorted({r["train_config"]["steps"] for r in runs})
    commands = sorted({r.get("command", "") for r in runs})
    doc = []
    configs = list(group(runs).values())
    for task, recall, norm in sorted({(c.task, c.recall, c.norm) for c in configs}):
        cell = [c for c in configs if (c.task, c.recall, c.norm) == (task, recall, norm)]
        doc += ["", f"## {task}: fixed-point training recipes at {'/'.join(map(str, steps))} steps "
                f"({recall} recall, {norm} norm)", "",
                f"The recipes preset's cell at another number of steps (runs: {'; '.join(f'`{c}`' for c in commands)}); {INTRO}",
                "", table(HEADER, recipe_rows(cell, recall, norm, minimum=1))]
        line = targets(cell, recall, norm)
        if line:
            doc += ["", line]
    return doc
