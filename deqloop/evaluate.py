"""Evaluation: accuracy against test-time iterations, adaptive compute, tables and plots.

    sweep = iteration_sweep(model, x, y, task.correct, [1, 10, 30, 100], rtol=1e-3)
    sweep.accuracy            # exact match after 1, 10, 30, 100 plain iterations
    sweep.settle_summary()    # adaptive: iterations each example needed to stop changing

    curves = IterationCurves(iters=[1, 10, 30, 100], train_depth=30)
    curves.add("val", sweep.accuracy)
    print(curves.table()); curves.plot("runs/x/iterations.png")

    res = adaptive_accuracy(model, x, y, task.correct, solver="anderson", max_iter=100, rtol=1e-4)

:func:`iteration_sweep` runs plain iterations ``z ← f(z; e)`` once up to the largest count,
without gradients (memory does not grow with the count), scores the readout at each requested
count and, in the same pass, records when each example *settles*: the first iteration ``t``
with ``‖z_t − z_{t−1}‖ ≤ rtol·‖z_t‖``, and whether its answer there is right. That is adaptive
compute by Picard iteration at no extra cost. :func:`adaptive_accuracy` instead runs the
model's fixed-point solver (e.g. Anderson) to a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "AdaptiveResult",
    "EvalReport",
    "IterationCurves",
    "Sweep",
    "accuracy_by_iterations",
    "adaptive_accuracy",
    "auto_batch_size",
    "evaluate_checkpoint",
    "evaluate_model",
    "iteration_sweep",
    "settle_table",
    "parse_iters",
]

Correct = Callable[..., torch.Tensor]

TOKENS_PER_BATCH = 2**15


def auto_batch_size(x: torch.Tensor, tokens: int = TOKENS_PER_BATCH) -> int:
    """A batch size that keeps about ``tokens`` grid cells per batch (attention is ``N²``)."""
    cells = max(1, math.prod(x.shape[1:]))
    return max(1, tokens // cells)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def parse_iters(text: str) -> list[int]:
    """``"1,10,30"`` → ``[1, 10, 30]``: positive integers, sorted, without repeats."""
    try:
        iters = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"iteration counts must be comma-separated positive integers, got {text!r}") from None
    return check_iters(iters)


def check_iters(iters: Sequence[int]) -> list[int]:
    """Positive iteration counts, sorted, without repeats; an error names a bad list."""
    iters = [int(t) for t in iters]
    if not iters or any(t < 1 for t in iters):
        raise ValueError(f"iteration counts must be comma-separated positive integers, got {iters}")
    return sorted(set(iters))


@dataclass
class Sweep:
    """What :func:`iteration_sweep` measured on ``n`` examples.

    Attributes:
        iters: the iteration counts scored (sorted).
        accuracy: fraction correct after each count in ``iters``.
        rtol: the settling tolerance (None: settling not tracked).
        settled_at: ``(n,)`` first iteration whose relative change was ≤ ``rtol``; for examples
            that never settled, the last iteration run.
        settled: ``(n,)`` bool, settled within ``max(iters)`` iterations.
        settled_correct: ``(n,)`` bool, right at ``settled_at``.
        cell_accuracy: mean fraction of cells right after each count (with ``cells``).
    """

    iters: list[int]
    accuracy: list[float]
    rtol: float | None = None
    settled_at: torch.Tensor | None = None
    settled: torch.Tensor | None = None
    settled_correct: torch.Tensor | None = None
    cell_accuracy: list[float] | None = None

    def settle_summary(self) -> dict[str, float]:
        """Adaptive accuracy and iteration statistics (needs ``rtol``)."""
        if self.settled_at is None or self.settled is None or self.settled_correct is None:
            raise ValueError("this sweep did not track settling (pass rtol)")
        it = self.settled_at.float()
        return {
            "accuracy": float(self.settled_correct.float().mean()),
            "iterations_mean": float(it.mean()),
            "iterations_median": float(it.median()),
            "iterations_max": int(self.settled_at.max()),
            "converged": float(self.settled.float().mean()),
        }


@torch.no_grad()
def iteration_sweep(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: Correct,
    iters: Sequence[int],
    *,
    rtol: float | None = None,
    cells: Correct | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Sweep:
    """Score ``model`` after each count of plain iterations in ``iters`` (one pass per batch).

    With ``rtol``, also record when each example settles (see the module docstring). With
    ``cells`` (e.g. ``task.cell_accuracy``, ``(n,)`` fractions), also average it at each count.
    ``batch_size`` defaults to :func:`auto_batch_size`.
    """
    iters = check_iters(iters)
    if len(x) == 0:
        raise ValueError("no examples to evaluate")
    if rtol is not None and not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    device = torch.device(device) if device is not None else _device_of(model)
    batch_size = batch_size or auto_batch_size(x)
    wanted, last = set(iters), iters[-1]
    hits = {t: torch.zeros((), dtype=torch.long, device=device) for t in iters}
    cell_sums = {t: torch.zeros((), dtype=torch.float64, device=device) for t in iters}
    settled_at, settled, settled_ok = [], [], []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            yb = y[i : i + batch_size].to(device)
            e = model.embed(xb)  # (B, *grid, D)
            z = model.initial_state(e)
            done = torch.zeros(len(xb), dtype=torch.bool, device=device)
            at = torch.full((len(xb),), last, dtype=torch.long, device=device)
            ok = torch.zeros(len(xb), dtype=torch.bool, device=device)
            for t in range(1, last + 1):
                z_next = model.step(z, e)
                if t in wanted or rtol is not None:
                    logits = model.readout(z_next).float()
                    right = correct(logits, yb, xb)  # (B,)
                if t in wanted:
                    hits[t] += right.sum()
                    if cells is not None:
                        cell_sums[t] += cells(logits, yb, xb).double().sum()
                if rtol is not None:
                    change = (z_next - z).flatten(1).float().norm(dim=1)
                    newly = ~done & (change <= rtol * z_next.flatten(1).float().norm(dim=1))
                    at = torch.where(newly, t, at)
                    ok = torch.where(newly, right, ok)
                    done = done | newly
                    if t == last:
                        ok = torch.where(done, ok, right)
                z = z_next
            settled_at.append(at.cpu())
            settled.append(done.cpu())
            settled_ok.append(ok.cpu())
    finally:
        model.train(was_training)
    accuracy = [int(hits[t]) / len(x) for t in iters]
    cell = [float(cell_sums[t]) / len(x) for t in iters] if cells is not None else None
    if rtol is None:
        return Sweep(iters, accuracy, cell_accuracy=cell)
    return Sweep(iters, accuracy, rtol, torch.cat(settled_at), torch.cat(settled), torch.cat(settled_ok), cell)


def accuracy_by_iterations(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: Correct,
    iters: Sequence[int],
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> list[float]:
    """Fraction of examples ``correct`` after each count in ``sorted(set(iters))``."""
    return iteration_sweep(model, x, y, correct, iters, batch_size=batch_size, device=device).accuracy


@dataclass
class AdaptiveResult:
    """Accuracy when the model's solver runs each example to a tolerance.

    Attributes:
        accuracy: fraction correct at the solver's answer.
        iterations: ``(n,)`` function evaluations each example used.
        converged: ``(n,)`` bool, reached the tolerance within ``max_iter``.
        residual: ``(n,)`` relative residual at the answer.
        correct: ``(n,)`` bool per example.
    """

    accuracy: float
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    correct: torch.Tensor

    def summary(self) -> dict[str, float]:
        it = self.iterations.float()
        return {
            "accuracy": self.accuracy,
            "iterations_mean": float(it.mean()),
            "iterations_median": float(it.median()),
            "iterations_max": int(self.iterations.max()),
            "converged": float(self.converged.float().mean()),
            "residual_median": float(self.residual.median()),
        }


@torch.no_grad()
def adaptive_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: Correct,
    *,
    solver: str = "anderson",
    max_iter: int = 100,
    rtol: float = 1e-4,
    atol: float = 0.0,
    solver_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> AdaptiveResult:
    """Solve each example with ``solver`` to ``rtol`` (at most ``max_iter`` evaluations), score it.

    ``solver_options`` default to the model's own when ``solver`` is its configured solver.
    """
    if len(x) == 0:
        raise ValueError("no examples to evaluate")
    if solver_options is None:
        solver_options = dict(model.config.solver_options) if solver == model.config.solver else {}
    device = torch.device(device) if device is not None else _device_of(model)
    batch_size = batch_size or auto_batch_size(x)
    parts: dict[str, list[torch.Tensor]] = {"iterations": [], "converged": [], "residual": [], "correct": []}
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            yb = y[i : i + batch_size].to(device)
            out = model(xb, solver=solver, solver_options=solver_options, max_iter=max_iter, rtol=rtol, atol=atol,
                        backward="none", throw=False)
            sol = out.solution
            parts["iterations"].append(sol.iterations.cpu())
            parts["converged"].append(sol.converged.cpu())
            parts["residual"].append(sol.residual.cpu())
            parts["correct"].append(correct(out.logits.float(), yb, xb).cpu())
    finally:
        model.train(was_training)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return AdaptiveResult(accuracy=float(cat["correct"].float().mean()), **cat)


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
            raise ValueError(f"{name}: {len(accuracy)} accuracies for {len(self.iters)} iteration counts")
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

    def to_dict(self) -> dict[str, Any]:
        return {"iters": self.iters, "train_depth": self.train_depth, "accuracy": self.curves}

    def plot(self, path: str | Path, title: str = "Accuracy vs test-time iterations") -> Path:
        """Write a PNG: accuracy (%) against iterations (log scale), training depth dashed."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

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
        fig.savefig(path)
        plt.close(fig)
        return path


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
    """What :func:`evaluate_checkpoint` returns.

    Attributes:
        curves: exact-match accuracy by test-time iterations per split.
        cells: the fraction of cells right, likewise (when the task scores cells).
        settling: per split, adaptive Picard results from the same pass (see :class:`Sweep`).
        solver: per split, results of the model's solver run to ``solver_rtol`` (optional).
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

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "task": self.task, "n": self.n, "curves": self.curves.to_dict(),
                "cells": self.cells.to_dict() if self.cells is not None else None,
                "settle_rtol": self.settle_rtol, "settling": self.settling, "solver_name": self.solver_name,
                "solver_rtol": self.solver_rtol, "solver": self.solver}

    def text(self) -> str:
        """The tables, as printed by ``deqloop eval``."""
        parts = [f"{self.task}: exact-match accuracy by test-time iterations "
                 f"({', '.join(f'{k}: {v}' for k, v in self.n.items())} examples)", self.curves.table(), ""]
        if self.cells is not None:
            parts += ["fraction of cells right by test-time iterations", self.cells.table(), ""]
        parts.append(settle_table(self.settling, self.settle_rtol))
        if self.solver:
            rows = {k: {**v} for k, v in self.solver.items()}
            table = settle_table(rows, self.solver_rtol or 0.0, what="fixed-point residual")
            parts += ["", table.replace("adaptive:", f"adaptive ({self.solver_name} solver):", 1)]
        return "\n".join(parts)


def evaluate_model(
    model: torch.nn.Module,
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    task: Any,
    *,
    iters: Sequence[int],
    train_depth: int | None = None,
    settle_rtol: float = 1e-3,
    solver: str | None = None,
    solver_rtol: float = 1e-4,
    cells: bool = True,
    device: str | torch.device | None = None,
) -> EvalReport:
    """Iteration curves and settling statistics of ``model`` on named ``(x, y)`` splits.

    ``task`` supplies ``correct``, ``name`` and, if ``cells``, ``cell_accuracy`` (the fraction of
    cells right, reported beside exact match). With ``solver`` each split is also solved to
    ``solver_rtol`` with at most ``max(iters)`` evaluations.
    """
    if not splits:
        raise ValueError("nothing to evaluate: no splits")
    curves = IterationCurves(list(iters), train_depth=train_depth)
    report = EvalReport(checkpoint="", task=task.name, n={k: len(v[0]) for k, v in splits.items()},
                        curves=curves, settle_rtol=settle_rtol)
    cell_accuracy = getattr(task, "cell_accuracy", None) if cells else None
    if cell_accuracy is not None:
        report.cells = IterationCurves(list(iters), train_depth=train_depth)
    for name, (x, y) in splits.items():
        sweep = iteration_sweep(model, x, y, task.correct, curves.iters, rtol=settle_rtol, cells=cell_accuracy,
                                device=device)
        curves.add(name, sweep.accuracy)
        if report.cells is not None and sweep.cell_accuracy is not None:
            report.cells.add(name, sweep.cell_accuracy)
        report.settling[name] = sweep.settle_summary()
    if solver is not None:
        report.solver_name, report.solver_rtol = solver, solver_rtol
        for name, (x, y) in splits.items():
            res = adaptive_accuracy(model, x, y, task.correct, solver=solver, max_iter=curves.iters[-1],
                                    rtol=solver_rtol, device=device)
            report.solver[name] = res.summary()
    return report


def evaluate_checkpoint(
    path: str | Path,
    *,
    iters: Sequence[int],
    n: int = 512,
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    task: Any = None,
    bands: Sequence[str] = ("val", "hard"),
    settle_rtol: float = 1e-3,
    solver: str | None = None,
    solver_rtol: float = 1e-4,
    seed: int = 12345,
    device: str | torch.device = "cpu",
) -> EvalReport:
    """Evaluate a training checkpoint on its task's ``bands`` and on extra ``splits``.

    ``task`` overrides the task rebuilt from the checkpoint's config (e.g. other data files).
    Each split gets an iteration curve and settling statistics from one pass; with ``solver``
    (e.g. ``"anderson"``) each split is also solved to ``solver_rtol`` with at most
    ``max(iters)`` evaluations.
    """
    from deqloop.checkpoint import load_checkpoint, load_model
    from deqloop.train import TrainConfig, build_task

    state = load_checkpoint(path)
    model = load_model(path).to(device)
    config = None
    if "train_config" in state:
        config = TrainConfig.from_dict({**state["train_config"], "resume": False, "overwrite": False})
    if task is None:
        if config is None:
            raise ValueError(f"{path} has no training config; pass the task explicitly")
        task = build_task(config)
    sets = {band: task.make(band, n, seed=seed) for band in bands}
    sets.update(splits or {})
    if not sets:
        raise ValueError("nothing to evaluate: no bands and no splits")
    train_depth = config.depth() if config is not None else model.config.max_iter
    report = evaluate_model(model, sets, task, iters=iters, train_depth=train_depth, settle_rtol=settle_rtol,
                            solver=solver, solver_rtol=solver_rtol, device=device)
    report.checkpoint = str(path)
    return report
