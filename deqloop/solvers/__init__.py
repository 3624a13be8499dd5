"""Fixed-point solvers: one entry point, one result type, a registry.

    sol = solve(f, z0, method="anderson", rtol=1e-4, atol=0.0, max_iter=50)

Built-in methods: ``"picard"`` (damped naive iteration), ``"anderson"``, ``"broyden"``
(limited memory), and ``"torchdeq:<name>"`` adapters for torchdeq's solvers.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from deqloop import inputs
from deqloop.errors import ConfigError
from deqloop.solvers.anderson import Anderson
from deqloop.solvers.base import BatchedMap, KeptRows, Solver, SubsettableMap
from deqloop.solvers.broyden import Broyden
from deqloop.solvers.loop_options import LoopOptions
from deqloop.solvers.picard import Picard
from deqloop.solvers.registry import DEFAULT_SOLVER, SolveFn, available_solvers, get_solver, register_solver
from deqloop.solvers.solution import (
    BackwardStats,
    Solution,
    SolverError,
    SolverStatus,
    relative_residual,
    residual_norms,
)
from deqloop.solvers.torchdeq_adapter import TORCHDEQ_METHODS, make_torchdeq_solver

__all__ = [
    "DEFAULT_SOLVER",
    "Anderson",
    "BackwardStats",
    "BatchedMap",
    "Broyden",
    "KeptRows",
    "LoopOptions",
    "Picard",
    "Solution",
    "Solver",
    "SolverError",
    "SolverStatus",
    "SubsettableMap",
    "available_solvers",
    "register_solver",
    "relative_residual",
    "residual_norms",
    "solve",
]

def solve(
    f: Callable[[Any], Any],
    z0: Any,
    method: str = DEFAULT_SOLVER,
    *,
    rtol: float = 1e-4,
    atol: float = 0.0,
    max_iter: int = 50,
    throw: bool = False,
    check_every: int | None = None,
    divergence: float = 1e4,
    trace: bool = False,
    keep: str = "best",
    return_image: bool = False,
    check_input: bool = True,
    **options: Any,
) -> Solution:
    """Find z with f(z) = z for every sample of the batch ``z0`` (shape ``(B, ...)``).

    ``z0`` may also be a tuple, list or dict (nested) of tensors sharing the batch dimension, e.g.
    the branches of a multi-resolution model; ``f`` then takes and returns that structure, and
    every per-sample quantity (norms, convergence, the solvers' memory) is over all of a sample's
    leaves together (see :mod:`deqloop.solvers.packing`). ``Solution.z`` has ``z0``'s structure.

    Args:
        f: map from ``(B, ...)`` to the same shape. It may close over parameters; the solve runs
            without autograd (use :func:`deqloop.fixed_point` for gradients). If ``f`` has a
            ``select(index)`` method (see :class:`BatchedMap`), converged samples stop being
            evaluated.
        z0: initial state, batch-first. Any float dtype; norms and least squares run in float32
            (float64 for float64 states).
        method: a name from :func:`available_solvers`.
        rtol: relative tolerance: sample ``i`` converges when
            ``‖f(z_i) − z_i‖ ≤ atol + rtol·‖f(z_i)‖`` (2-norm over all of the sample's entries).
            It is then frozen: its answer is what solving it alone would give.
        atol: absolute tolerance (see ``rtol``).
        max_iter: most evaluations of ``f`` per sample.
        throw: raise :class:`SolverError` (naming the failed samples and why) if any sample
            did not converge, instead of returning it with its status.
        check_every: convergence is decided on the device every iteration with masks; the host
            looks at them (one synchronisation) every ``check_every`` iterations to stop early and
            drop frozen samples. Default: 1 on CPU, 8 on accelerators.
        divergence: a sample whose residual exceeds ``divergence`` times its smallest residual
            is frozen at its best iterate with status ``DIVERGED``.
        trace: record the ``(T, B)`` relative residual per iteration in ``Solution.trace``.
        keep: ``"best"`` returns each sample's iterate of smallest residual, ``"last"`` its last
            finite iterate.
        return_image: return f(z) of the kept iterate instead of z (one step further for free;
            residuals stay those of z). ``keep`` and ``return_image`` need a :class:`Solver`
            method (not a registered function such as the torchdeq adapters).
        check_input: ``False`` skips the entry checks of ``z0``'s values (no host
            synchronisation): for the library's own solves of states it computed, e.g. the
            implicit backward solve, whose non-finite cotangent must end as a ``NONFINITE``
            status, not an error (:func:`solve_unchecked`).
        **options: method options (``damping`` for picard; ``m``, ``ridge``, ``beta`` for
            anderson; ``m`` for broyden). Unknown options are an error.

    Bad input raises :class:`~deqloop.errors.InputError` naming the argument: ``f`` not callable,
    ``z0`` not a floating-point tensor, without a sample, or with NaN/Inf entries (checked once
    here: one host synchronisation), ``f`` returning another shape or dtype than its input.
    A map that produces NaN/Inf during the solve is not an error: those samples end with status
    ``NONFINITE``.
    """
    return LoopOptions(method=method, options=options, rtol=rtol, atol=atol, max_iter=max_iter, throw=throw,
                       check_every=check_every, divergence=divergence, trace=trace, keep=keep,
                       return_image=return_image, check_input=check_input)(f, z0)


solve_unchecked = functools.partial(solve, check_input=False)


register_solver("picard", Picard)
register_solver("anderson", Anderson)
register_solver("broyden", Broyden)
for _name in TORCHDEQ_METHODS:
    register_solver(f"torchdeq:{_name}", make_torchdeq_solver(_name))
