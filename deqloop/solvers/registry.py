"""The solvers by name: ``register_solver``, ``available_solvers``, ``get_solver``.

A name maps to a :class:`~deqloop.solvers.base.Solver` subclass (driven by the shared loop) or to a
function ``fn(f, z0, *, rtol, atol, max_iter, **options) -> Solution`` (e.g. the torchdeq adapters).
"""

from __future__ import annotations

from typing import Any, Callable

from deqloop.errors import ConfigError
from deqloop.solvers.base import Solver
from deqloop.solvers.solution import Solution

__all__ = ["DEFAULT_SOLVER", "SolveFn", "available_solvers", "get_solver", "register_solver"]

DEFAULT_SOLVER = "anderson"
"""The forward solver wherever none is named: the model's settings, :func:`deqloop.solve`,
:func:`deqloop.fixed_point`, evaluation and analysis (one default, declared here)."""

SolveFn = Callable[..., Solution]
_REGISTRY: dict[str, type[Solver] | SolveFn] = {}


def register_solver(name: str, solver: type[Solver] | SolveFn, *, overwrite: bool = False) -> None:
    """Register a solver under ``name``.

    ``solver`` is either a :class:`Solver` subclass (the shared loop drives it, so it gets
    per-sample convergence, freezing and result codes for free), or a function
    ``fn(f, z0, *, rtol, atol, max_iter, **options) -> Solution``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"solver {name!r} is already registered (pass overwrite=True to replace it)")
    if not (isinstance(solver, type) and issubclass(solver, Solver)) and not callable(solver):
        raise TypeError(f"solver must be a Solver subclass or a callable, got {solver!r}")
    _REGISTRY[name] = solver


def available_solvers() -> list[str]:
    """Names accepted by ``solve(method=...)``."""
    return sorted(_REGISTRY)


def get_solver(method: str, **options: Any) -> Solver | SolveFn:
    """The solver ``method`` built from ``options`` (a :class:`Solver` instance; a registered function
    as it is, its options then go to each call). Unknown names and options are errors."""
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ConfigError(f"unknown solver method {method!r}; known: {', '.join(available_solvers())}")
    entry = _REGISTRY[method]
    if isinstance(entry, type):
        return entry.from_options(method, options)
    return entry
