"""How the fixed point moves with the input.

* :func:`input_sensitivity` — ``‖∂z*/∂e · v‖`` for unit directions v, by the implicit function
  theorem: ``∂z*/∂e · v = (I − J)⁻¹ J_e v`` (one batched GMRES solve per direction).
* :func:`local_smoothness` — the finite version: ``‖z*(e + Δe) − z*(e)‖ / ‖Δe‖`` for a small
  perturbation ``Δe``, both fixed points solved again to a tight tolerance, either from the fixed
  point found before (``start="fixed_point"``: how z* moves with the map) or each from its own
  input, z₀ = e and z₀ = e + Δe (``start="input"``: the paper's models start at z₀ = e for every
  recall mode, so a recall-free block, which never sees e, still depends on it through z₀).

Directions are per example, in the flattened embedding space of dimension ``n = N·D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deqloop.analysis.jacobian import LoopJacobian
from deqloop.analysis.gmres import gmres
from deqloop.solvers import DEFAULT_SOLVER, BatchedMap, solve

__all__ = ["STARTS", "Sensitivity", "Smoothness", "input_sensitivity", "local_smoothness", "unit_directions"]

STARTS = ("fixed_point", "input")


def unit_directions(batch: int, count: int, dim: int, generator: torch.Generator) -> Tensor:
    """``(batch, count, dim)`` float64 directions uniform on the unit sphere."""
    v = torch.randn(batch, count, dim, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=2, keepdim=True)


@dataclass
class Sensitivity:
    """``‖∂z*/∂e · v_j‖`` per example and direction.

    Attributes:
        norms: ``(B, d)`` float64.
        converged: ``(B, d)`` bool, the GMRES solve of ``(I − J) x = J_e v_j`` converged.
        residual: ``(B, d)`` float64 its relative residual.
        matvecs: ``(B,)`` int64 Jacobian products spent per example.
    """

    norms: Tensor
    converged: Tensor
    residual: Tensor
    matvecs: Tensor

    @property
    def rms(self) -> Tensor:
        """``(B,)`` root-mean-square over directions: an estimate of ‖∂z*/∂e‖_F / √n."""
        return self.norms.pow(2).mean(dim=1).sqrt()


def input_sensitivity(
    jac: LoopJacobian,
    directions: int | Tensor = 4,
    *,
    rtol: float = 1e-6,
    restart: int = 30,
    maxiter: int = 10,
    seed: int = 0,
) -> Sensitivity:
    """``‖(I − J)⁻¹ J_e v‖`` for ``directions`` random unit v per example (or the given ``(B, d, n)``)."""
    B, n = jac.batch, jac.dim
    if isinstance(directions, Tensor):
        if directions.dim() != 3 or directions.shape[0] != B or directions.shape[2] != n:
            raise ValueError(f"directions must have shape (B, d, n) = ({B}, d, {n}), got {tuple(directions.shape)}")
        V = directions
    else:
        if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
            raise ValueError(f"directions must be a positive integer or a (B, d, n) tensor, got {directions!r}")
        V = unit_directions(B, directions, n, torch.Generator().manual_seed(seed))
    d = V.shape[1]
    norms = torch.zeros(B, d, dtype=torch.float64)
    conv = torch.zeros(B, d, dtype=torch.bool)
    res = torch.zeros(B, d, dtype=torch.float64)
    matvecs = torch.zeros(B, dtype=torch.long)
    op = jac.operator("I-J")
    for j in range(d):
        v = V[:, j].to(dtype=jac.dtype, device=jac.device)
        rhs = jac.jvp_e(v)
        sol = gmres(op, rhs, rtol=rtol, restart=restart, maxiter=maxiter)
        norms[:, j] = sol.x.double().norm(dim=1).cpu()
        conv[:, j] = sol.converged
        res[:, j] = sol.residual
        matvecs += sol.matvecs + 1
    return Sensitivity(norms=norms, converged=conv, residual=res, matvecs=matvecs)


@dataclass
class Smoothness:
    """``‖Δz*‖ / ‖Δe‖`` per example for one small input perturbation.

    Attributes:
        ratio: ``(B,)`` float64 (NaN where a solve did not converge).
        converged: ``(B,)`` bool, both the base and the perturbed solve converged.
    """

    ratio: Tensor
    converged: Tensor


def local_smoothness(
    model,
    e: Tensor,
    z: Tensor,
    *,
    eps: float = 1e-2,
    direction: Tensor | None = None,
    seed: int = 0,
    start: str = "fixed_point",
    solver: str = DEFAULT_SOLVER,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int = 200,
    solver_options: dict[str, Any] | None = None,
) -> Smoothness:
    """Perturb each embedding by ``Δe = eps·‖e_b‖·u_b`` (``u_b`` a unit ``direction`` ``(B, n)``,
    random by default) and compare the fixed points.

    The base and the perturbed problem are solved with ``rtol`` in one batched solve, so the
    solver's own error does not enter the ratio (choose ``rtol`` well below ``eps``), from ``z``
    (the fixed point found before) with ``start="fixed_point"``, or from z₀ = e and z₀ = e + Δe
    with ``start="input"``. Where the map ignores e (recall ``"none"``) the first gives 0 by
    construction, and the second says whether z* is locally constant in e (0) or follows it (a
    continuum of fixed points: J ≈ I gives 1).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    B = e.shape[0]
    n = e[0].numel()
    if direction is None:
        direction = unit_directions(B, 1, n, torch.Generator().manual_seed(seed))[:, 0]
    if tuple(direction.shape) != (B, n):
        raise ValueError(f"direction must have shape (B, n) = ({B}, {n}), got {tuple(direction.shape)}")
    u = direction.double() / direction.double().norm(dim=1, keepdim=True)
    de = (eps * e.reshape(B, -1).double().norm(dim=1, keepdim=True).cpu() * u).to(dtype=e.dtype, device=e.device)
    de = de.reshape(e.shape)
    E = torch.cat([e, e + de])  # (2B, *grid, D)
    Z0 = (torch.cat([z, z]) if start == "fixed_point" else E).detach()
    with torch.no_grad():
        sol = solve(BatchedMap(model.step, E), Z0, solver, rtol=rtol, atol=atol, max_iter=max_iter,
                    **(solver_options or {}))
    zs = sol.z.reshape(2 * B, -1).double()
    dz = (zs[B:] - zs[:B]).norm(dim=1).cpu()
    dnorm = de.reshape(B, -1).double().norm(dim=1).cpu()
    ok = (sol.converged[:B] & sol.converged[B:]).cpu()
    ratio = torch.where(ok & (dnorm > 0), dz / dnorm.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(dz, float("nan")))
    return Smoothness(ratio=ratio, converged=ok)
