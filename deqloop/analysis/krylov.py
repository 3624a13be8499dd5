"""Batched Krylov methods for block-diagonal operators: one small n×n problem per example.

An *operator* maps a batch of vectors ``(b, n)`` to ``(b, n)``, row i by its own matrix A_i (the
loop's Jacobian mixes tokens within an example but never across examples). One call therefore
gives every example's product at once, and the methods here run all examples in lockstep, each
with its own convergence test:

* :func:`krylov_schur` — leading eigenvalues (largest or smallest modulus) by the Krylov–Schur
  method (Stewart 2002), the restarted Arnoldi iteration ARPACK's implicit restart is equivalent
  to. It is the library's one eigenvalue estimator: ρ(∂f/∂z) for ``deqloop analyze``, the
  training-time stability monitor and :func:`deqloop.tools.spectral_radius`, and σ_max and
  ‖(I − J)⁻¹‖ (:mod:`deqloop.analysis.norms`). Its result carries the vectors to warm-start the
  next call from (the monitor's estimate every few training steps starts from the last one).
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

__all__ = ["BatchedOperator", "EigenEstimate", "krylov_schur", "restrict", "warm_start"]


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
        method: which method produced each example's answer (``"krylov"``, ``"arpack"``,
            ``"arpack→krylov"``).
        vectors: ``(B, n, k)`` orthonormal columns spanning the wanted eigenvectors' real and
            imaginary parts (zero columns where fewer were found): the ``start`` that warm-starts
            the next estimate of a nearby operator.
    """

    eigenvalues: Tensor
    converged: Tensor
    residual: Tensor
    matvecs: Tensor
    method: list[str]
    vectors: Tensor

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


def _ritz(Hb: np.ndarray, rb: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz values of a stack ``Hb`` ``(g, s, s)``, wanted ones first (by decreasing modulus for
    ``"LM"``, increasing for ``"SM"``), the residual norms ``|rbᵀ y|`` ``(g, s)`` of their pairs
    (``rb`` ``(g, s)``) and the unit vectors ``y`` ``(g, s, s)``."""
    w, Y = np.linalg.eig(Hb)
    w, Y = w.astype(np.complex128), Y.astype(np.complex128)
    order = np.argsort(-np.abs(w) if which == "LM" else np.abs(w), axis=1, kind="stable")
    w, Y = np.take_along_axis(w, order, 1), np.take_along_axis(Y, order[:, None, :], 2)
    Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    return w, np.abs(np.einsum("gs,gsk->gk", rb, Y)), Y


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


def real_basis(Y: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` orthonormal columns spanning the real and imaginary parts of the first ``k``
    (complex) eigenvectors ``Y`` ``(n, ≥k)`` (a conjugate pair gives its real and imaginary part
    once); zero columns beyond the rank."""
    n = Y.shape[0]
    cols = []
    for y in Y[:, :k].T:
        cols.append(y.real)
        if np.abs(y.imag).max() > 1e-12 * np.abs(y).max():
            cols.append(y.imag)
    out = np.zeros((n, k))
    if not cols:
        return out
    Q, R = np.linalg.qr(np.stack(cols, axis=1))
    d = np.abs(np.diag(R))
    keep = np.flatnonzero(d > 1e-10 * max(d.max(), np.finfo(float).tiny))[:k]
    out[:, : len(keep)] = Q[:, keep]
    return out


def warm_start(vectors: Tensor, generator: torch.Generator | None = None, mix: float = 1e-2) -> Tensor:
    """One start vector per example ``(B, n)`` from a previous estimate's ``vectors`` ``(B, n, k)``:
    their sum (a vector in the previous leading invariant subspace, touching every wanted
    direction) plus a random part of relative size ``mix``, so that no direction is missing from the
    start (an eigenvalue that overtakes the previous leading ones is found as the iteration
    amplifies its component). An all-zero ``vectors`` row gives a random start."""
    if vectors.dim() != 3:
        raise ValueError(f"warm-start vectors must be (B, n, k), got shape {tuple(vectors.shape)}")
    number("mix", mix, low=0, low_open=True)
    B, n, _ = vectors.shape
    where = generator.device if generator is not None else vectors.device
    r = torch.randn(B, n, dtype=torch.float64, device=where, generator=generator).to(vectors)
    v = _unit(vectors.sum(dim=2))
    return v + mix * _unit(r)


def krylov_schur(
    op: BatchedOperator,
    start: Tensor,
    *,
    nev: int = 6,
    ncv: int = 20,
    tol: float = 1e-6,
    maxiter: int = 100,
    max_matvecs: int | None = None,
    generator: torch.Generator | None = None,
    which: str = "LM",
) -> EigenEstimate:
    """The ``nev`` eigenvalues of largest (``which="LM"``) or smallest (``"SM"``) modulus of every
    example's operator.

    Each example keeps a Krylov–Schur decomposition ``A V = V S + v bᵀ`` of size up to ``ncv``,
    extended by one Arnoldi step (one batched ``op`` call for all examples) at a time. After each
    step from ``nev + 1`` columns on, the eigenvalues of ``S`` (Ritz values) are taken, and an
    example has converged when its leading Ritz pair has ``‖A y − θ y‖ ≤ tol·|θ|`` and, before the
    basis is full, θ has moved by at most ``tol·|θ|`` since the previous step (a non-normal
    operator's θ can be far off at a small residual); it then leaves the batch. A full
    decomposition restarts by keeping the Schur vectors of the wanted Ritz values (complex pairs
    are never split). The Ritz values of all examples with a basis of the same size are one
    batched eigenproblem. After an exact invariant subspace (breakdown) the iteration
    goes on from a random direction, and convergence is judged only when the basis is full.

    Args:
        op: batched operator ``(b, n) → (b, n)``.
        start: ``(B, n)`` start vectors (need not be normalized), or ``(B, n, k)`` a previous
            result's ``vectors``: a warm start (:func:`warm_start`), which reaches the tolerance in
            fewer products when the operator has changed little since.
        nev: eigenvalues to return (the leading one decides convergence).
        ncv: Krylov dimension (``> nev``; capped at ``n``).
        tol: relative residual of the leading Ritz pair.
        maxiter: restart cycles at most.
        max_matvecs: products per example at most (``None``: no limit but ``maxiter``); an example
            that spends them stops with its current estimate, unconverged unless within ``tol``.
        generator: random vectors (a warm start's random part; a fresh direction after a
            breakdown).
        which: ``"LM"`` largest modulus; ``"SM"`` smallest modulus, which Krylov methods find
            reliably only at the edge of a real spectrum (e.g. the bottom of a symmetric positive
            semi-definite operator's).
    """
    integer("nev", nev, 1)
    integer("ncv", ncv, 2)
    integer("maxiter", maxiter, 1)
    if max_matvecs is not None:
        integer("max_matvecs", max_matvecs, 1)
    tol = _check_tol("tol", tol)
    if ncv <= nev:
        raise ValueError(f"ncv ({ncv}) must exceed nev ({nev})")
    if which not in ("LM", "SM"):
        raise ValueError(f"which must be 'LM' or 'SM', got {which!r}")
    _linalg()  # the restarts' Schur forms: a missing extra is named before any work
    if start.dim() == 3:
        start = warm_start(start, generator)
    elif start.dim() != 2:
        raise ValueError(f"start must be (B, n) vectors or (B, n, k) warm-start vectors, got shape {tuple(start.shape)}")
    B, n = start.shape
    dtype, device = start.dtype, start.device
    m = min(ncv, n)
    nev_out = nev
    nev = min(nev, m)
    target = min(m - 1, max(nev + 1, (m + nev) // 2))
    check_from = min(m, nev + 1)
    eps = torch.finfo(dtype).eps

    vals = np.full((B, nev_out), np.nan + 1j * np.nan, dtype=np.complex128)
    conv = np.zeros(B, dtype=bool)
    res = np.full(B, np.inf)
    matvecs = np.zeros(B, dtype=np.int64)
    vectors = torch.zeros(B, n, nev_out, dtype=dtype, device=device)

    rows = np.arange(B)  # original index of each active example
    A = op
    V = torch.zeros(B, m + 1, n, dtype=dtype, device=device)  # (b, m+1, n) basis, zero beyond use
    V[:, 0] = _unit(start)
    H = np.zeros((B, m + 1, m))  # (b, m+1, m) Rayleigh quotient S on top, bᵀ in the row below
    size = np.zeros(B, dtype=np.int64)  # columns of the decomposition; the next column to expand
    cycle = np.zeros(B, dtype=np.int64)  # restarts so far
    broke = np.zeros(B, dtype=bool)  # a breakdown in this cycle: judged only when the basis is full
    last = np.full(B, np.nan, dtype=np.complex128)  # the leading Ritz value at the last check

    while len(rows):
        b = len(rows)
        ar = torch.arange(b, device=device)
        col = torch.as_tensor(size, device=device)
        w = A(V[ar, col])  # (b, n)
        matvecs[rows] += 1
        w0 = w.norm(dim=1)
        w, h = _orthogonalize(V, w)
        beta = w.norm(dim=1)
        brk = beta <= 10 * eps * w0
        if bool(brk.any()):  # invariant subspace: continue from a fresh orthogonal direction
            # drawn where the generator lives (the callers' is a CPU one), then moved
            where = generator.device if generator is not None else device
            r = torch.randn(b, n, dtype=dtype, device=where, generator=generator).to(device)
            r, _ = _orthogonalize(V, r)
            rn = r.norm(dim=1, keepdim=True)
            r = torch.where(rn > 1e-3, r / rn.clamp_min(eps), torch.zeros_like(r))
            w = torch.where(brk[:, None], r, w / beta[:, None].clamp_min(torch.finfo(dtype).tiny))
            beta = torch.where(brk, torch.zeros_like(beta), beta)
            broke |= brk.cpu().numpy()
        else:
            w = w / beta[:, None]
        V[ar, col + 1] = w
        H[np.arange(b), :, size] = h.double().cpu().numpy()
        H[np.arange(b), size + 1, size] = beta.double().cpu().numpy()
        size += 1

        finished = np.zeros(b, dtype=bool)
        restarted = []
        P = np.zeros((b, m + 1, m + 1))  # restart map of the restarted rows: new basis = Pᵀ · old basis
        full = size == m
        spent = np.zeros(b, dtype=bool) if max_matvecs is None else matvecs[rows] >= max_matvecs
        check = np.flatnonzero(full | spent | ((size >= check_from) & ~broke))
        ritz = {}
        for mb in np.unique(size[check]):  # one batched eigenproblem per basis size
            group = check[size[check] == mb]
            w, rr, Y = _ritz(H[group, :mb, :mb], H[group, mb, :mb], which)
            ritz.update({int(i): (w[j], rr[j], Y[j]) for j, i in enumerate(group)})
        for i in check:
            mb, g = int(size[i]), rows[i]
            Hb, rb = H[i, :mb, :mb].copy(), H[i, mb, :mb].copy()
            w, rr, Y = ritz[int(i)]
            k = min(nev, mb)
            vals[g] = np.nan + 1j * np.nan
            vals[g, :k] = w[:k]
            lead = max(abs(w[0]), np.finfo(float).tiny)
            res[g] = rr[0] / lead
            # before the basis is full, the leading Ritz value must also have settled since the last
            # step: a small residual alone can stop early at an inaccurate θ of a non-normal operator
            settled = full[i] or abs(w[0] - last[g]) <= tol * lead
            conv[g] = rr[0] <= tol * lead and settled
            last[g] = w[0]
            if not (conv[g] or spent[i] or full[i]):
                continue
            s = _keep_count(np.abs(w), max(1, min(target, mb - 1)))
            sdim = 0
            if not (conv[g] or spent[i] or cycle[i] == maxiter - 1 or s >= mb):
                thr = 0.5 * (abs(w[s - 1]) + abs(w[s]))
                keep = (lambda re, im: np.hypot(re, im) > thr) if which == "LM" else (lambda re, im: np.hypot(re, im) < thr)
                T, Z, sdim = _linalg().schur(Hb, output="real", sort=keep)
            if not 0 < sdim < mb:  # converged, out of products or restarts, or nothing to restart with
                finished[i] = True
                basis = torch.from_numpy(real_basis(Y, min(nev_out, mb))).to(dtype=dtype, device=device)
                vectors[g, :, : basis.shape[1]] = V[i, :mb].T @ basis
                continue
            Q = Z[:, :sdim]
            H[i] = 0.0
            H[i, :sdim, :sdim] = T[:sdim, :sdim]
            H[i, sdim, :sdim] = rb @ Q
            P[i, :mb, :sdim] = Q
            P[i, mb, sdim] = 1.0
            size[i], cycle[i], broke[i] = sdim, cycle[i] + 1, False
            restarted.append(i)
        if restarted:
            idx = torch.as_tensor(restarted, device=device)
            Pt = torch.from_numpy(P[restarted]).to(device=device, dtype=dtype).transpose(1, 2)
            V[idx] = torch.bmm(Pt, V[idx])  # (r, m+1, n)
        if finished.any():
            keep = np.flatnonzero(~finished)
            index = torch.as_tensor(keep, device=device)
            if len(keep):
                A = restrict(A, index, b)
            V, H, size, cycle, broke, rows = V[index], H[keep], size[keep], cycle[keep], broke[keep], rows[keep]

    return EigenEstimate(
        eigenvalues=torch.from_numpy(vals),
        converged=torch.from_numpy(conv),
        residual=torch.from_numpy(res),
        matvecs=torch.from_numpy(matvecs),
        method=["krylov"] * B,
        vectors=vectors,
    )
