"""Evaluation reports: accuracy-vs-iterations tables and plots, adaptive-compute tables, and the
:class:`EvalReport` that :func:`deqloop.eval.evaluate.evaluate_model` fills.

    curves = IterationCurves(iters=[1, 10, 30, 100], train_depth=30)
    curves.add("val", sweep.accuracy)
    print(curves.table()); curves.plot("runs/x/iterations.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deqloop.errors import ConfigError
from deqloop.eval.curves import check_iters

__all__ = ["PAPER_ITERATIONS", "EvalReport", "IterationCurves", "dynamics_table", "examples_text", "paper_iterations",
           "settle_table"]

# The paper's reported number is exact-match accuracy at this many test-time iterations (the last of
# its 1…500), with the model as training left it (authors' train_model.py: test_acc[tb_last]).
PAPER_ITERATIONS = 500


def paper_iterations(model: torch.nn.Module) -> int:
    """The count of a model's paper number: :data:`PAPER_ITERATIONS`, or 1 for a model with several
    untied blocks per iteration, the paper's "fixed" baseline, which it trains and tests at one
    iteration (authors' ``experiments/run_all.bash:71-77``)."""
    arch = getattr(getattr(model, "config", None), "arch", None)
    return 1 if (getattr(arch, "blocks", 1) or 1) > 1 else PAPER_ITERATIONS


@dataclass
class IterationCurves:
    """Accuracy against test-time iterations for several splits: a table and a plot.

    ``train_depth`` (the iterations used in training) is marked in both.
    """

    iters: list[int]
    train_depth: int | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.iters = check_iters(self.iters)

    def add(self, name: str, accuracy: Sequence[float]) -> None:
        if len(accuracy) != len(self.iters):
            raise ConfigError(f"{name}: {len(accuracy)} accuracies for {len(self.iters)} iteration counts")
        self.curves[name] = [float(a) for a in accuracy]

    def table(self) -> str:
        """A fixed-width text table: one row per iteration count, one column per split (%)."""
        names = list(self.curves)
        width = max([10, *(len(n) + 2 for n in names)])
        head = f"{'iterations':>10}" + "".join(f"{n:>{width}}" for n in names)
        lines = [head, "-" * len(head)]
        for j, t in enumerate(self.iters):
            mark = "  <- training depth" if t == self.train_depth else ""
            cells = "".join(f"{100 * self.curves[n][j]:>{width - 1}.1f}%" for n in names)
            lines.append(f"{t:>10}{cells}{mark}")
        if self.train_depth is not None and self.train_depth not in self.iters:
            lines.append(f"(training depth: {self.train_depth} iterations)")
        return "\n".join(lines)

    def best(self, name: str) -> tuple[int, float]:
        """``(iterations, accuracy)`` of a split's best accuracy (fewest iterations on ties)."""
        acc = self.curves[name]
        j = max(range(len(acc)), key=lambda i: (acc[i], -i))
        return self.iters[j], acc[j]

    def at(self, name: str, iterations: int = PAPER_ITERATIONS) -> float | None:
        """A split's accuracy after exactly ``iterations`` (the paper's ``@500`` by default); None
        when that count was not scored."""
        return self.curves[name][self.iters.index(iterations)] if iterations in self.iters else None

    def headline(self, iterations: int = PAPER_ITERATIONS) -> str:
        """Per split: accuracy ``@iterations`` (the paper's number) beside the best over counts."""
        head = f"{'split':<18}{f'@{iterations}':>10}{'best':>10}{'at':>8}"
        lines = [head, "-" * len(head)]
        for name in self.curves:
            at, (t, best) = self.at(name, iterations), self.best(name)
            cell = "—" if at is None else f"{100 * at:.1f}%"
            lines.append(f"{name:<18}{cell:>10}{100 * best:>9.1f}%{t:>8}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"iters": self.iters, "train_depth": self.train_depth, "accuracy": self.curves}

    def plot(self, path: str | Path, title: str = "Accuracy vs test-time iterations") -> Path:
        """Write a PNG: accuracy (%) against iterations (log scale), training depth dashed."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from deqloop.files import save_figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for name, acc in self.curves.items():
            ax.plot(self.iters, [100 * a for a in acc], marker="o", markersize=3, label=name)
        if self.train_depth is not None:
            ax.axvline(self.train_depth, color="gray", linestyle="--", linewidth=1,
                       label=f"training depth ({self.train_depth})")
        if len(self.iters) > 1 and self.iters[-1] / self.iters[0] >= 10:
            ax.set_xscale("log")
        ax.set_xlabel("test-time iterations")
        ax.set_ylabel("exact-match accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)
        return path


def dynamics_table(dynamics: Mapping[str, Mapping[str, Sequence[float]]], iters: Sequence[int]) -> str:
    """Per iteration count T and split: ``‖z_T‖/‖z_1‖ | cos(z_{T−1}, z_T)``."""
    names = list(dynamics)
    width = max([19, *(len(n) + 2 for n in names)])
    head = f"{'iterations':>10}" + "".join(f"{n:>{width}}" for n in names)
    lines = ["state by test-time iterations: ‖z_T‖/‖z_1‖ | cos(z_T-1, z_T)", head, "-" * len(head)]
    for j, t in enumerate(iters):
        cells = (f"{dynamics[n]['norm_ratio'][j]:.3g} | {dynamics[n]['cosine'][j]:.4f}" for n in names)
        lines.append(f"{t:>10}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def examples_text(examples: Mapping[str, Any], width: int = 100) -> str:
    """The examples a report shows (:attr:`EvalReport.examples`), one line each: ``field value`` pairs
    joined by ``; ``, a value longer than ``width`` characters cut with ``…`` (``eval.json`` has it whole)."""
    cut = lambda v: v if len(v) <= width else v[: width - 1] + "…"  # noqa: E731
    t = examples["iterations"]
    lines = [f"examples of {examples['split']} after {t} iteration{'s' if t != 1 else ''} (the model's answer as the "
             "task shows it):"]
    lines += [f"  {i}. " + "; ".join(f"{k} {cut(str(v))}" for k, v in row.items())
              for i, row in enumerate(examples["rows"], start=1)]
    return "\n".join(lines)


def settle_table(settling: Mapping[str, Mapping[str, float]], rtol: float, what: str = "state") -> str:
    """Rows of adaptive results: accuracy, mean/median/max iterations, fraction converged."""
    head = f"{'split':<18}{'accuracy':>10}{'iters mean':>12}{'median':>8}{'max':>6}{'settled':>9}"
    lines = [f"adaptive: each input iterates until its {what} changes by less than rtol={rtol:g}", head,
             "-" * len(head)]
    for name, s in settling.items():
        lines.append(f"{name:<18}{100 * s['accuracy']:>9.1f}%{s['iterations_mean']:>12.1f}"
                     f"{s['iterations_median']:>8.0f}{s['iterations_max']:>6d}{100 * s['converged']:>8.1f}%")
    return "\n".join(lines)


@dataclass
class EvalReport:
    """What :func:`evaluate_model` and :func:`evaluate_run` return.

    Attributes:
        curves: exact-match accuracy by test-time iterations per split.
        cells: the fraction of cells right, likewise (when the task scores cells).
        settling: per split, adaptive Picard results from the same pass (see :class:`Sweep`).
        solver: per split, results of the model's solver run to ``solver_rtol`` (optional).
        baselines: per split, the task's model-free baselines on the same examples
            (:meth:`deqloop.tasks.base.Task.baselines`; empty for a task that has none).
        dynamics: per split, the paper's state diagnostics at each count of ``curves.iters``:
            ``"norm_ratio"`` ‖z_T‖ / ‖z_1‖ and ``"cosine"`` cos(z_{T−1}, z_T) (see :class:`Sweep`).
        drop_rtol: the tolerance at which the sweep stopped iterating an example (None: never).
        evaluations: per split, the mean number of loop-map applications an example received in
            the sweep (``max(curves.iters)`` when none was dropped).
        seconds: per split, the wall time of its ``"sweep"`` and, with a solver, its ``"solve"``.
        compiled: per split, whether its sweep and solve ran through the compiled block.
        examples: a few examples with the model's answer, for people: ``{"split", "iterations",
            "rows"}``, the rows from the task's ``show`` (:meth:`deqloop.tasks.base.Task.show`);
            empty for a task without one or with ``examples=0``.

    ``to_dict()`` also holds ``"paper"``: the paper's number, accuracy at ``paper_iterations``
    (:func:`paper_iterations`: 500, or 1 for the untied baseline) per split (None where that count
    was not scored), and ``"best"``: ``[iterations, accuracy]`` of each split's best count.
    """

    checkpoint: str
    task: str
    n: dict[str, int]
    curves: IterationCurves
    settle_rtol: float
    settling: dict[str, dict[str, float]] = field(default_factory=dict)
    cells: IterationCurves | None = None
    solver_name: str | None = None
    solver_rtol: float | None = None
    solver: dict[str, dict[str, float]] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    dynamics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    paper_iterations: int = PAPER_ITERATIONS
    drop_rtol: float | None = None
    evaluations: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    compiled: dict[str, bool] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.curves
        return {"checkpoint": self.checkpoint, "task": self.task, "n": self.n, "curves": c.to_dict(),
                "paper": {"iterations": self.paper_iterations,
                          "accuracy": {k: c.at(k, self.paper_iterations) for k in c.curves}},
                "best": {k: list(c.best(k)) for k in c.curves},
                "cells": self.cells.to_dict() if self.cells is not None else None,
                "settle_rtol": self.settle_rtol, "settling": self.settling, "solver_name": self.solver_name,
                "solver_rtol": self.solver_rtol, "solver": self.solver, "baselines": self.baselines,
                "dynamics": self.dynamics, "drop_rtol": self.drop_rtol, "evaluations": self.evaluations,
                "seconds": self.seconds, "compiled": self.compiled, "examples": self.examples}

    def text(self) -> str:
        """The tables, as printed by ``deqloop eval``."""
        parts = [f"{self.task}: exact-match accuracy by test-time iterations "
                 f"({', '.join(f'{k}: {v}' for k, v in self.n.items())} examples)", self.curves.table(), "",
                 f"the paper's number (accuracy at {self.paper_iterations} iteration"
                 f"{'s' if self.paper_iterations != 1 else ''}) and the best over counts",
                 self.curves.headline(self.paper_iterations), ""]
        if self.cells is not None:
            parts += ["fraction of cells right by test-time iterations", self.cells.table(), ""]
        if self.dynamics:
            parts += [dynamics_table(self.dynamics, self.curves.iters), ""]
        parts.append(settle_table(self.settling, self.settle_rtol))
        if self.drop_rtol is not None and self.evaluations:
            parts.append(f"(each input stopped being iterated once its state changed by at most {self.drop_rtol:g}, "
                         f"its answer there carried to later counts; loop evaluations an input, of "
                         f"{self.curves.iters[-1]}: " + ", ".join(f"{k} {v:.1f}" for k, v in self.evaluations.items())
                         + ")")
        if self.solver:
            rows = {k: {**v} for k, v in self.solver.items()}
            table = settle_table(rows, self.solver_rtol or 0.0, what="fixed-point residual")
            parts += ["", table.replace("adaptive:", f"adaptive ({self.solver_name} solver):", 1)]
        if any(self.baselines.values()):
            parts += ["", "baselines on the same examples (no model):"]
            parts += [f"  {name}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items())
                      for name, scores in self.baselines.items() if scores]
        if self.examples.get("rows"):
            parts += ["", examples_text(self.examples)]
        return "\n".join(parts)
