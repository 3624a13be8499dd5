"""The spectral radius ρ(∂f/∂z) of any map at a state, per sample.

:func:`spectral_radius` gives the leading eigenvalues of each sample's Jacobian by Krylov–Schur
(the ``analysis`` extra) or ARPACK, through :func:`deqloop.analysis.jacobian.leading_eigenvalues`:
the estimator ``deqloop analyze`` reports and the training-time stability monitor takes every few
steps. Pass the previous result's ``.vectors`` as ``start`` to warm-start the next estimate at a
nearby point (it then needs fewer products):

    est = spectral_radius(f, z_star)
    est.radius, est.converged, est.residual, est.matvecs
    est = spectral_radius(f_after_an_update, z_star_after, start=est.vectors, tol=1e-3)

Jacobian–vector products come from two reverse-mode passes (:func:`map_jacobian`), so ``f`` must
be twice differentiable (with attention, use its math backend; no ``torch.compile``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from deqloop.analysis.jacobian import LoopJacobian, leading_eigenvalues
from deqloop.analysis.krylov import EigenEstimate
from deqloop.solvers.packing import Packing, packed_map

__all__ = ["map_jacobian", "spectral_radius"]


class _Padded:
    """``f`` on the rows ``index`` of the batch ``z``, for a map without ``select``: the other rows
    are held at ``z`` (a map that treats samples independently gives them no influence)."""

    def __init__(self, f: Callable[[Tensor], Tensor], z: Tensor, index: Tensor):
        self.f, self.z, self.index = f, z, index

    def __call__(self, v: Tensor) -> Tensor:
        return self.f(self.z.index_copy(0, self.index, v)).index_select(0, self.index)

    def select(self, index: Tensor) -> _Padded:
        return _Padded(self.f, self.z, self.index[index])


class _MapJacobian(LoopJacobian):
    """A :class:`LoopJacobian` of a map of the state alone; ``select`` keeps to ``f``'s samples."""

    def __init__(self, f: Callable[[Tensor], Tensor], z: Tensor):
        self.f = f
        super().__init__(lambda z_, _e: f(z_), z, z)

    def select(self, index: Tensor) -> _MapJacobian:
        index = torch.as_tensor(index, device=self.device)
        sub = getattr(self.f, "select", None)
        return _MapJacobian(sub(index) if callable(sub) else _Padded(self.f, self.z, index), self.z[index])


def map_jacobian(f: Callable[[Any], Any], z: Any) -> LoopJacobian:
    """Batched products with J = ∂f/∂z at ``z`` (a :class:`~deqloop.analysis.jacobian.LoopJacobian`:
    ``jvp``, ``vjp``, ``operator(kind)``, vectors flattened per sample to ``(B, n)``). ``z`` may be a
    tuple, list or dict of tensors (packed per sample)."""
    if not isinstance(z, torch.Tensor):
        packing = Packing.of("z", z)
        f, z = packed_map(f, packing), packing.pack(z, "z")
    return _MapJacobian(f, z)


def spectral_radius(f: Callable[[Any], Any], z: Any, *, method: str = "krylov", k: int = 2, ncv: int = 20,
                    tol: float = 1e-6, maxiter: int = 100, max_matvecs: int | None = None,
                    start: Tensor | None = None, seed: int = 0) -> EigenEstimate:
    """The ``k`` leading eigenvalues of each sample's ∂f/∂z at ``z``, an
    :class:`~deqloop.analysis.krylov.EigenEstimate`: ``.radius`` is ρ per sample, ``.converged``
    and ``.residual`` say how far to trust it, ``.matvecs`` what it cost, ``.vectors`` the warm
    start for the next call (``start``). ``method``: ``"krylov"`` (Krylov dimension ``ncv``,
    ``maxiter`` restarts, ``max_matvecs`` products per sample at most) or ``"arpack"``; ``tol`` is
    the leading Ritz pair's relative residual."""
    with torch.enable_grad():
        jac = map_jacobian(f, z)
    return leading_eigenvalues(jac, method=method, k=k, ncv=ncv, tol=tol, maxiter=maxiter,
                               max_matvecs=max_matvecs, start=start, seed=seed)
