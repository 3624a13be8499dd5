"""Equilibrium autograd: a fixed point that carries gradients, by a pluggable backward mode.

    z_star, sol = fixed_point(f, z0, method="anderson", backward=Implicit(rtol=1e-6, max_iter=50),
                              rtol=1e-4, max_iter=50)
    z_star, sol = fixed_point(f, z0, backward="phantom", backward_options={"steps": 5, "tau": 0.8})

``f`` may close over parameters and inputs; ``z_star`` carries gradients to all of them. The
backward modes (:class:`~deqloop.adjoint.Implicit`, ``Phantom``, ``Unrolled``, ``Truncated``,
``NoGrad``) live in :mod:`deqloop.adjoint`; a name plus ``backward_options`` is a shorthand.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from deqloop.adjoint import BACKWARD_MODES, Backward, BackwardError, BackwardWarning, as_backward
from deqloop import inputs
from deqloop.solvers import Solution
from deqloop.solvers.packing import Packing, packed_map

__all__ = ["BACKWARD_MODES", "BackwardError", "BackwardWarning", "fixed_point"]


def fixed_point(
    f: Callable[[Any], Any],
    z0: Any,
    method: str | None = None,
    backward: str | Backward = "implicit",
    *,
    rtol: float = 1e-4,
    atol: float = 0.0,
    max_iter: int = 50,
    backward_options: dict[str, Any] | None = None,
    throw: bool = False,
    check_every: int | None = None,
    trace: bool = False,
    **options: Any,
) -> tuple[Any, Solution]:
    """Solve f(z) = z from ``z0`` and return ``(z_star, solution)`` with ``z_star`` differentiable.

    ``z0`` is a batch-first tensor or a tuple, list or dict of them (a multi-branch state, solved
    as one ``(B, N)`` tensor per sample, see :mod:`deqloop.solvers.packing`); ``z_star`` and
    ``solution.z`` then have its structure, and every backward mode differentiates through the
    whole state.

    Forward arguments are those of :func:`deqloop.solve` (``method`` defaults to ``"anderson"``;
    the unrolled mode always iterates plainly). ``backward`` is a :class:`~deqloop.adjoint.Backward`
    or a name with ``backward_options``. Under ``torch.no_grad()`` every mode returns the
    detached fixed point without building a graph.

    Bad input raises :class:`~deqloop.errors.InputError` naming the argument, as for
    :func:`deqloop.solve` (``f`` not callable or returning another shape or dtype than ``z0``;
    ``z0`` not a floating-point ``(B, ...)`` tensor with ``B ≥ 1`` and finite entries).
    """
    adjoint = as_backward(backward, backward_options)
    if not isinstance(z0, torch.Tensor):
        inputs.callable_map("f", f)
        packing = Packing.of("z0", z0)
        z, sol = adjoint.solve(packed_map(f, packing), packing.pack(z0, "z0"), method=method, options=options,
                               rtol=rtol, atol=atol, max_iter=max_iter, throw=throw, check_every=check_every,
                               trace=trace)
        sol.z = packing.unpack(sol.z)
        return packing.unpack(z), sol
    return adjoint.solve(f, z0, method=method, options=options, rtol=rtol, atol=atol, max_iter=max_iter,
                         throw=throw, check_every=check_every, trace=trace)
