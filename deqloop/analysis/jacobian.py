"""The loop map's Jacobians at a batch of states, and the spectral quantities built on them.

``J = ∂f/∂z`` and ``J_e = ∂f/∂e`` at ``(z, e)``, one ``n × n`` block per example
(``n = N·D``): the block mixes tokens within an example, never across examples. Products with
them are matrix-free and batched — one call gives every example's product:

    jac = LoopJacobian.from_model(model, z_star, e)
    jac.jvp(v), jac.vjp(u)          # J v, Jᵀ u         (B, n) → (B, n)
    jac.jvp_e(v), jac.vjp_e(u)      # J_e v, J_eᵀ u
    est = leading_eigenvalues(jac)  # EigenEstimate: .radius (B,) = ρ(J)

(σ_max(J) and ‖(I − J)⁻¹‖₂ are in :mod:`deqloop.analysis.norms`.)

All products come from one autograd graph built at construction. Vector–Jacobian products are
plain backward passes; Jacobian–vector products use the double-backward construction
``J v = ∂/∂u ⟨Jᵀu, v⟩`` (the backward pass is linear in ``u``), which needs no forward-mode AD.
The model's attention runs on its ``"math"`` backend while the graph is built, since the fused
CPU attention kernel is not twice differentiable.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from deqloop.validate import choice

from deqloop.analysis.krylov import EigenEstimate, krylov_schur, real_basis, warm_start

__all__ = [
    "EIG_METHODS",
    "JacobianOperator",
    "LoopJacobian",
    "OPERATOR_KINDS",
    "leading_eigenvalues",
]

EIG_METHODS = ("krylov", "arpack")
OPERATOR_KINDS = ("J", "JT", "JTJ", "I-J", "I-JT", "(I-J)T(I-J)")

Step = Callable[[Tensor, Tensor], Tensor]


class _MathStep:
    """``model.step`` with the math attention backend (twice differentiable)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, z: Tensor, e: Tensor) -> Tensor:
        with self.model.use_attention_backend("math"):
            return self.model.step(z, e)


class LoopJacobian:
    """Batched products with ``J = ∂f/∂z`` and ``J_e = ∂f/∂e`` of ``f = step`` at ``(z, e)``.

    Args:
        step: the loop map ``(z, e) ↦ f(z; e)``, both ``(B, *grid, D)``; it must be twice
            differentiable (use :meth:`from_model` for a :class:`~deqloop.model.LoopedDEQ`).
        z, e: ``(B, *grid, D)`` the state (usually the fixed point) and the embedding.

    Vectors are flattened per example: ``(B, n)`` with ``n = z[0].numel()``.
    """

    def __init__(self, step: Step, z: Tensor, e: Tensor):
        if z.shape != e.shape:
            raise ValueError(f"state {tuple(z.shape)} and embedding {tuple(e.shape)} differ")
        if not z.is_floating_point():
            raise TypeError(f"the state must be floating point, got {z.dtype}")
        self.step = step
        self.z = z.detach()
        self.e = e.detach()
        self.shape = tuple(z.shape)
        with torch.enable_grad():
            self._z_in = self.z.clone().requires_grad_(True)
            self._e_in = self.e.clone().requires_grad_(True)
            self._fz = step(self._z_in, self._e_in)
            if self._fz.shape != z.shape:
                raise ValueError(f"step returned shape {tuple(self._fz.shape)}, expected {self.shape}")
            self._u0 = torch.zeros_like(self._fz, requires_grad=True)
            gz, ge = torch.autograd.grad(
                self._fz, (self._z_in, self._e_in), self._u0, create_graph=True, allow_unused=True
            )
        self._gz = gz if gz is not None and gz.requires_grad else None  # Jᵀ u0, linear in u0
        self._ge = ge if ge is not None and ge.requires_grad else None  # J_eᵀ u0
        self._uses_e = ge is not None

    @classmethod
    def from_model(cls, model, z: Tensor, e: Tensor) -> LoopJacobian:
        """The Jacobians of ``model.step`` (a :class:`~deqloop.model.LoopedDEQ`) at ``(z, e)``, through
        the uncompiled block with the math attention backend (twice differentiable), also when the
        model is compiled."""
        return cls(_MathStep(model), z, e)

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        """Per-example dimension ``n = N·D``."""
        return int(np.prod(self.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.z.dtype

    @property
    def device(self) -> torch.device:
        return self.z.device

    def _grad(self, out: Tensor | None, inp: Tensor, v: Tensor) -> Tensor:
        if v.shape != (self.batch, self.dim):
            raise ValueError(f"expected vectors of shape {(self.batch, self.dim)}, got {tuple(v.shape)}")
        if out is None:
            return torch.zeros_like(v)
        (g,) = torch.autograd.grad(out, inp, v.reshape(self.shape).to(out.dtype), retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if g is None else g.reshape(self.batch, -1).to(v.dtype)

    def jvp(self, v: Tensor) -> Tensor:
        """``J v`` for ``v`` ``(B, n)``."""
        return self._grad(self._gz, self._u0, v)

    def vjp(self, u: Tensor) -> Tensor:
        """``Jᵀ u`` for ``u`` ``(B, n)``."""
        return self._grad(self._fz, self._z_in, u)

    def jvp_e(self, v: Tensor) -> Tensor:
        """``J_e v = ∂f/∂e · v`` (zeros when f does not read e, e.g. ``recall="none"``)."""
        return self._grad(self._ge, self._u0, v)

    def vjp_e(self, u: Tensor) -> Tensor:
        """``J_eᵀ u``."""
        if not self._uses_e:
            return torch.zeros_like(u)
        return self._grad(self._fz, self._e_in, u)

    def select(self, index: Tensor) -> LoopJacobian:
        """The same Jacobians for the examples ``index`` (rebuilds the graph for them)."""
        index = torch.as_tensor(index, device=self.device)
        return LoopJacobian(self.step, self.z[index], self.e[index])

    def operator(self, kind: str) -> JacobianOperator:
        """A batched operator for :mod:`deqloop.analysis.krylov`; ``kind`` in ``OPERATOR_KINDS``."""
        return JacobianOperator(self, kind)


class JacobianOperator:
    """``v ↦ J v``, ``Jᵀ v``, ``JᵀJ v``, ``(I − J) v``, ``(I − Jᵀ) v`` or ``(I − J)ᵀ(I − J) v``
    (``kind`` in ``OPERATOR_KINDS``), batched, selectable."""

    def __init__(self, jac: LoopJacobian, kind: str):
        choice("operator kind", kind, OPERATOR_KINDS)
        self.jac, self.kind = jac, kind

    def __call__(self, v: Tensor) -> Tensor:
        jac, kind = self.jac, self.kind
        if kind == "J":
            return jac.jvp(v)
        if kind == "JT":
            return jac.vjp(v)
        if kind == "JTJ":
            return jac.vjp(jac.jvp(v))
        if kind == "I-J":
            return v - jac.jvp(v)
        if kind == "I-JT":
            return v - jac.vjp(v)
        u = v - jac.jvp(v)
        return u - jac.vjp(u)

    def select(self, index: Tensor) -> JacobianOperator:
        return JacobianOperator(self.jac.select(index), self.kind)


def random_start(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# Eigenvalues of J


def leading_eigenvalues(
    jac: LoopJacobian,
    *,
    method: str = "krylov",
    k: int = 6,
    ncv: int = 20,
    tol: float = 1e-6,
    maxiter: int = 100,
    max_matvecs: int | None = None,
    start: Tensor | None = None,
    seed: int = 0,
) -> EigenEstimate:
    """The ``k`` eigenvalues of largest modulus of each example's ``J``; ``.radius`` is ρ(J).

    Methods (``EIG_METHODS``):

    * ``"krylov"`` — batched Krylov–Schur over all examples at once (:func:`krylov_schur`):
      Krylov dimension ``ncv``, at most ``maxiter`` restarts and ``max_matvecs`` products per
      example, leading Ritz pair residual ``tol``.
    * ``"arpack"`` — ``scipy.sparse.linalg.eigs`` per example (``k``, ``ncv``, ``tol``,
      ``maxiter`` are ARPACK's); examples where ARPACK does not converge fall back to
      ``"krylov"`` (Krylov dimension at least 20, at least 100 restarts).

    ``start``: ``(B, n, k')`` the ``vectors`` of an earlier estimate at a nearby point, a warm start
    (see :func:`~deqloop.analysis.krylov.warm_start`); ``None``: random start vectors drawn from
    ``seed``.
    """
    choice("eigenvalue method", method, EIG_METHODS)
    gen = torch.Generator().manual_seed(seed)
    B, n = jac.batch, jac.dim
    if start is not None and tuple(start.shape[:2]) != (B, n):
        raise ValueError(f"warm-start vectors of shape {tuple(start.shape)} do not fit {B} examples of dimension {n}")
    v0 = random_start((B, n), gen, jac.dtype, jac.device) if start is None else start.to(jac.dtype).to(jac.device)
    if method == "krylov":
        return krylov_schur(jac.operator("J"), v0, nev=k, ncv=ncv, tol=tol, maxiter=maxiter,
                            max_matvecs=max_matvecs, generator=gen)
    return _arpack(jac, v0, k=k, ncv=ncv, tol=tol, maxiter=maxiter, generator=gen)


def _arpack(jac: LoopJacobian, start: Tensor, *, k: int, ncv: int, tol: float, maxiter: int,
            generator: torch.Generator) -> EigenEstimate:
    from deqloop.extras import require

    require("scipy", "eig_method='arpack'")
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    B, n = jac.batch, jac.dim
    if n < 3:
        raise ValueError(f"ARPACK needs a state dimension of at least 3, got {n}; use method='krylov'")
    k_eff = min(k, n - 2)
    ncv_eff = min(max(ncv, 2 * k_eff + 1), n)
    vals = np.full((B, k), np.nan + 1j * np.nan, dtype=np.complex128)
    conv = np.zeros(B, dtype=bool)
    res = np.full(B, np.inf)
    matvecs = np.zeros(B, dtype=np.int64)
    vectors = torch.zeros(B, n, k, dtype=jac.dtype, device=jac.device)
    methods = ["arpack"] * B
    v0s = (warm_start(start, generator) if start.dim() == 3 else start).double().cpu().numpy()
    for b in range(B):
        sub = jac.select(torch.tensor([b]))
        count = [0]

        def matvec(v: np.ndarray, sub=sub, count=count) -> np.ndarray:
            count[0] += 1
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(1, n))
            return sub.jvp(t.to(dtype=jac.dtype, device=jac.device))[0].double().cpu().numpy()

        op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        try:
            w, Y = eigs(op, k=k_eff, which="LM", ncv=ncv_eff, tol=tol, maxiter=maxiter, v0=v0s[b])
            ok = True
        except ArpackNoConvergence as err:
            w, Y, ok = err.eigenvalues, err.eigenvectors, False
        if len(w):
            order = np.argsort(-np.abs(w), kind="stable")
            w, Y = w[order], Y[:, order]
            y = Y[:, 0] / np.linalg.norm(Y[:, 0])
            Jy = matvec(y.real) + 1j * matvec(y.imag)
            lead = max(abs(w[0]), np.finfo(float).tiny)
            vals[b, : len(w)] = w[:k]
            res[b] = np.linalg.norm(Jy - w[0] * y) / lead
            vectors[b] = torch.from_numpy(real_basis(Y, k)).to(vectors)
        conv[b] = ok and len(w) > 0
        matvecs[b] = count[0]
    failed = np.flatnonzero(~conv)
    if len(failed):
        idx = torch.as_tensor(failed)
        fb = krylov_schur(jac.select(idx).operator("J"), start[idx.to(start.device)], nev=k, ncv=max(ncv, k + 1, 20),
                          tol=tol, maxiter=max(maxiter, 100), generator=generator)
        vals[failed] = fb.eigenvalues.numpy()
        conv[failed] = fb.converged.numpy()
        res[failed] = fb.residual.numpy()
        matvecs[failed] += fb.matvecs.numpy()
        vectors[idx.to(vectors.device)] = fb.vectors
        for b in failed:
            methods[b] = "arpack→krylov"
    return EigenEstimate(
        eigenvalues=torch.from_numpy(vals),
        converged=torch.from_numpy(conv),
        residual=torch.from_numpy(res),
        matvecs=torch.from_numpy(matvecs),
        method=methods,
        vectors=vectors,
    )
