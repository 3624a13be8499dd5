"""Batched Krylov methods for block-diagonal operators: one small n×n problem per example.

An *operator* maps a batch of vectors ``(b, n)`` to ``(b, n)``, row i by its own matrix A_i (the
loop's Jacobian mixes tokens within an example but never across examples). One call therefore
gives every example's product at once, and the methods here run all examples in lockstep, each
with its own convergence test:

* :func:`krylov_schur` — leading eigenvalues (largest modulus) by the Krylov–Schur method
  (Stewart 2002), the restarted Arnoldi iteration ARPACK's implicit restart is equivalent to.
* :func:`block_power` — subspace (block power) iteration with Rayleigh–Ritz; slow but simple, the
  fallback when ARPACK does not converge. :func:`subspace_radius` is the same step
  (:func:`ritz_step`) a fixed number of times, warm-startable (the training-time monitor's).
* :func:`~deqloop.analysis.gmres.gmres` (its own module) — restarted GMRES for A x = b.

An operator may have a ``select(index)`` method returning the same operator for the rows
``index`` of its batch; finished examples are then no longer evaluated. Otherwise they are
masked out (evaluated on zeros). The small dense problems (Hessenberg matrices, their
eigenvalues and Schur forms) are solved in float64 on the host; basis vectors keep the
operator's dtype and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from deqloop.extras import require
from deqloop.validate import integer, number

__all__ = [
    "BatchedOperator",
    "EigenEstimate",
    "block_power",
    "krylov_schur",
    "restrict",
    "ritz_step",
    "subspace_radius",
]


class BatchedOperator(Protocol):
    """``(b, n) → (b, n)``, row by row (block diagonal); optionally ``select(index)``."""

    def __call__(self, v: Tensor) -> Tensor: ...


class _Rows:
    """The rows ``index`` of an operator without ``select``: evaluated inside a zero-padded batch."""

    def __init__(self, op: Callable[[Tensor], Tensor], index: Tensor, batch: int):
        self.op, self.index, self.batch = op, index, batch

    def __call__(self, v: Tensor) -> Tensor:
        full = v.new_zeros(self.batch, v.shape[1])
        full[self.index] = v
        return self.op(full)[self.index]

    def select(self, index: Tensor) -> _Rows:
        return _Rows(self.op, self.index[index], self.batch)


def restrict(op: BatchedOperator, index: Tensor, batch: int) -> BatchedOperator:
    """``op`` on the rows ``index`` (of a batch of ``batch`` rows)."""
    select = getattr(op, "select", None)
    if callable(select):
        return select(index)
    return _Rows(op, index, batch)


@dataclass
class EigenEstimate:
    """Leading eigenvalues of each example's operator.

    Attributes:
        eigenvalues: ``(B, k)`` complex128, wanted ones first: by decreasing modulus (or increasing,
            for ``which="SM"``); NaN where fewer were found.
        converged: ``(B,)`` bool, the leading pair met the tolerance.
        residual: ``(B,)`` float64 ``‖A y − θ y‖ / |θ|`` of the leading Ritz pair (‖y‖ = 1).
        matvecs: ``(B,)`` int64 operator applications spent on each example.
        method: which method produced each example's answer (``"krylov"``, ``"arpack"``, ...).
    """

    eigenvalues: Tensor
    converged: Tensor
    residual: Tensor
    matvecs: Tensor
    method: list[str]

    @property
    def radius(self) -> Tensor:
        """``(B,)`` float64 modulus of the leading eigenvalue (the spectral radius)."""
        return self.eigenvalues[:, 0].abs()


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _orthogonalize(V: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Classical Gram–Schmidt twice: ``w`` minus its projection on the rows of ``V`` ``(b, k, n)``."""
    h = torch.bmm(V, w.unsqueeze(2)).squeeze(2)  # (b, k)
    w = w - torch.bmm(V.transpose(1, 2), h.unsqueeze(2)).squeeze(2)
    h2 = torch.bmm(V, w.unsqueeze(2)).squeeze(2)
    w = w - torch.bmm(V.transpose(1, 2), h2.unsqueeze(2)).squeeze(2)
    return w, h + h2


def _linalg():
    """``scipy.linalg`` (the ``analysis`` extra), for the small dense eigen- and Schur problems."""
    return require("scipy.linalg", "krylov_schur (the spectrum of deqloop analyze)")


def _check_tol(name: str, value: float) -> float:
    return number(name, value, low=0, high=1, high_open=True)


# ----------------------------------------------------------------------------------------------
# Eigenvalues: Krylov–Schur


def _ritz(Hb: np.ndarray, rb: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values of ``Hb``, wanted ones first (by decreasing modulus for ``"LM"``, increasing
    for ``"SM"``), and the residual norms ``|rbᵀ y|`` of their pairs."""
    w, Y = _linalg().eig(Hb)
    order = np.argsort(-np.abs(w) if which == "LM" else np.abs(w), kind="stable")
    w, Y = w[order], Y[:, order]
    Y = Y / np.linalg.norm(Y, axis=0, keepdims=True)
    return w, np.abs(rb @ Y)


def _keep_count(mods: np.ndarray, target: int) -> int:
    """How many of the sorted moduli to keep near ``target`` without splitting (near-)equal ones."""
    size = len(mods)
    tie = 1e-10 * max(mods.max(), np.finfo(float).tiny)
    s = target
    while s < size and abs(mods[s - 1] - mods[s]) <= tie:
        s += 1
    if s >= size:
        s = target
        while s > 1 and abs(mods[s - 1] - mods[s]) <= tie:
            s -= 1
    return s


def krylov_schur(
    op: BatchedOperator,
    v0: Tensor,
    *,
    nev: int = 6,
    ncv: int = 20,
    tol: float = 1e-6,
    maxiter: int = 100,
    generator: torch.Generator | None = None,
    which: str = "LM",
) -> EigenEstimate:
    """The ``nev`` eigenvalues of largest (``which="LM"``) or smallest (``"SM"``) modulus of every
    example's operator.

    Each example keeps a Krylov–Schur decomposition ``A V = V S + v bᵀ`` of size up to ``ncv``;
    a cycle extends it by Arnoldi steps (one batched ``op`` call per step for all examples), takes
    the eigenvalues of ``S`` (Ritz values) and, unless converged, restarts by keeping the Schur
    vectors of the wanted Ritz values (complex pairs are never split). An example has
    converged when its leading Ritz pair has ``‖A y − θ y‖ ≤ tol·|θ|``; it then leaves the batch.

    Args:
        op: batched operator ``(b, n) → (b, n)``.
        v0: ``(B, n)`` start vectors (need not be normalized).
        nev: eigenvalues to return (the leading one decides convergence).
        ncv: Krylov dimension (``> nev``; capped at ``n``).
        tol: relative residual of the leading Ritz pair.
        maxiter: restart cycles at most.
        generator: random vectors that replace the basis after an (exact) invariant subspace.
        which: ``"LM"`` largest modulus; ``"SM"`` smallest modulus, which Krylov methods find
            reliably only at the edge of a real spectrum (e.g. the bottom of a symmetric positive
            semi-definite operator's).
    """
    integer("nev", nev, 1)
    integer("ncv", ncv, 2)
    integer("maxiter", maxiter, 1)
    tol = _check_tol("tol", tol)
    if ncv <= nev:
        raise ValueError(f"ncv ({ncv}) must exceed nev ({nev})")
    if which not in ("LM", "SM"):
        raise ValueError(f"which must be 'LM' or 'SM', got {which!r}")
    B, n = v0.shape
    dtype, device = v0.dtype, v0.device
    m = min(ncv, n)
    nev_out = nev
    nev = min(nev, m)
    target = min(m - 1, max(nev + 1, (m + nev) // 2))
    eps = torch.finfo(dtype).eps

    vals = np.full((B, nev_out), np.nan + 1j * np.nan, dtype=np.complex128)
    conv = np.zeros(B, dtype=bool)
    res = np.full(B, np.inf)
    matvecs = np.zeros(B, dtype=np.int64)

    rows = np.arange(B)  # original index of each active example
    A = op
    V = torch.zeros(B, m + 1, n, dtype=dtype, device=device)  # (b, m+1, n) basis, zero beyond use
    V[:, 0] = _unit(v0)
    H = np.zeros((B, m + 1, m))  # (b, m+1, m) Rayleigh quotient S on top, bᵀ in the row below
    start = np.zeros(B, dtype=np.int64)  # kept vectors; the next column to expand

    for cycle in range(maxiter):
        steps = m - int(start.max())
        b = len(rows)
        ar = torch.arange(b, device=device)
        for t in range(steps):
            col = torch.as_tensor(start + t, device=device)
            w = A(V[ar, col])  # (b, n)
            matvecs[rows] += 1
            w0 = w.norm(dim=1)
            w, h = _orthogonalize(V, w)
            beta = w.norm(dim=1)
            broke = beta <= 10 * eps * w0
            if bool(broke.any()):  # invariant subspace: continue from a fresh orthogonal direction
                # drawn where the generator lives (the callers' is a CPU one), then moved
                where = generator.device if generator is not None else device
                r = torch.randn(b, n, dtype=dtype, device=where, generator=generator).to(device)
                r, _ = _orthogonalize(V, r)
                rn = r.norm(dim=1, keepdim=True)
                r = torch.where(rn > 1e-3, r / rn.clamp_min(eps), torch.zeros_like(r))
                w = torch.where(broke[:, None], r, w / beta[:, None].clamp_min(torch.finfo(dtype).tiny))
                beta = torch.where(broke, torch.zeros_like(beta), beta)
            else:
                w = w / beta[:, None]
            V[ar, col + 1] = w
            hc = h.double().cpu().numpy()
            cols = start + t
            H[np.arange(b), :, cols] = hc
            H[np.arange(b), cols + 1, cols] = beta.double().cpu().numpy()

        size = start + steps
        last = cycle == maxiter - 1
        finished = np.zeros(b, dtype=bool)
        P = np.zeros((b, m + 1, m + 1))  # restart map: new basis = Pᵀ · old basis
        H_next = np.zeros_like(H)
        start_next = start.copy()
        for i in range(b):
            mb = int(size[i])
            Hb, rb = H[i, :mb, :mb], H[i, mb, :mb]
            w, rr = _ritz(Hb, rb, which)
            k = min(nev, mb)
            g = rows[i]
            vals[g, :k] = w[:k]
            lead = max(abs(w[0]), np.finfo(float).tiny)
            res[g] = rr[0] / lead
            conv[g] = rr[0] <= tol * lead
            if conv[g] or last:
                finished[i] = True
                continue
            s = _keep_count(np.abs(w), max(1, min(target, mb - 1)))
            if s >= mb:
                finished[i] = True  # nothing left to restart with
                continue
            thr = 0.5 * (abs(w[s - 1]) + abs(w[s]))
            if which == "LM":
                T, Z, sdim = _linalg().schur(Hb, output="real", sort=lambda re, im: np.hypot(re, im) > thr)
            else:
                T, Z, sdim = _linalg().schur(Hb, output="real", sort=lambda re, im: np.hypot(re, im) < thr)
            if not 0 < sdim < mb:
                finished[i] = True
                continue
            Q = Z[:, :sdim]
            H_next[i, :sdim, :sdim] = T[:sdim, :sdim]
            H_next[i, sdim, :sdim] = rb @ Q
            P[i, :mb, :sdim] = Q
            P[i, mb, sdim] = 1.0
            start_next[i] = sdim
        if finished.all():
            break
        Pt = torch.from_numpy(P).to(device=device, dtype=dtype).transpose(1, 2)
        V = torch.bmm(Pt, V)  # (b, m+1, n)
        H, start = H_next, start_next
        if finished.any():
            keep = np.flatnonzero(~finished)
            index = torch.as_tensor(keep, device=device)
            A = restrict(A, index, b)
            V, H, start, rows = V[index], H[keep], start[keep], rows[keep]

    return EigenEstimate(
        eigenvalues=torch.from_numpy(vals),
        converged=torch.from_numpy(conv),
        residual=torch.from_numpy(res),
        matvecs=torch.from_numpy(matvecs),
        method=["krylov"] * B,
    )


# ----------------------------------------------------------------------------------------------
# Eigenvalues: block power iteration


def ritz_step(op: BatchedOperator, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of subspace iteration with Rayleigh–Ritz from the orthonormal basis ``X`` ``(b, n, p)``:
    ``Y = A X``, the eigenvalues ``w`` ``(b, p)`` of ``XᵀY`` (float64, complex) by decreasing modulus,
    and the leading pair's relative residual ``‖A y − θ y‖ / (|θ|‖y‖)`` ``(b,)``. Returns ``(w, residual, Y)``."""
    B, _, p = X.shape
    Y = torch.stack([op(X[:, :, j]) for j in range(p)], dim=2)  # (b, n, p)
    Xd, Yd = X.double(), Y.double()
    w, S = torch.linalg.eig(Xd.transpose(1, 2) @ Yd)  # Ritz values and vectors, (b, p), (b, p, p)
    order = torch.argsort(-w.abs(), dim=1, stable=True)
    w = w.gather(1, order)
    s = S.gather(2, order[:, :1, None].expand(B, p, 1))  # the leading Ritz vector, (b, p, 1)
    y, Ay = Xd.to(s.dtype) @ s, Yd.to(s.dtype) @ s
    theta = w[:, 0]
    tiny = torch.finfo(torch.float64).tiny
    residual = (Ay - theta[:, None, None] * y).norm(dim=(1, 2)) / (theta.abs() * y.norm(dim=(1, 2))).clamp_min(tiny)
    return w, residual, Y


def subspace_radius(op: BatchedOperator, X: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """``iters`` steps of :func:`ritz_step` for the leading eigenvalue of every example's operator from
    the basis ``X`` ``(B, n, p)`` (``p ≥ 2`` follows a complex-conjugate pair), all examples for
    every step: the cheap, warm-startable estimate of the training-time stability monitor.
    Returns ``(radius, residual, basis)``: ``(B,)`` float64 |θ| of the leading Ritz value and its
    relative residual, and the next basis (orthonormalised ``A X``) to warm-start from."""
    integer("iters", iters)
    X = torch.linalg.qr(X).Q
    radius = residual = None
    for _ in range(iters):
        w, residual, Y = ritz_step(op, X)
        radius = w[:, 0].abs()
        X = torch.linalg.qr(Y).Q
    return radius.cpu(), residual.cpu(), X


def block_power(
    op: BatchedOperator,
    X0: Tensor,
    *,
    nev: int = 1,
    tol: float = 1e-6,
    maxiter: int = 1000,
) -> EigenEstimate:
    """Leading eigenvalues by subspace iteration on ``p`` vectors with Rayleigh–Ritz (:func:`ritz_step`).

    ``X0`` is ``(B, n, p)``; ``p ≥ 2`` captures a dominant complex-conjugate pair. Each iteration
    applies ``op`` to the ``p`` columns, takes the eigenvalues of the ``p × p`` projection and
    re-orthonormalizes. It converges at the rate ``|λ_{p+1}| / |λ_1|``; an example stops (and is
    no longer evaluated) when its leading Ritz pair has ``‖A y − θ y‖ ≤ tol·|θ|·‖y‖``.
    """
    integer("nev", nev, 1)
    integer("maxiter", maxiter, 1)
    tol = _check_tol("tol", tol)
    B, n, p = X0.shape
    if nev > p:
        raise ValueError(f"nev ({nev}) must not exceed the block size ({p})")
    device = X0.device
    vals = np.full((B, nev), np.nan + 1j * np.nan, dtype=np.complex128)
    conv = np.zeros(B, dtype=bool)
    res = np.full(B, np.inf)
    matvecs = np.zeros(B, dtype=np.int64)
    rows = np.arange(B)
    A = op
    X = torch.linalg.qr(X0).Q  # (b, n, p)
    for it in range(maxiter):
        w, r, Y = ritz_step(A, X)
        matvecs[rows] += p
        vals[rows] = w[:, :nev].cpu().numpy()
        res[rows] = r.cpu().numpy()
        finished = res[rows] <= tol
        conv[rows] = finished
        if finished.all() or it == maxiter - 1:
            break
        X = torch.linalg.qr(Y).Q
        if finished.any():
            keep = np.flatnonzero(~finished)
            index = torch.as_tensor(keep, device=device)
            A = restrict(A, index, len(rows))
            X, rows = X[index], rows[keep]
    return EigenEstimate(
        eigenvalues=torch.from_numpy(vals),
        converged=torch.from_numpy(conv),
        residual=torch.from_numpy(res),
        matvecs=torch.from_numpy(matvecs),
        method=["power"] * B,
    )
