"""Norms of the loop map's Jacobian at a batch of states: σ_max(J), the largest singular value,
and ‖(I − J)⁻¹‖₂, the resolvent norm that bounds how much the fixed point moves per unit change of
the map (its input sensitivity and its backward solve's conditioning).

    sigma_max(jac).value            # (B,) largest singular value of J
    resolvent_norm(jac).value       # (B,) ‖(I − J)⁻¹‖₂

``jac`` is a :class:`~deqloop.analysis.jacobian.LoopJacobian`; both are matrix-free Krylov–Schur
iterations on its batched products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deqloop.validate import choice

from deqloop.analysis.gmres import gmres
from deqloop.analysis.jacobian import LoopJacobian, random_start
from deqloop.analysis.krylov import krylov_schur

__all__ = ["NormEstimate", "RESOLVENT_METHODS", "resolvent_norm", "sigma_max"]

RESOLVENT_METHODS = ("normal", "inverse")


@dataclass
class NormEstimate:
    """A per-example matrix 2-norm, from the leading eigenvalue of a symmetric operator.

    Attributes:
        value: ``(B,)`` float64 the norm.
        converged: ``(B,)`` bool, the eigenpair behind it met its tolerance (and, for the
            resolvent, every inner linear solve converged).
        residual: ``(B,)`` float64 relative residual of that eigenpair.
        matvecs: ``(B,)`` int64 Jacobian products (JVPs and VJPs) spent per example.
        inner_residual: ``(B,)`` float64 worst relative residual of the inner linear solves
            (resolvent only; zeros otherwise).
    """

    value: Tensor
    converged: Tensor
    residual: Tensor
    matvecs: Tensor
    inner_residual: Tensor


def sigma_max(jac: LoopJacobian, *, ncv: int = 20, tol: float = 1e-6, maxiter: int = 100, seed: int = 0) -> NormEstimate:
    """Largest singular value of each example's ``J``: √λ_max(JᵀJ) by Krylov–Schur."""
    gen = torch.Generator().manual_seed(seed)
    v0 = random_start((jac.batch, jac.dim), gen, jac.dtype, jac.device)
    est = krylov_schur(jac.operator("JTJ"), v0, nev=1, ncv=ncv, tol=tol, maxiter=maxiter, generator=gen)
    lam = est.eigenvalues[:, 0].real.clamp_min(0)
    return NormEstimate(
        value=lam.sqrt(),
        converged=est.converged,
        residual=est.residual,
        matvecs=2 * est.matvecs,
        inner_residual=torch.zeros(jac.batch, dtype=torch.float64),
    )


class _InverseGram:
    """``y ↦ (I − J)⁻¹ (I − J)⁻ᵀ y`` by two GMRES solves; records inner cost and accuracy."""

    def __init__(self, jac: LoopJacobian, rows: Tensor, stats: dict[str, Tensor], linear: dict):
        self.jac, self.rows, self.stats, self.linear = jac, rows, stats, linear

    def __call__(self, y: Tensor) -> Tensor:
        u = gmres(self.jac.operator("I-JT"), y, **self.linear)
        x = gmres(self.jac.operator("I-J"), u.x, **self.linear)
        st, rows = self.stats, self.rows
        st["matvecs"][rows] += u.matvecs + x.matvecs
        st["inner"][rows] = torch.maximum(st["inner"][rows], torch.maximum(u.residual, x.residual))
        st["ok"][rows] &= u.converged & x.converged
        return x.x

    def select(self, index: Tensor) -> _InverseGram:
        return _InverseGram(self.jac.select(index), self.rows[index.cpu()], self.stats, self.linear)


def resolvent_norm(
    jac: LoopJacobian,
    *,
    method: str = "normal",
    ncv: int = 20,
    tol: float = 1e-6,
    maxiter: int = 20,
    linear_rtol: float = 1e-8,
    linear_restart: int = 30,
    linear_maxiter: int = 10,
    seed: int = 0,
) -> NormEstimate:
    """‖(I − J)⁻¹‖₂ = 1 / σ_min(I − J) per example.

    It measures how strongly the implicit backward pass (and the implicit function theorem)
    amplify their right-hand sides; it is infinite when 1 is an eigenvalue of J. Methods
    (``RESOLVENT_METHODS``), both Krylov–Schur with ``ncv``, ``tol``, ``maxiter``:

    * ``"normal"`` — the smallest eigenvalue of ``(I − J)ᵀ(I − J)`` (one JVP and one VJP per
      product, no inner solves). Cheap, but squaring the condition number limits it: an
      eigenvalue below about ``eps·σ_max(I − J)²`` of the dtype is not resolved (then it stays
      unconverged and the value is a lower bound, possibly ``inf``).
    * ``"inverse"`` — the largest eigenvalue of ``(I − J)⁻¹(I − J)⁻ᵀ``, each product being two
      GMRES solves (``linear_*``) with ``I − Jᵀ`` and then ``I − J``. Accurate for ill-conditioned
      ``I − J`` (the eigen tolerance cannot beat the inner one) but far more expensive.
    """
    choice("resolvent method", method, RESOLVENT_METHODS)
    gen = torch.Generator().manual_seed(seed)
    B = jac.batch
    if method == "normal":
        v0 = random_start((B, jac.dim), gen, jac.dtype, jac.device)
        est = krylov_schur(jac.operator("(I-J)T(I-J)"), v0, nev=1, ncv=ncv, tol=tol, maxiter=maxiter,
                           generator=gen, which="SM")
        mu = est.eigenvalues[:, 0].real
        value = torch.where(mu > 0, mu.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.full_like(mu, float("inf")))
        return NormEstimate(
            value=value,
            converged=est.converged & (mu > 0),
            residual=est.residual,
            matvecs=2 * est.matvecs,
            inner_residual=torch.zeros(B, dtype=torch.float64),
        )
    stats = {
        "matvecs": torch.zeros(B, dtype=torch.long),
        "inner": torch.zeros(B, dtype=torch.float64),
        "ok": torch.ones(B, dtype=torch.bool),
    }
    linear = dict(rtol=linear_rtol, restart=linear_restart, maxiter=linear_maxiter)
    op = _InverseGram(jac, torch.arange(B), stats, linear)
    v0 = random_start((B, jac.dim), gen, jac.dtype, jac.device)
    est = krylov_schur(op, v0, nev=1, ncv=ncv, tol=tol, maxiter=maxiter, generator=gen)
    mu = est.eigenvalues[:, 0].real.clamp_min(0)
    return NormEstimate(
        value=mu.sqrt(),
        converged=est.converged & stats["ok"],
        residual=est.residual,
        matvecs=stats["matvecs"],
        inner_residual=stats["inner"],
    )
