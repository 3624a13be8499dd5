"""Restarted GMRES for batched block-diagonal operators (see :mod:`deqloop.analysis.krylov`):
one small n×n system A_i x_i = b_i per example, all examples in lockstep, each with its own
convergence test."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from deqloop.analysis.krylov import BatchedOperator, _check_tol, _orthogonalize, restrict
from deqloop.validate import integer

__all__ = ["LinearSolve", "gmres"]


@dataclass
class LinearSolve:
    """Result of :func:`gmres`.

    Attributes:
        x: ``(B, n)`` solution (best found).
        converged: ``(B,)`` bool, ``‖b − A x‖ ≤ atol + rtol·‖b‖``.
        residual: ``(B,)`` float64 true relative residual ``‖b − A x‖ / ‖b‖`` (0 when b = 0).
        matvecs: ``(B,)`` int64 operator applications per example.
    """

    x: Tensor
    converged: Tensor
    residual: Tensor
    matvecs: Tensor



def gmres(
    op: BatchedOperator,
    b: Tensor,
    *,
    rtol: float = 1e-6,
    atol: float = 0.0,
    restart: int = 30,
    maxiter: int = 10,
) -> LinearSolve:
    """Solve ``A_i x_i = b_i`` for every example by GMRES restarted every ``restart`` steps.

    At most ``maxiter`` cycles. An example is done when its true residual (recomputed at the
    start of each cycle) is ``≤ atol + rtol·‖b_i‖``; it then leaves the batch. The returned
    residual is always the true one.
    """
    integer("restart", restart, 1)
    integer("maxiter", maxiter, 1)
    rtol = _check_tol("rtol", rtol)
    if not atol >= 0:
        raise ValueError(f"atol must be ≥ 0, got {atol!r}")
    B, n = b.shape
    dtype, device = b.dtype, b.device
    m = min(restart, n)
    tiny = torch.finfo(dtype).tiny
    x_out = torch.zeros_like(b)
    res_out = torch.zeros(B, dtype=torch.float64)
    conv_out = torch.zeros(B, dtype=torch.bool)
    matvecs = torch.zeros(B, dtype=torch.long)

    rows = torch.arange(B, device=device)
    A = op
    x = torch.zeros_like(b)
    rhs = b
    bnorm = b.norm(dim=1).double()
    goal = atol + rtol * bnorm  # (b,)
    for cycle in range(maxiter + 1):
        if cycle == 0:
            r = rhs
        else:
            r = rhs - A(x)
            matvecs[rows.cpu()] += 1
        rnorm = r.norm(dim=1).double()
        done = rnorm <= goal
        rel = torch.where(bnorm > 0, rnorm / bnorm.clamp_min(tiny), torch.zeros_like(rnorm))
        finish = done | (cycle == maxiter)
        if bool(finish.any()):
            idx = rows[finish].cpu()
            x_out[idx] = x[finish]
            res_out[idx] = rel[finish].cpu()
            conv_out[idx] = done[finish].cpu()
            keep = (~finish).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            A = restrict(A, keep, len(rows))
            rows, x, rhs, r = rows[keep], x[keep], rhs[keep], r[keep]
            rnorm, bnorm, goal = rnorm[keep], bnorm[keep], goal[keep]
        nb = len(rows)
        V = torch.zeros(nb, m + 1, n, dtype=dtype, device=device)
        H = torch.zeros(nb, m + 1, m, dtype=torch.float64)
        V[:, 0] = r / rnorm.to(dtype)[:, None]
        e1 = torch.zeros(nb, m + 1, 1, dtype=torch.float64)
        e1[:, 0, 0] = rnorm.cpu()
        y = None
        for j in range(m):
            w = A(V[:, j])
            matvecs[rows.cpu()] += 1
            w, h = _orthogonalize(V[:, : j + 1], w)
            beta = w.norm(dim=1)
            H[:, : j + 1, j] = h.double().cpu()
            H[:, j + 1, j] = beta.double().cpu()
            V[:, j + 1] = torch.where(beta[:, None] > 0, w / beta[:, None].clamp_min(tiny), torch.zeros_like(w))
            Hj = H[:, : j + 2, : j + 1]
            y = torch.linalg.lstsq(Hj, e1[:, : j + 2]).solution  # (nb, j+1, 1)
            est = (e1[:, : j + 2] - Hj @ y).norm(dim=(1, 2))
            if bool((est <= 0.5 * goal.cpu()).all()):
                break
        k = y.shape[1]
        x = x + torch.bmm(V[:, :k].transpose(1, 2), y.to(device=device, dtype=dtype)).squeeze(2)
    return LinearSolve(x=x_out, converged=conv_out, residual=res_out, matvecs=matvecs)
