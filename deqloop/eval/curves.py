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
        drop_rtol: the tolerance at which examples stopped being iterated (None: none stopped).
        evaluations: ``(n,)`` applications of the loop map each example received: ``max(iters)``,
            or the iteration at which it was dropped (see :func:`iteration_sweep`).
        correct: ``(n, len(iters))`` bool, each example right after each count.
        kept: ``(k, *grid, C)`` readout logits of the first ``k`` examples after ``t`` iterations,
            with ``keep=(t, k)`` (the answers scored there; where an example was dropped before
            ``t``, its readout there, which its later counts score).
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
    drop_rtol: float | None = None
    evaluations: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    kept: torch.Tensor | None = None

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


COMPACT_EVERY = 16  # on an accelerator, dropped examples leave the batch every this many iterations


@torch.no_grad()
def iteration_sweep(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: Correct,
    iters: Sequence[int],
    *,
    rtol: float | None = None,
    drop_rtol: float | None = None,
    cells: Correct | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    keep: tuple[int, int] | None = None,
) -> Sweep:
    """Score ``model`` after each count of plain iterations in ``iters`` (one pass per batch).

    With ``rtol``, also record when each example settles (see the module docstring). With
    ``cells`` (e.g. ``task.cell_accuracy``, ``(n,)`` fractions), also average it at each count.
    ``batch_size`` defaults to :func:`auto_batch_size`. With ``keep=(t, k)`` (``t`` in ``iters``),
    the readout logits the sweep scored for the first ``k`` examples at ``t`` come back as
    ``Sweep.kept``.

    With ``drop_rtol`` (≤ ``rtol`` when both are given), an example stops being iterated at the
    first iteration ``t`` with ``‖z_t − z_{t−1}‖ ≤ drop_rtol·‖z_t‖`` (the settling rule, norms of
    the flattened state per example): the loop map is not applied to it again, and its answer,
    cell score, norm and cosine at ``t`` count for every later count, as if ``z`` stayed at
    ``z_t``. The curves then equal those of the full pass wherever the answers no longer change
    after that point, which the tolerance decides; ``Sweep.evaluations`` counts what each
    example cost. On an accelerator dropped examples leave the batch every
    :data:`COMPACT_EVERY` iterations (a host sync), on the CPU at once.
    """
    iters = check_iters(iters)
    if keep is not None and (keep[0] not in iters or keep[1] < 0):
        raise ConfigError(f"keep=(t, k) needs t among the counts {iters} and k >= 0, got {keep}")
    if len(x) == 0:
        raise ConfigError("no examples to evaluate")
    for name, tol in (("rtol", rtol), ("drop_rtol", drop_rtol)):
        if tol is not None and not tol > 0:
            raise ConfigError(f"{name} must be > 0, got {tol}")
    if rtol is not None and drop_rtol is not None and drop_rtol > rtol:
        raise ConfigError(f"drop_rtol ({drop_rtol:g}) must be ≤ rtol ({rtol:g}): an example dropped before it "
                          "settles would have no settling point")
    device = torch.device(device) if device is not None else _device_of(model)
    batch_size = batch_size or auto_batch_size(x)
    was_training = model.training
    model.eval()
    try:
        parts = [_sweep_batch(model, xb, yb, correct, iters, rtol, drop_rtol, cells,
                              _batch_keep(keep, i * batch_size, len(xb)))
                 for i, (xb, yb) in enumerate(_batches(x, y, batch_size, device))]
    finally:
        model.train(was_training)
    held = [p.pop("kept") for p in parts]
    kept = torch.cat([h.cpu() for h in held if h is not None]) if keep is not None and keep[1] > 0 else None
    got = {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0] if parts[0][k] is not None}
    right = got["correct"]  # (n, K)
    accuracy = right.double().mean(0).tolist()
    cell = got["cells"].mean(0).tolist() if cells is not None else None
    first = float(got["norm_1"].sum())
    ratio = [float(s) / first if first > 0 else math.nan for s in got["norm"].sum(0).tolist()]
    cosine = got["cosine"].mean(0).tolist()
    common = dict(cell_accuracy=cell, norm_ratio=ratio, cosine=cosine, drop_rtol=drop_rtol,
                  evaluations=got["evaluations"], correct=right, kept=kept)
    if rtol is None:
        return Sweep(iters, accuracy, **common)
    return Sweep(iters, accuracy, rtol, got["settled_at"], got["settled"], got["settled_correct"], **common)


def _batch_keep(keep: tuple[int, int] | None, offset: int, size: int) -> tuple[int, int] | None:
    """``keep=(t, k)`` of the sweep for its batch of ``size`` examples from ``offset``: ``(t, k_b)``,
    the batch's first ``k_b`` examples among the sweep's first ``k`` (None: none of them)."""
    if keep is None or keep[1] <= offset:
        return None
    return keep[0], min(size, keep[1] - offset)


def _sweep_batch(model, xb, yb, correct, iters, rtol, drop_rtol, cells, first) -> dict[str, torch.Tensor | None]:
    """One batch of :func:`iteration_sweep`: per example ``(B, K)`` answers, cell scores, norms and
    cosines at the ``K`` counts, ``‖z_1‖``, the settling point, the map evaluations and, with
    ``first=(t, k)``, the readouts of its first ``k`` examples at ``t``."""
    B, K, device, last = len(xb), len(iters), xb.device, iters[-1]
    column = {t: j for j, t in enumerate(iters)}
    lazy = device.type == "cpu"  # the CPU reads the answer only where needed (no sync to avoid)
    right_at = torch.zeros(B, K, dtype=torch.bool, device=device)
    cell_at = torch.zeros(B, K, dtype=torch.float64, device=device) if cells is not None else None
    norm_at = torch.zeros(B, K, dtype=torch.float64, device=device)
    cos_at = torch.zeros(B, K, dtype=torch.float64, device=device)
    norm_1 = torch.zeros(B, dtype=torch.float64, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # settled (rtol)
    dropped = torch.zeros(B, dtype=torch.bool, device=device)  # no longer iterated (drop_rtol)
    at = torch.full((B,), last, dtype=torch.long, device=device)
    ok = torch.zeros(B, dtype=torch.bool, device=device)
    evaluations = torch.full((B,), last, dtype=torch.long, device=device)
    idx = torch.arange(B, device=device)  # the examples still in the batch (ascending)
    kept = None  # (k + 1, *grid, C): the kept readouts, row k a spare for the examples not kept
    e = model.embed(xb)  # (B, *grid, D)
    z, ea, xa, ya = model.initial_state(e), e, xb, yb
    states, t = model.iterates(z, ea, last), 0
    while t < last:
        z_next, t = next(states), t + 1
        change, size = residual_norms(z_next, z)  # (A,) float32
        live = ~dropped[idx]
        newly = live & ~done[idx] & (change <= rtol * size) if rtol is not None else None
        drop = live & (change <= drop_rtol * size) if drop_rtol is not None else None
        tracked = [m for m in (newly, drop) if m is not None]
        # the answer is read at the counts asked for and where an example settles or is dropped (on
        # the CPU only then: an accelerator reads it every iteration rather than sync to ask)
        read = t in column or (bool(tracked) and (t == last or not lazy or any(bool(m.any()) for m in tracked)))
        if read:
            logits = model.readout(z_next).float()
            right = correct(logits, ya, xa)  # (A,)
            score = cells(logits, ya, xa).double() if cells is not None else None
            now = z_next.reshape(len(idx), -1).double()  # (A, n)
            norm = now.norm(dim=1)
            cos = torch.cosine_similarity(z.reshape(len(idx), -1).double(), now, dim=1)
        if t == 1:
            norm_1[idx] = norm if read else z_next.reshape(len(idx), -1).double().norm(dim=1)
        if t in column:  # live examples only: a dropped one's columns were filled when it was dropped
            j = column[t]
            right_at[idx, j] = torch.where(live, right, right_at[idx, j])
            norm_at[idx, j] = torch.where(live, norm, norm_at[idx, j])
            cos_at[idx, j] = torch.where(live, cos, cos_at[idx, j])
            if cell_at is not None:
                cell_at[idx, j] = torch.where(live, score, cell_at[idx, j])
        if newly is not None:
            at[idx] = torch.where(newly, t, at[idx])
            if read:  # (where the answer was not read, no example settled)
                ok[idx] = torch.where(newly, right, ok[idx])
            done[idx] = done[idx] | newly
            if t == last:
                ok[idx] = torch.where(done[idx], ok[idx], right)
        if first is not None and read and (t == first[0] or (drop is not None and t < first[0])):
            # at t the live examples' readouts, before t those of the examples dropped now (their
            # answer for t); the first k examples can only sit in idx[:k], as idx ascends
            k = first[1]
            hold = (live if t == first[0] else drop)[:k] & (idx[:k] < k)
            if kept is None:
                kept = logits.new_zeros((k + 1, *logits.shape[1:]))
            rows = torch.where(hold, idx[:k], k)
            kept[rows] = torch.where(hold.view(-1, *[1] * (logits.dim() - 1)), logits[:k], kept[rows])
        if drop is not None and read and t < last:
            later = [j for tt, j in column.items() if tt > t]  # carried forward unchanged
            if later:
                cols = torch.tensor(later, device=device)
                for table, value in ((right_at, right), (norm_at, norm), (cos_at, cos), (cell_at, score)):
                    if table is not None:
                        rows = table[idx][:, cols]
                        table[idx[:, None], cols] = torch.where(drop[:, None], value[:, None].to(rows.dtype), rows)
            evaluations[idx] = torch.where(drop, t, evaluations[idx])
            dropped[idx] = dropped[idx] | drop
            if lazy or t % COMPACT_EVERY == 0 or t in column:
                keep = ~dropped[idx]
                if not bool(keep.all()):
                    idx, z_next, ea, xa, ya = idx[keep], z_next[keep], ea[keep], xa[keep], ya[keep]
                    if len(idx) == 0:
                        break
                    states = model.iterates(z_next, ea, last - t)
        z = z_next
    return {"correct": right_at, "cells": cell_at, "norm": norm_at, "cosine": cos_at, "norm_1": norm_1,
            "settled_at": at if rtol is not None else None, "settled": done if rtol is not None else None,
            "settled_correct": ok if rtol is not None else None, "evaluations": evaluations,
            "kept": kept[:-1] if kept is not None else None}


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


