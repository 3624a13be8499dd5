"""Accuracy against test-time iterations and adaptive compute: the measurements, no I/O.

    sweep = iteration_sweep(model, x, y, task.correct, [1, 10, 30, 100], rtol=1e-3)
    sweep.accuracy            # exact match after 1, 10, 30, 100 plain iterations
    sweep.settle_summary()    # adaptive: iterations each example needed to stop changing

    res = adaptive_accuracy(model, x, y, task.correct, solver="anderson", max_iter=100, rtol=1e-4)

:func:`iteration_sweep` runs plain iterations ``z ← f(z; e)`` once up to the largest count,
without gradients (memory does not grow with the count), scores the readout at each requested
count and, in the same pass, records when each example *settles*: the first iteration ``t``
with ``‖z_t − z_{t−1}‖ ≤ rtol·‖z_t‖``, and whether its answer there is right. That is adaptive
compute by Picard iteration at no extra cost. :func:`adaptive_accuracy` instead runs the
model's fixed-point solver (e.g. Anderson) to a tolerance.

The same pass measures the paper's test-time state diagnostics at each requested count T
(authors' code ``deepthinking/models/transformer.py:164-263``, repository ashlab11/generalization):
the hidden-norm ratio ‖z_T‖ / ‖z_1‖ (the mean over examples of ‖z_T‖ over the mean of ‖z_1‖, each
state flattened per example) and the cosine of consecutive states cos(z_{T−1}, z_T) (the mean over
examples; z₀ is the initial state). The paper takes both on one batch at its last count; here every
example counts, at every requested count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from deqloop.errors import ConfigError
from deqloop.solvers import DEFAULT_SOLVER, residual_norms

__all__ = [
    "AdaptiveResult",
    "Sweep",
    "accuracy_by_iterations",
    "adaptive_accuracy",
    "auto_batch_size",
    "check_iters",
    "iteration_sweep",
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


def _batches(x: torch.Tensor, y: torch.Tensor, size: int, device: torch.device):
    """``(x, y)`` in slices of ``size`` examples, on ``device``."""
    for i in range(0, len(x), size):
        yield x[i : i + size].to(device), y[i : i + size].to(device)


def parse_iters(text: str) -> list[int]:
    """``"1,10,30"`` → ``[1, 10, 30]``: positive integers, sorted, without repeats."""
    try:
        iters = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ConfigError(f"iteration counts must be comma-separated positive integers, got {text!r}") from None
    return check_iters(iters)


def check_iters(iters: Sequence[int]) -> list[int]:
    """Positive iteration counts, sorted, without repeats; an error names a bad list."""
    iters = [int(t) for t in iters]
    if not iters or any(t < 1 for t in iters):
        raise ConfigError(f"iteration counts must be comma-separated positive integers, got {iters}")
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
        norm_ratio: ‖z_T‖ / ‖z_1‖ at each count T (mean norms over the examples).
        cosine: mean over the examples of cos(z_{T−1}, z_T) at each count T.
    """

    iters: list[int]
    accuracy: list[float]
    rtol: float | None = None
    settled_at: torch.Tensor | None = None
    settled: torch.Tensor | None = None
    settled_correct: torch.Tensor | None = None
    cell_accuracy: list[float] | None = None
    norm_ratio: list[float] | None = None
    cosine: list[float] | None = None

    def settle_summary(self) -> dict[str, float]:
        """Adaptive accuracy and iteration statistics (needs ``rtol``)."""
        if self.settled_at is None or self.settled is None or self.settled_correct is None:
            raise ConfigError("this sweep did not track settling (pass rtol)")
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
        raise ConfigError("no examples to evaluate")
    if rtol is not None and not rtol > 0:
        raise ConfigError(f"rtol must be > 0, got {rtol}")
    device = torch.device(device) if device is not None else _device_of(model)
    batch_size = batch_size or auto_batch_size(x)
    wanted, last = set(iters), iters[-1]
    lazy = device.type == "cpu"
    hits = {t: torch.zeros((), dtype=torch.long, device=device) for t in iters}
    cell_sums = {t: torch.zeros((), dtype=torch.float64, device=device) for t in iters}
    norm_sums = {t: torch.zeros((), dtype=torch.float64, device=device) for t in {1, *iters}}
    cos_sums = {t: torch.zeros((), dtype=torch.float64, device=device) for t in iters}
    settled_at, settled, settled_ok = [], [], []
    was_training = model.training
    model.eval()
    try:
        for xb, yb in _batches(x, y, batch_size, device):
            e = model.embed(xb)  # (B, *grid, D)
            z = model.initial_state(e)
            done = torch.zeros(len(xb), dtype=torch.bool, device=device)
            at = torch.full((len(xb),), last, dtype=torch.long, device=device)
            ok = torch.zeros(len(xb), dtype=torch.bool, device=device)
            for t, z_next in enumerate(model.iterates(z, e, last), start=1):
                if rtol is not None:
                    change, size = residual_norms(z_next, z)
                    newly = ~done & (change <= rtol * size)
                # the answer is read at the counts asked for and where an example settles (on the
                # CPU only then: an accelerator reads it every iteration rather than sync to ask)
                read = t in wanted or (rtol is not None and (t == last or not lazy or bool(newly.any())))
                if read:
                    logits = model.readout(z_next).float()
                    right = correct(logits, yb, xb)  # (B,)
                if t in norm_sums:
                    now = z_next.reshape(len(xb), -1).double()  # (B, n)
                    norm_sums[t] += now.norm(dim=1).sum()
                    if t in wanted:
                        cos_sums[t] += torch.cosine_similarity(z.reshape(len(xb), -1).double(), now, dim=1).sum()
                if t in wanted:
                    hits[t] += right.sum()
                    if cells is not None:
                        cell_sums[t] += cells(logits, yb, xb).double().sum()
                if rtol is not None:
                    at = torch.where(newly, t, at)
                    if read:  # (where the answer was not read, no example settled)
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
    first = float(norm_sums[1])
    ratio = [float(norm_sums[t]) / first if first > 0 else math.nan for t in iters]
    cosine = [float(cos_sums[t]) / len(x) for t in iters]
    if rtol is None:
        return Sweep(iters, accuracy, cell_accuracy=cell, norm_ratio=ratio, cosine=cosine)
    return Sweep(iters, accuracy, rtol, torch.cat(settled_at), torch.cat(settled), torch.cat(settled_ok), cell,
                 ratio, cosine)


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
    solver: str = DEFAULT_SOLVER,
    max_iter: int = 100,
    rtol: float = 1e-4,
    atol: float = 0.0,
    solver_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> AdaptiveResult:
    """Solve each example with ``solver`` to ``rtol`` (at most ``max_iter`` evaluations), score it.

    ``solver_options`` default to the model's own when ``solver`` is its configured solver (the
    rule of :meth:`~deqloop.model.SolveSettings.with_`).
    """
    if len(x) == 0:
        raise ConfigError("no examples to evaluate")
    settings = dict(solver=solver, max_iter=max_iter, rtol=rtol, atol=atol, backward="none", throw=False)
    if solver_options is not None:
        settings["solver_options"] = solver_options
    device = torch.device(device) if device is not None else _device_of(model)
    batch_size = batch_size or auto_batch_size(x)
    parts: dict[str, list[torch.Tensor]] = {"iterations": [], "converged": [], "residual": [], "correct": []}
    was_training = model.training
    model.eval()
    try:
        for xb, yb in _batches(x, y, batch_size, device):
            out = model(xb, **settings)
            sol = out.solution
            parts["iterations"].append(sol.iterations.cpu())
            parts["converged"].append(sol.converged.cpu())
            parts["residual"].append(sol.residual.cpu())
            parts["correct"].append(correct(out.logits.float(), yb, xb).cpu())
    finally:
        model.train(was_training)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return AdaptiveResult(accuracy=float(cat["correct"].float().mean()), **cat)


