"""The forward solve as one value: which solver with which options, the stopping rule, what to return.

    loop = LoopOptions(method="anderson", options={"m": 5}, rtol=1e-4, max_iter=50)
    sol = loop(f, z0)                          # a Solution
    longer = loop.with_(max_iter=500)          # a copy; only max_iter is checked again

Every setting is checked once, when the value is built, and the solver object is built then too;
:meth:`LoopOptions.with_` checks only the fields it changes. So a model that solves every training
step with its configured loop validates nothing per call. The backward modes receive the loop
(:meth:`deqloop.adjoint.Backward.solve`) and adapt it to what they need (the unrolled mode runs it
as a differentiable Picard loop) rather than looking a solver up by name again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from deqloop import inputs
from deqloop.errors import ConfigError
from deqloop.solvers.base import Solver
from deqloop.solvers.loop import COMPACT_AT, run_solver
from deqloop.solvers.packing import Packing, packed_map
from deqloop.solvers.registry import DEFAULT_SOLVER, SolveFn, get_solver
from deqloop.solvers.solution import Solution
from deqloop.validate import changed_copy, choice, integer, number

__all__ = ["KEEP", "LoopOptions"]

KEEP = ("best", "last")


def _flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
        return value
    return check


def _check_every(value: Any) -> int | None:
    return None if value is None else integer("check_every", value)


def _divergence(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1.0:
        raise ConfigError(f"divergence must be a factor > 1, got {value!r}")
    return float(value)


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"solver options must be a dict, got {type(value).__name__}")
    return dict(value)


# One check per field: it returns the normalised value or raises ConfigError naming the field.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "method": lambda v: v,  # checked by the registry when the solver is built
    "options": _options,
    "rtol": lambda v: number("rtol", v, low=0),
    "atol": lambda v: number("atol", v, low=0),
    "max_iter": lambda v: integer("max_iter", v),
    "throw": _flag("throw"),
    "check_every": _check_every,
    "divergence": _divergence,
    "trace": _flag("trace"),
    "keep": lambda v: choice("keep", v, KEEP),
    "return_image": _flag("return_image"),
    "check_input": _flag("check_input"),
    "differentiable": _flag("differentiable"),
    "compact_at": lambda v: number("compact_at", v, low=0, high=1),
}
_SOLVER_FIELDS = frozenset({"method", "options", "keep", "return_image"})


@dataclass(frozen=True)
class LoopOptions:
    """How :func:`deqloop.solve` runs: the arguments of that function, as one validated value.

    method: a registered solver name (:func:`deqloop.solvers.available_solvers`); options: its
        keyword options (``m`` for anderson, ``damping`` for picard, ...), built into
        :attr:`solver` at construction, so an unknown option is an error here.
    rtol, atol, max_iter: the stopping rule ``‖f(z) − z‖ ≤ atol + rtol·‖f(z)‖`` per sample, within
        ``max_iter`` evaluations. throw: raise when a sample did not converge.
    check_every, divergence, trace, keep, return_image, compact_at: as in :func:`deqloop.solve`
        (:mod:`deqloop.solvers.loop`).
    check_input: check that ``z0`` is finite on entry (one host synchronisation); ``False`` for
        states the caller computed itself.
    differentiable: record autograd history through every iteration (backpropagation through
        the loop; the unrolled backward mode sets it). Only for a method whose steps autograd can
        record (``Solver.records_history``: picard; not anderson or broyden, nor a solver function).
    """

    method: str = DEFAULT_SOLVER
    options: Mapping[str, Any] = field(default_factory=dict)
    rtol: float = 1e-4
    atol: float = 0.0
    max_iter: int = 50
    throw: bool = False
    check_every: int | None = None
    divergence: float = 1e4
    trace: bool = False
    keep: str = "best"
    return_image: bool = False
    check_input: bool = True
    differentiable: bool = False
    compact_at: float = COMPACT_AT
    solver: Solver | SolveFn = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check(_CHECKS)

    def _check(self, names: Any) -> None:
        for name in names:
            object.__setattr__(self, name, _CHECKS[name](getattr(self, name)))
        if {"method", "options"}.intersection(names):
            object.__setattr__(self, "solver", get_solver(self.method, **self.options))
        if _SOLVER_FIELDS.intersection(names):
            if not isinstance(self.solver, Solver) and (self.keep != "best" or self.return_image):
                raise ConfigError(f"keep= and return_image= need a Solver-class method; {self.method!r} is a function")
        if self.differentiable and (_SOLVER_FIELDS | {"differentiable"}).intersection(names):
            if not isinstance(self.solver, Solver) or not self.solver.records_history:
                why = "is a function" if not isinstance(self.solver, Solver) else "writes its steps into its own memory"
                raise ConfigError(f"differentiable=True backpropagates through the iterations, which method "
                                  f"{self.method!r} cannot record: it {why}; use method='picard'")

    def with_(self, **changes: Any) -> LoopOptions:
        """A copy with ``changes``; only the changed fields are checked (the solver is rebuilt
        only when its method or options change)."""
        unknown = sorted(set(changes) - set(_CHECKS))
        if unknown:
            raise ConfigError(f"LoopOptions has no field(s) {unknown}; fields: {', '.join(_CHECKS)}")
        new, changed = changed_copy(self, changes)
        if changed:
            new._check(changed)
        return new

    def __call__(self, f: Callable[[Any], Any], z0: Any) -> Solution:
        """Solve ``f(z) = z`` from ``z0`` (a batch-first tensor, or a tuple, list or dict of them)."""
        inputs.callable_map("f", f)
        packing = None
        if not isinstance(z0, torch.Tensor):  # a tree of tensors: solved as one (B, N) tensor
            packing = Packing.of("z0", z0)
            f, z0 = packed_map(f, packing), packing.pack(z0, "z0")
        if self.check_input:
            inputs.finite("z0", inputs.state("z0", z0))
        sol = self._run(f, z0)
        if packing is not None:
            sol.z = packing.unpack(sol.z)
        if self.throw:
            sol.raise_on_failure()
        return sol

    def _run(self, f: Callable[[Any], Any], z0: torch.Tensor) -> Solution:
        if isinstance(self.solver, Solver):
            return run_solver(f, z0, self.solver, self)
        sol = self.solver(f, z0, rtol=self.rtol, atol=self.atol, max_iter=self.max_iter, trace=self.trace,
                          **self.options)
        if not isinstance(sol, Solution):
            raise TypeError(f"solver {self.method!r} returned {type(sol).__name__}, expected Solution")
        return sol
