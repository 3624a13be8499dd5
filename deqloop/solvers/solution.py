"""The result of a fixed-point solve: one typed record shared by every method."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from deqloop.errors import DeqloopError


EPS = 1e-12  # guards the relative residual against ‖f(z)‖ = 0


def residual(fz: torch.Tensor, z: torch.Tensor, dtype: torch.dtype | None = None,
             out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g, ‖g‖, ‖f(z)‖)`` with ``g = f(z) − z`` per sample, flattened to ``(B, D)`` and computed in
    ``dtype`` (default: float32, float64 for float64 states), written into ``out`` when given; the
    norms are ``(B,)`` float32. The one residual formula of the library: a sample has converged
    when ``‖f(z) − z‖ ≤ atol + rtol·‖f(z)‖``; its relative residual is
    ``‖f(z) − z‖ / (‖f(z)‖ + EPS)``. Nothing is recorded for autograd."""
    acc = dtype or (torch.float64 if fz.dtype == torch.float64 else torch.float32)
    fz, z = fz.detach().reshape(fz.shape[0], -1), z.detach().reshape(z.shape[0], -1)
    fz = fz.to(acc)
    g = torch.sub(fz, z.to(acc), out=out)
    return g, torch.linalg.vector_norm(g, dim=1).float(), torch.linalg.vector_norm(fz, dim=1).float()


def residual_norms(fz: torch.Tensor, z: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(‖f(z) − z‖, ‖f(z)‖)`` per sample, ``(B,)`` float32 (see :func:`residual`)."""
    return residual(fz, z, dtype)[1:]


def relative_residual(fz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float32 ``‖f(z) − z‖ / (‖f(z)‖ + EPS)`` (see :func:`residual_norms`)."""
    abs_r, f_norm = residual_norms(fz, z)
    return abs_r / (f_norm + EPS)


class SolverStatus(enum.IntEnum):
    """Per-sample outcome of a solve (stored as int codes in ``Solution.status``)."""

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    NONFINITE = 3


class SolverError(DeqloopError, RuntimeError):
    """Raised by ``solve(..., throw=True)`` when some samples did not converge."""

    def __init__(self, message: str, solution: "Solution"):
        super().__init__(message)
        self.solution = solution


@dataclass
class BackwardStats:
    """Convergence of the adjoint (backward) solve of implicit differentiation.

    Filled in when the backward pass runs; ``None`` fields mean it has not run yet.
    """

    converged: torch.Tensor | None = None  # (B,) bool
    residual: torch.Tensor | None = None  # (B,) float32 relative residual of gᵀ = gᵀJ + vᵀ
    iterations: torch.Tensor | None = None  # (B,)
    fallback: torch.Tensor | None = None  # (B,) bool: took the Jacobian-free gradient (Implicit(fallback="jfb"))
    nfe: int = 0  # vector-Jacobian products evaluated
    calls: int = 0  # how many backward passes ran through this solution

    @property
    def ok(self) -> bool | None:
        return None if self.converged is None else bool(self.converged.all())

    def record(self, solution: "Solution") -> None:
        """Take in one backward solve's result (the latest solve's per-sample numbers; totals add up)."""
        self.converged, self.residual, self.iterations = solution.converged, solution.residual, solution.iterations
        self.nfe += solution.nfe
        self.calls += 1


@dataclass
class Solution:
    """Result of :func:`deqloop.solve`.

    Attributes:
        z: ``(B, ...)`` best iterate per sample (smallest residual ‖f(z) − z‖ seen); for a state
            that is a tuple, list or dict of tensors, that structure.
        converged: ``(B,)`` bool, ``‖f(z) − z‖ ≤ atol + rtol·‖f(z)‖`` reached.
        residual: ``(B,)`` float32 relative residual ``‖f(z) − z‖ / (‖f(z)‖ + ε)`` at ``z``.
        abs_residual: ``(B,)`` float32 ``‖f(z) − z‖`` at ``z``.
        iterations: ``(B,)`` int64 function evaluations each sample needed (adaptive compute).
        nfe: number of calls of ``f`` (each on the active part of the batch).
        status: ``(B,)`` int64 codes of :class:`SolverStatus`.
        sample_evals: sum over calls of the number of samples evaluated; ``nfe × B`` when no
            compute was saved by freezing converged samples.
        trace: optional ``(T, B)`` float32 relative residual per iteration (frozen samples repeat
            their last value).
        method: name of the method that produced it.
        backward: statistics of the implicit backward solve: an empty record, replaced by the
            :class:`~deqloop.adjoint.Implicit` mode's own when it attaches its gradient.
    """

    z: Any  # a tensor, or the tree of tensors the state was given as
    converged: torch.Tensor
    residual: torch.Tensor
    abs_residual: torch.Tensor
    iterations: torch.Tensor
    nfe: int
    status: torch.Tensor
    sample_evals: int = 0
    trace: torch.Tensor | None = None
    method: str = ""
    backward: BackwardStats = field(default_factory=BackwardStats)

    @property
    def batch_size(self) -> int:
        return int(self.converged.shape[0])

    def failures(self) -> dict[int, str]:
        """Map sample index → status name, for samples that did not converge."""
        status = self.status.tolist()
        return {i: SolverStatus(s).name.lower() for i, s in enumerate(status) if s != SolverStatus.CONVERGED}

    def summary(self) -> dict[str, Any]:
        """Plain-Python statistics (JSON-serializable)."""
        counts = {s.name.lower(): int((self.status == s).sum()) for s in SolverStatus}
        return {
            "method": self.method,
            "batch": self.batch_size,
            "converged_fraction": float(self.converged.float().mean()),
            "residual_max": float(self.residual.max()),
            "residual_mean": float(self.residual.mean()),
            "iterations_mean": float(self.iterations.float().mean()),
            "iterations_max": int(self.iterations.max()),
            "nfe": self.nfe,
            "sample_evals": self.sample_evals,
            "status": counts,
        }

    def raise_on_failure(self) -> None:
        """Raise :class:`SolverError` naming the samples that failed and why."""
        failed = self.failures()
        if not failed:
            return
        groups: dict[str, list[int]] = {}
        for i, why in failed.items():
            groups.setdefault(why, []).append(i)
        parts = []
        for why, idx in groups.items():
            shown = ", ".join(map(str, idx[:10])) + (", ..." if len(idx) > 10 else "")
            parts.append(f"{len(idx)} {why} (samples {shown})")
        worst = float(self.residual.max())
        raise SolverError(
            f"{self.method or 'solver'}: {len(failed)} of {self.batch_size} samples did not converge: "
            + "; ".join(parts)
            + f"; largest relative residual {worst:.3g}",
            self,
        )
